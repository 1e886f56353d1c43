"""Model export: ONNX (fp32 / fp16 / int8) of any model family (its graphs come from the family object).

See :mod:`anyphone.export.onnx`; the torch-free runtime is :mod:`anyphone.inference.onnx_runtime`.
Names are imported lazily so ``import anyphone.export`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["convert_to_fp16", "export_ctc_model", "export_model", "export_transducer_model", "quantize_int8"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from anyphone.export import onnx

        return getattr(onnx, name)
    raise AttributeError(f"module 'anyphone.export' has no attribute {name!r}")
