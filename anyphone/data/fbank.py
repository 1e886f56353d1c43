"""80-dim log-mel filterbank features that match ZIPA's front end.

ZIPA computes features with lhotse's ``Fbank()`` defaults (see
``/work/shared/reference/zipa/README.md``): 25 ms Povey window, 10 ms shift, 512-point FFT,
DC removal, pre-emphasis 0.97, no dither, ``snip_edges=False`` (``round(num_samples / 160)``
frames), 80 mel bins over 20..7600 Hz, log floored at float32 eps. lhotse implements that as
the pure-torch module ``Wav2LogFilterBank``; we wrap it so that

* :func:`compute_fbank` reproduces ``Fbank().extract_batch(list_of_waves)`` followed by
  ``pad_sequence`` (the batched path of ZIPA inference: waves are zero-padded *before* the
  transform, which changes the last two frames of shorter items), and
* :class:`FbankModule` does the same on an already padded ``(N, S)`` audio batch on any device
  (``--fbank-on-device``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from lhotse.features.kaldi.layers import Wav2LogFilterBank

from anyphone.data.fbank_options import (
    FRAME_SHIFT_SAMPLES,
    NUM_MEL_BINS,
    SAMPLE_RATE,
    ZIPA_FBANK_OPTIONS,
    num_frames,
)

__all__ = ["FRAME_SHIFT_SAMPLES", "NUM_MEL_BINS", "SAMPLE_RATE", "ZIPA_FBANK_OPTIONS", "FbankModule", "compute_fbank",
           "num_frames", "pad_waves"]


class FbankModule(torch.nn.Module):
    """ZIPA fbank as a torch module: ``(audio (N, S), audio_lens (N,)) -> (feats (N, T, 80), lens (N,))``.

    ``audio`` is float in [-1, 1] (not scaled by 32768), zero-padded at the end. Frames past
    each item's length are set to 0.0 (ZIPA pads with ``pad_sequence``, not log-eps). The module
    has no trainable parameters; move it with ``.to(device)`` to run on GPU.
    """

    def __init__(self) -> None:
        super().__init__()
        self.extractor = Wav2LogFilterBank(**ZIPA_FBANK_OPTIONS)
        # The wrapped module stores its constants as frozen Parameters; keep them out of
        # optimizers and checkpoints by never registering this module inside a model.
        self.extractor.eval()

    @torch.no_grad()
    def forward(
        self, audio: torch.Tensor, audio_lens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """audio: (N, S) float; audio_lens: (N,) int64 (default: all S). Returns (N, T, 80), (N,)."""
        if audio.dim() != 2:
            raise ValueError(f"FbankModule expects audio of shape (N, S), got {tuple(audio.shape)}")
        n, s = audio.shape
        if audio_lens is None:
            audio_lens = torch.full((n,), s, dtype=torch.int64, device=audio.device)
        audio_lens = audio_lens.to(device=audio.device, dtype=torch.int64)
        feat_lens = num_frames(audio_lens)
        if s == 0:
            return audio.new_zeros(n, 0, NUM_MEL_BINS), feat_lens
        feats = self.extractor(audio.float())
        t_max = int(feat_lens.max().item()) if n > 0 else 0
        feats = feats[:, :t_max]
        mask = torch.arange(feats.size(1), device=feats.device)[None, :] < feat_lens[:, None]
        feats = feats.masked_fill(~mask[:, :, None], 0.0)
        return feats, feat_lens


_CPU_MODULE: FbankModule | None = None


def _cpu_module() -> FbankModule:
    # One module per process (dataloader workers each build their own after fork/spawn).
    global _CPU_MODULE
    if _CPU_MODULE is None:
        _CPU_MODULE = FbankModule()
    return _CPU_MODULE


def pad_waves(
    waves: Sequence[torch.Tensor | np.ndarray],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad 1-D waves into ``(N, S_max)`` float32 plus lengths ``(N,)`` int64."""
    tensors = []
    for i, w in enumerate(waves):
        t = torch.as_tensor(np.asarray(w) if not isinstance(w, torch.Tensor) else w)
        t = t.squeeze()
        if t.dim() != 1:
            raise ValueError(f"wave {i}: expected a mono 1-D wave, got shape {tuple(t.shape)}")
        tensors.append(t.to(torch.float32))
    lens = torch.tensor([t.numel() for t in tensors], dtype=torch.int64)
    if not tensors:
        return torch.zeros(0, 0), lens
    padded = torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True)
    return padded, lens


def compute_fbank(
    waves: Sequence[torch.Tensor | np.ndarray],
    sample_rate: int = SAMPLE_RATE,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """ZIPA batch fbank of mono 16 kHz waves.

    Args:
      waves: N 1-D float waves in [-1, 1] (tensors or numpy arrays), any lengths.
      sample_rate: must be 16000 (resample beforehand).
      device: where to compute; the result is returned on that device.
    Returns:
      feats (N, T_max, 80) float32, zero-padded; feat_lens (N,) int64 with
      ``feat_lens[i] = (len(waves[i]) + 80) // 160``.
    """
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"compute_fbank: sample_rate={sample_rate}, expected {SAMPLE_RATE} (resample first)")
    audio, lens = pad_waves(waves)
    if str(device) == "cpu":
        module = _cpu_module()
    else:
        module = FbankModule().to(device)
    return module(audio.to(device), lens.to(device))
