"""ONNX file tooling: trace a module into an ONNX file, add metadata, make the fp16 / int8 variants.

Every function here writes its file under a temporary name in the target folder and renames it into place
once complete (metadata included), so an interrupted write leaves the previous file as it was.
:mod:`anyphone.export.onnx` decides which graphs to write and with which metadata.

Precisions:
  * fp32: the exported graph.
  * fp16 (``.fp16.onnx``): weights and internal arithmetic in float16, graph inputs/outputs kept float32
    (Cast nodes at the boundary) so callers feed and read float32 as for fp32; BiasNorm's Pow/ReduceMean
    stay float32 (a squared activation above 256 would overflow float16).  Done with onnx's own tooling,
    no onnxconverter-common: see :func:`convert_to_fp16`.  onnxruntime 1.2x on CPU crashes (SIGSEGV)
    building its NCHWc layout pass for these fp16 graphs: create sessions with
    ``disabled_optimizers=["NchwcTransformer"]`` (``anyphone.inference.onnx_runtime.make_session`` does
    for files named ``*fp16*``).
  * int8 (``.int8.onnx``): onnxruntime dynamic quantisation of MatMul/Gemm weights (QInt8, per output
    channel), activations quantised on the fly.  Convolutions stay float32.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from anyphone.fileio import atomic_path

__all__ = ["FP16_KEEP_FP32_OPS", "add_meta_data", "convert_to_fp16", "quantize_int8"]

# op types the fp16 models still compute in float32 (see convert_to_fp16)
FP16_KEEP_FP32_OPS = ("Pow", "ReduceMean")


def add_meta_data(path: str | Path, meta: dict[str, Any]) -> None:
    """Store ``meta`` (values stringified) as ONNX metadata_props of the model at ``path``, in place (atomically:
    a reader sees the model before or after, never half of it)."""
    import onnx

    m = onnx.load(str(path))
    # per-node provenance written by the exporter (stack traces, module paths) can double the file size
    for node in m.graph.node:
        del node.metadata_props[:]
    existing = {p.key: p for p in m.metadata_props}
    for k, v in meta.items():
        p = existing.get(k) or m.metadata_props.add()
        p.key = k
        p.value = v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    with atomic_path(path) as tmp:
        onnx.save(m, str(tmp))


def _torch_export(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: dict[str, dict[int, Any]],
    opset: int,
    translations: dict[Any, Any] | None = None,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    # backed_size_oblivious: do not specialise symbolic sizes on 0/1 checks (broadcasting, padding
    # of the last downsampling block), which otherwise makes torch.export reject a free T or N.
    # Capturing the program ourselves (rather than letting torch.onnx.export retry with "suggested
    # fixes", which silently constrains T) keeps the graph general and halves export time.
    with (
        torch.no_grad(),
        warnings.catch_warnings(),
        torch.fx.experimental._config.patch(backed_size_oblivious=True),
    ):
        warnings.simplefilter("ignore")
        ep = torch.export.export(
            module,
            args,
            dynamic_shapes=dynamic_shapes,
            strict=False,
            prefer_deferred_runtime_asserts_over_guards=True,
        )
        prog = torch.onnx.export(
            ep,
            args,
            dynamo=True,
            input_names=input_names,
            output_names=output_names,
            opset_version=opset,
            optimize=True,
            verbose=False,
            **({"custom_translation_table": translations} if translations else {}),
        )
    # one self-contained file (the tiny..large models are all < 2 GB), renamed into place once whole
    with atomic_path(path) as tmp:
        prog.save(str(tmp), external_data=False)


def convert_to_fp16(
    src: str | Path,
    dst: str | Path,
    keep_io_types: bool = True,
    keep_fp32_ops: tuple[str, ...] = (),
) -> None:
    """Convert an fp32 ONNX model to fp16 with onnx's own tools (no onnxconverter-common).

    Float32 initializers and tensor constants become float16 (clipped to +-65504), Cast-to-float32
    nodes cast to float16, ConstantOfShape without a value gets a float16 zero.  With
    ``keep_io_types`` the float32 graph inputs/outputs stay float32 behind boundary Cast nodes, so a
    caller feeds and reads float32 exactly as with the fp32 model.  Nodes whose op type is in
    ``keep_fp32_ops`` keep running in float32 (their float inputs are cast up, outputs cast down, and
    initializers used only by them stay float32).
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    # element types of every value in the fp32 graph, to know which edges need casts
    inferred = onnx.shape_inference.infer_shapes(m)
    elem: dict[str, int] = {}
    for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        elem[vi.name] = vi.type.tensor_type.elem_type
    for t in g.initializer:
        elem[t.name] = t.data_type

    def conv_tensor(t: onnx.TensorProto) -> onnx.TensorProto:
        arr = numpy_helper.to_array(t).astype(np.float32)
        return numpy_helper.from_array(np.clip(arr, -65504.0, 65504.0).astype(np.float16), t.name)

    blocked = [n for n in g.node if n.op_type in keep_fp32_ops]
    fp32_only_inits: set[str] = set()
    if blocked:
        users: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                users.setdefault(i, []).append(n)
        fp32_only_inits = {t.name for t in g.initializer
                           if all(u.op_type in keep_fp32_ops for u in users.get(t.name, []))}

    for i, t in enumerate(g.initializer):
        if t.data_type == f32 and t.name not in fp32_only_inits:
            g.initializer[i].CopyFrom(conv_tensor(t))
    for node in g.node:
        if node.op_type in ("Loop", "If", "Scan"):
            raise ValueError(f"convert_to_fp16: {src} has a {node.op_type} subgraph, which is not supported")
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == f32:
                a.t.CopyFrom(conv_tensor(a.t))
            if node.op_type == "Cast" and a.name == "to" and a.i == f32:
                a.i = f16
        if node.op_type == "ConstantOfShape" and not any(a.name == "value" for a in node.attribute):
            # the default value is a float32 zero
            node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float16))))

    # blocked nodes: cast float inputs up to float32 and their float outputs back down to float16
    out_nodes: list[onnx.NodeProto] = []
    for node in g.node:
        if node.op_type not in keep_fp32_ops:
            out_nodes.append(node)
            continue
        for k, name in enumerate(node.input):
            if name and elem.get(name) == f32 and name not in fp32_only_inits:
                up = f"{name}__{node.name}_f32"
                out_nodes.append(helper.make_node("Cast", [name], [up], to=f32, name=up + "_cast"))
                node.input[k] = up
        out_nodes.append(node)
        for k, name in enumerate(node.output):
            if name and elem.get(name) == f32:
                inner = f"{name}__f32"
                node.output[k] = inner
                out_nodes.append(helper.make_node("Cast", [inner], [name], to=f16, name=name + "_cast16"))

    float_inputs = [i for i in g.input if i.type.tensor_type.elem_type == f32]
    float_outputs = [o for o in g.output if o.type.tensor_type.elem_type == f32]
    head: list[onnx.NodeProto] = []
    if keep_io_types:
        for inp in float_inputs:
            inner = inp.name + "__f16"
            for node in out_nodes:
                for k, name in enumerate(node.input):
                    if name == inp.name:
                        node.input[k] = inner
            head.append(helper.make_node("Cast", [inp.name], [inner], to=f16, name=inner + "_cast"))
        for out in float_outputs:
            inner = out.name + "__f16"
            for node in out_nodes:
                for k, name in enumerate(node.output):
                    if name == out.name:
                        node.output[k] = inner
                for k, name in enumerate(node.input):
                    if name == out.name:
                        node.input[k] = inner
            out_nodes.append(helper.make_node("Cast", [inner], [out.name], to=f32, name=out.name + "_cast32"))
    else:
        for v in (*float_inputs, *float_outputs):
            v.type.tensor_type.elem_type = f16
    del g.node[:]
    g.node.extend(head + out_nodes)
    # value_info carries stale float32 types; onnxruntime re-infers them
    del g.value_info[:]
    onnx.checker.check_model(m)
    with atomic_path(dst) as tmp:
        onnx.save(m, str(tmp))


def quantize_int8(src: str | Path, dst: str | Path, weight_type: str = "QInt8", per_channel: bool = True) -> None:
    """Dynamic int8 quantisation of MatMul/Gemm weights with onnxruntime.

    Per-channel weight scales cost nothing in speed here and keep the tiny fixture's greedy output
    closer to fp32 (token agreement 0.81 vs 0.70 per-tensor)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    qt = {"QInt8": QuantType.QInt8, "QUInt8": QuantType.QUInt8}.get(weight_type)
    if qt is None:
        raise ValueError(f"quantize_int8: weight_type={weight_type!r}, expected QInt8 or QUInt8")
    # onnxruntime.quantization logs one line per tensor on the root logger; keep it quiet
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        with atomic_path(dst) as tmp:
            quantize_dynamic(
                model_input=str(src),
                model_output=str(tmp),
                op_types_to_quantize=["MatMul", "Gemm"],
                weight_type=qt,
                per_channel=per_channel,
                # 7-bit weights: x86 CPUs without VNNI multiply u8 x s8 pairs into int16 with saturation,
                # which at full 8-bit range gave errors of 1.0 in log-probability on such machines
                reduce_range=True,
            )
    finally:
        root.setLevel(level)


def _variants(path: Path, fp16: bool, int8: bool, keep_fp32_ops: tuple[str, ...] = ()) -> list[Path]:
    """Write the requested fp16 / int8 siblings of the fp32 model at ``path`` (which already carries its
    metadata); returns all paths. Each file appears under its name only once complete, metadata included."""
    out = [path]
    if fp16:
        p16 = path.with_name(path.stem + ".fp16.onnx")
        with atomic_path(p16) as tmp:
            # BiasNorm's mean((x - b)^2) overflows float16 once |x| > 256; keep that reduction in float32
            convert_to_fp16(path, tmp, keep_fp32_ops=FP16_KEEP_FP32_OPS + tuple(keep_fp32_ops))
            add_meta_data(tmp, {"precision": "fp16"})
        out.append(p16)
    if int8:
        p8 = path.with_name(path.stem + ".int8.onnx")
        with atomic_path(p8) as tmp:
            quantize_int8(path, tmp)
            add_meta_data(tmp, {"precision": "int8"})
        out.append(p8)
    return out


def _export_whole(path: Path, export: Any, meta: dict[str, Any]) -> None:
    """Run ``export(tmp)`` into a temporary file beside ``path``, add ``meta`` and rename it onto ``path``: an
    interrupted export leaves the previous model (or none), never a half-written or metadata-less one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        export(tmp)
        add_meta_data(tmp, {**meta, "precision": "fp32"})
