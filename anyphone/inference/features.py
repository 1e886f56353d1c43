"""The ZIPA fbank front end of recognition: :class:`anyphone.data.fbank.FbankModule` (the one definition of
ZIPA's feature options), one module per device."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from anyphone.data.fbank import FbankModule, pad_waves

__all__ = ["fbank"]

_MODULES: dict[str, FbankModule] = {}


def fbank(waves: Sequence[np.ndarray], device: torch.device) -> tuple[Tensor, Tensor]:
    """ZIPA batch fbank: waves zero-padded first, (N, T, 80) float32 with frames past each length set to 0,
    lengths (N,) = (samples + 80) // 160, both on ``device`` (as :func:`anyphone.data.fbank.compute_fbank`)."""
    key = str(device)
    if key not in _MODULES:
        _MODULES[key] = FbankModule().to(device)
    audio, lens = pad_waves(waves)
    return _MODULES[key](audio.to(device), lens.to(device))
