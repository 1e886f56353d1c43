"""Loading a state_dict without running pickled code (a model's family is told by :mod:`anyphone.families`).

Importing this module does not import torch (``load_state_dict`` imports it when called), so the hub and the
command line can name its errors cheaply.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

__all__ = ["UnsafeCheckpointError", "load_state_dict"]

class UnsafeCheckpointError(ValueError):
    """The checkpoint holds pickled objects other than tensors/containers (it could run code when loaded)."""


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint's state_dict without running pickled code.

    Uses ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers. Accepts a plain
    state_dict (ZIPA's averaged ``*.pth``) or an icefall-style ``{'model': state_dict, ...}``; a DDP
    ``module.`` prefix is stripped. Tensors are loaded on CPU.

    Raises:
        UnsafeCheckpointError: the file holds other pickled objects (one line, names the file).
        FileNotFoundError / ValueError: missing file, or not a dict of tensors.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: checkpoint file not found")
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it was not written with; the refusal below says enough.
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is multi-line; keep the offending global only.
        detail = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln),
                      "contains non-tensor pickled objects")
        raise UnsafeCheckpointError(
            f"{p}: refused to load, the checkpoint would run code or build arbitrary objects when unpickled "
            f"({detail}); only plain state_dicts of tensors are loaded") from None
    except (RuntimeError, EOFError, IndexError, KeyError, ValueError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{p}: not a readable PyTorch checkpoint ({first})") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
        raise ValueError(f"{p}: expected a state_dict (dict of name -> tensor) or {{'model': state_dict}}, "
                         f"got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{p}: state_dict entries are not tensors: {bad[:5]}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj
