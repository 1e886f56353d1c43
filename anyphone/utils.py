"""Small helpers shared by every layer (no torch import)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

_TRUE = ("1", "true", "t", "yes", "y", "on")
_FALSE = ("0", "false", "f", "no", "n", "off")


def str2bool(v: str | bool) -> bool:
    """argparse type for icefall-style booleans: --use-fp16 1, --use-fp16 True, --shuffle no ..."""
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false, 1/0, yes/no), got {v!r}")


def state_dict_mismatch(want: Mapping[str, Any], have: Mapping[str, Any]) -> str | None:
    """None if the two state_dicts have the same keys and tensor shapes, else the first difference in words."""
    if set(want) != set(have):
        diff = sorted(set(want) ^ set(have))
        return f"{len(diff)} keys differ, e.g. {diff[0]}"
    for k, v in want.items():
        if tuple(have[k].shape) != tuple(v.shape):
            return f"{k} has shape {tuple(have[k].shape)}, expected {tuple(v.shape)}"
    return None
