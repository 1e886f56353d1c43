"""Loading a state_dict without running pickled code, and telling a model's family from its keys.

Importing this module does not import torch (``load_state_dict`` imports it when called), so the hub and the
command line can name its errors cheaply.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["FAMILIES", "UnsafeCheckpointError", "infer_family_size", "load_state_dict", "model_family"]

# The model families a state_dict can hold: CR-CTC (a CTC head on the encoder) and the pruned transducer.
FAMILIES = ("crctc", "transducer")


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


def model_family(state_dict: Mapping[str, Any]) -> str | None:
    """"transducer" if the state_dict has ``decoder.*``/``joiner.*`` weights, "crctc" if it has
    ``ctc_output.*`` (and no decoder), else None. A transducer may carry a CTC head as well."""
    keys = state_dict.keys()
    if any(k.startswith(("decoder.", "joiner.")) for k in keys):
        return "transducer"
    if any(k.startswith("ctc_output.") for k in keys):
        return "crctc"
    return None


def infer_family_size(state_dict: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """Tell a ZIPA checkpoint's family (:func:`model_family`) and size from its tensors.

    size: "small" when the subsampling output dim (``encoder_embed.out.weight`` rows) is 192, "large" when 512,
    else None (a custom configuration).
    """
    w = state_dict.get("encoder_embed.out.weight")
    size = {192: "small", 512: "large"}.get(int(w.shape[0])) if w is not None else None
    return model_family(state_dict), size
