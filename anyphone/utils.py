"""Small helpers shared by every layer (no torch import)."""

from __future__ import annotations

import argparse

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
