"""Small helpers shared by every layer (no torch import)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping
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


class LazyKernels:
    """Optional GPU kernels (Triton): built on first use for a CUDA tensor, off when ``env_var`` is ``0``, and
    given up for the rest of the run, with one warning, after any build or launch failure. Callers keep a
    plain PyTorch path for every kernel.

    ``build()`` returns an object whose attributes are the kernel launchers.
    """

    def __init__(self, build: Callable[[], Any], env_var: str, owner: str) -> None:
        self._build, self._env_var, self._owner = build, env_var, owner
        self.kernels: Any = None  # None: not tried yet; False: unavailable or failed

    def available(self, x: Any) -> bool:
        if not getattr(x, "is_cuda", False) or os.environ.get(self._env_var, "1") == "0":
            return False
        if self.kernels is None:
            try:
                self.kernels = self._build()
            except (ImportError, AttributeError, RuntimeError) as e:  # the PyTorch path still works
                logging.getLogger(self._owner).info(f"{self._owner}: Triton kernels unavailable ({e}); using PyTorch")
                self.kernels = False
        return self.kernels is not False

    def call(self, name: str, *args: Any) -> tuple[bool, Any]:
        """(True, result) of one launcher, or (False, None) after a failure, which disables all of them."""
        try:
            return True, getattr(self.kernels, name)(*args)
        except Exception as e:  # noqa: BLE001 - any compiler or driver error: the PyTorch path computes the same
            logging.getLogger(self._owner).warning(
                f"{self._owner}: Triton kernel {name} failed ({e}); using PyTorch from now on")
            self.kernels = False
            return False, None


def resolve_device(device: Any, local_rank: int | None = None) -> Any:
    """A ``torch.device`` from ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda[:N]"`` or a device.
    With ``local_rank`` (one process per GPU under torchrun), ``"auto"`` picks that rank's GPU.

    Raises ValueError for CUDA on a machine without it (one line, saying what to use instead).
    """
    import torch

    if str(device) == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        if local_rank is None:
            return torch.device("cuda")
        return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available on this machine; use 'cpu' or 'auto'")
    return dev
