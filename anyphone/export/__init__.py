"""Model export: ONNX (fp32 / fp16 / int8) of any model family (its graphs come from the family object).

A module per concept: :mod:`anyphone.export.onnx` (exporting a model: which files, which metadata),
:mod:`anyphone.export.onnx_files` (ONNX file tooling: tracing into a file, metadata, fp16 / int8 variants),
:mod:`anyphone.export.traceable` (the Zipformer forwards that trace with symbolic shapes) and
:mod:`anyphone.export.recipe` (the recipes' export command line). The torch-free runtime is
:mod:`anyphone.inference.onnx_runtime`. Names are imported lazily so ``import anyphone.export`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_LAZY = {
    "convert_to_fp16": "anyphone.export.onnx_files",
    "quantize_int8": "anyphone.export.onnx_files",
    "export_ctc_model": "anyphone.export.onnx",
    "export_model": "anyphone.export.onnx",
    "export_transducer_model": "anyphone.export.onnx",
}

__all__ = ["convert_to_fp16", "export_ctc_model", "export_model", "export_transducer_model", "quantize_int8"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'anyphone.export' has no attribute {name!r}")
