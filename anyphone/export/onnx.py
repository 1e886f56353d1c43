"""ONNX export of any model family (torch.export based, dynamic batch and time).

The family (:mod:`anyphone.families`) says which graphs to write: their wrapper modules, example inputs, file
names and metadata (``ModelFamily.onnx_graphs``); this module traces them, adds the common metadata, writes
every file atomically and makes the fp16 / int8 variants. What the two Zipformer families write (``<stem>`` is
the name you pass; ``.fp16`` / ``.int8`` variants sit beside them):

CTC / CR-CTC (and every CTC family): one model ``<stem>.onnx``
    inputs   x (N, T, 80) float32 zero-padded fbank, x_lens (N,) int64
    outputs  log_probs (N, T', V) float32, log_prob_lens (N,) int64      T' = (T - 7) // 2

Transducer: three models, as icefall's ``export-onnx.py`` splits them
    encoder-<stem>.onnx  x (N, T, 80), x_lens (N,) -> encoder_out (N, T', J), encoder_out_lens (N,)
                         T' = ((T - 7) // 2 + 1) // 2.  encoder_out is ALREADY projected by
                         ``joiner.encoder_proj`` (J = joiner_dim), so the greedy loop never re-projects it.
    decoder-<stem>.onnx  y (N, context) int64 (-1 = no token) -> decoder_out (N, J), already projected
                         by ``joiner.decoder_proj``
    joiner-<stem>.onnx   encoder_out (N, J), decoder_out (N, J) -> logit (N, V)
                         (i.e. ``joiner(..., project_input=False)``)

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

Every model carries metadata (``model_type``: how its outputs are decoded, "ctc" log-probs or "transducer"
parts; ``family``: the model family; ``vocab_size``, ``frame_shift_ms``, ``subsampling_factor``,
``sample_rate``, ``feature_dim``, ``context_size``, ``blank_id``, ...) so the runtime
(``anyphone.inference.onnx_runtime``) needs no torch and no config file.

Every file (the ONNX models, ``pretrained.pt``, ``tokens.txt``) is written under a temporary name in its
folder and renamed into place once complete, metadata included: an export that is interrupted, or runs out
of disk, leaves the previous files as they were and never a half-written model.

Export notes.  A few code paths of the eager model are written for speed or for training and do not
trace with symbolic shapes (``int(x_lens.max())`` checks, a cached positional-encoding table whose
size depends on T, a Python ``if`` on the downsampling padding).  :func:`export_friendly` swaps in
equivalent forward functions on the module *instances* for the duration of the export only; the
parity tests compare the resulting ONNX graphs with the eager model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from anyphone.families import get_family
from anyphone.families.base import ModelFamily, OnnxGraph
from anyphone.families.crctc import CtcExportWrapper
from anyphone.families.transducer import DecoderExportWrapper, EncoderExportWrapper, JoinerExportWrapper
from anyphone.fileio import atomic_path, atomic_write, atomic_write_bytes
from anyphone.models.fused import SWOOSH, SWOOSH_SLOPE

__all__ = [
    "CtcExportWrapper",
    "DecoderExportWrapper",
    "EncoderExportWrapper",
    "JoinerExportWrapper",
    "add_meta_data",
    "convert_to_fp16",
    "export_ctc_model",
    "export_friendly",
    "export_graphs",
    "export_model",
    "export_transducer_model",
    "quantize_int8",
]

log = logging.getLogger("anyphone.export")

SAMPLE_RATE = 16000
FRAME_SHIFT_MS = 10  # fbank frame shift
# op types the fp16 models still compute in float32 (see convert_to_fp16)
FP16_KEEP_FP32_OPS = ("Pow", "ReduceMean")


# ---------------------------------------------------------------------------------------------
# Export-friendly forward functions (same arithmetic as the eager modules, no data-dependent Python)
# ---------------------------------------------------------------------------------------------


def _subsampling_forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
    # Conv2dSubsampling.forward minus the int(x_lens.max()) check; Whiten/Dropout are identity in eval.
    x = self.conv(x.unsqueeze(1))
    x = self.convnext(x)
    n, c, t, f = x.shape
    x = x.transpose(1, 2).reshape(n, t, c * f)
    x = self.out_norm(self.out(x))
    x_lens = torch.div(x_lens - 7, 2, rounding_mode="floor")
    return x, x_lens


def _simple_downsample_forward(self, src: Tensor) -> Tensor:
    # Always concatenates the (possibly empty) padding block instead of branching on its size.
    ds = self.downsample
    if ds == 1:
        return src * self.bias.softmax(dim=0)
    t, n, c = src.shape
    t_out = (t + ds - 1) // ds
    pad = t_out * ds - t
    src = torch.cat((src, src[-1:].expand(pad, n, c)), dim=0)
    w = self.bias.softmax(dim=0).to(src.dtype)
    return (src.reshape(t_out, ds, n, c) * w.reshape(1, ds, 1, 1)).sum(dim=1)


def _rel_pos_forward(self, x: Tensor) -> Tensor:
    # CompactRelPositionalEncoding computed in-graph for exactly offsets -(T-1)..T-1 (no cached table,
    # whose size would fix T).  Each row depends only on its offset, so values equal the eager table's.
    t = x.shape[0]
    d = self.embed_dim
    off = torch.arange(2 * t - 1, device=x.device).to(torch.float32) - (t - 1)
    off = off.unsqueeze(1)
    freqs = torch.arange(1, d // 2 + 1, device=x.device).to(torch.float32)
    comp = d**0.5
    x_comp = comp * off.sign() * ((off.abs() + comp).log() - math.log(comp))
    length_scale = self.length_factor * d / (2.0 * math.pi)
    x_atan = (x_comp / length_scale).atan()
    ang = x_atan * freqs  # (2T-1, d/2)
    # interleave cos/sin as columns 0::2 / 1::2, then force the last column to 1
    pe = torch.stack((ang.cos(), ang.sin()), dim=-1).reshape(2 * t - 1, d)
    pe = torch.cat((pe[:, :-1], torch.ones_like(pe[:, :1])), dim=1)
    return pe.to(x.dtype).unsqueeze(0)


def _rel_attn_weights_forward(
    self, x: Tensor, pos_emb: Tensor, key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None
) -> Tensor:
    # RelPositionMultiheadAttentionWeights in eval, with the relative->absolute shift done by gather
    # (as_strided on symbolic shapes does not map cleanly onto ONNX).
    x = self.in_proj(x)
    h, qd, pd = self.num_heads, self.query_head_dim, self.pos_head_dim
    t, n, _ = x.shape
    q = x[..., : h * qd].reshape(t, n, h, qd).permute(2, 1, 0, 3)
    k = x[..., h * qd : 2 * h * qd].reshape(t, n, h, qd).permute(2, 1, 3, 0)
    p = x[..., 2 * h * qd :].reshape(t, n, h, pd).permute(2, 1, 0, 3)
    scores = torch.matmul(q, k)  # (H, N, T, T)
    pe = self.linear_pos(pos_emb).reshape(-1, 2 * t - 1, h, pd).permute(2, 0, 3, 1)  # (H, 1, pd, 2T-1)
    pos_scores = torch.matmul(p, pe)  # (H, N, T, 2T-1), column c = offset + T - 1
    # element (i, j) takes column (T - 1) - i + j
    rows = torch.arange(t, device=x.device)
    idx = (t - 1) - rows.unsqueeze(1) + rows.unsqueeze(0)  # (T, T)
    idx = idx.expand(pos_scores.shape[0], pos_scores.shape[1], t, t)
    scores = scores + torch.gather(pos_scores, -1, idx)
    if attn_mask is not None:
        scores = scores.masked_fill(attn_mask, -1000.0)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask.unsqueeze(1), -1000.0)
    return scores.softmax(dim=-1)


# SwooshL / SwooshR (shift, offset) and slope: the model's own constants (k2's, fixed by ZIPA compatibility)
_SWOOSH_L, _SWOOSH_R = SWOOSH["SwooshL"], SWOOSH["SwooshR"]


def _swoosh_onnx(x: Tensor, shift: float, offset: float) -> Tensor:
    # softplus(z) written as relu(z) + log(1 + exp(-|z|)): the same value in float32 (the eager model's
    # thresholded softplus included), but it exports to cheap vectorised ops; onnxruntime's Softplus
    # kernel alone took ~60 % of the CPU time of the small model.
    xf = x.float()
    z = xf - shift
    sp = torch.relu(z) + torch.log(1.0 + torch.exp(-torch.abs(z)))
    return (sp - SWOOSH_SLOPE * xf - offset).to(x.dtype)


def _swoosh_l_forward(self, x: Tensor) -> Tensor:
    return _swoosh_onnx(x, *_SWOOSH_L)


def _swoosh_r_forward(self, x: Tensor) -> Tensor:
    return _swoosh_onnx(x, *_SWOOSH_R)


def _activation_linear_forward(self, x: Tensor) -> Tensor:
    # ActivationDropoutAndLinear in eval: swoosh, then linear (dropout is off)
    kind = _SWOOSH_L if self.activation == "SwooshL" else _SWOOSH_R
    return torch.nn.functional.linear(_swoosh_onnx(x, *kind), self.weight, self.bias)


def _patch_table() -> dict[type, Any]:
    from anyphone.models import scaling, subsampling, zipformer

    return {
        scaling.SwooshL: _swoosh_l_forward,
        scaling.SwooshR: _swoosh_r_forward,
        scaling.ActivationDropoutAndLinear: _activation_linear_forward,
        subsampling.Conv2dSubsampling: _subsampling_forward,
        zipformer.SimpleDownsample: _simple_downsample_forward,
        zipformer.CompactRelPositionalEncoding: _rel_pos_forward,
        zipformer.RelPositionMultiheadAttentionWeights: _rel_attn_weights_forward,
    }


@contextlib.contextmanager
def export_friendly(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, the model's modules use export-friendly forwards (eval-mode semantics).

    Patches only the instances inside ``model`` (not the classes), and removes the patches on exit.
    """
    table = _patch_table()
    patched: list[nn.Module] = []
    try:
        for m in model.modules():
            fn = table.get(type(m))
            if fn is not None:
                m.forward = types.MethodType(fn, m)
                patched.append(m)
        yield model
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)


# ---------------------------------------------------------------------------------------------
# ONNX helpers
# ---------------------------------------------------------------------------------------------


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


def _common_meta(cfg: Any, family: ModelFamily, vocab_size: int) -> dict[str, Any]:
    subsampling = 2 * family.output_downsampling_factor  # fbank at 100 Hz, every family's front end halves it
    return {
        "model_type": family.onnx_model_type,
        "family": family.name,
        "framework": "anyphone",
        "vocab_size": vocab_size,
        "blank_id": 0,
        "sample_rate": SAMPLE_RATE,
        "feature_dim": int(getattr(cfg, "feature_dim", 80)),
        "frame_shift_ms": FRAME_SHIFT_MS,
        "subsampling_factor": subsampling,
        "output_frame_shift_ms": FRAME_SHIFT_MS * subsampling,
        "model_size": str(getattr(cfg, "name", "custom")),
        "fbank": "kaldi fbank: 80 mel bins 20..7600 Hz, povey window, dither 0, snip_edges false, "
        "waves in [-1, 1], batches zero-padded",
        "comment": "exported by anyphone.export.onnx",
    }


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def export_graphs(
    family: ModelFamily,
    model: nn.Module,
    graphs: list[OnnxGraph],
    out_dir: str | Path,
    *,
    fp16: bool = False,
    int8: bool = False,
    opset: int = 18,
    extra_meta: dict[str, Any] | None = None,
) -> dict[str, list[Path]]:
    """Write each graph as ``out_dir/<stem>.onnx`` (+ ``.fp16.onnx`` / ``.int8.onnx``) with the common
    metadata, the family's and ``extra_meta``. Returns {part: [paths, fp32 first]}."""
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    for g in graphs:
        meta = _common_meta(model.cfg, family, int(g.meta["vocab_size"]))
        meta.update({k: (json.dumps(v) if k == "config" else v) for k, v in g.meta.items()})
        meta.update(extra_meta or {})
        path = out_dir / f"{g.stem}.onnx"

        def export(tmp: Path, g: OnnxGraph = g) -> None:
            ctx = export_friendly(g.module) if g.patch else contextlib.nullcontext()
            with ctx:
                _torch_export(g.module, g.example, tmp, g.input_names, g.output_names, g.dynamic_shapes, opset,
                              g.translations)

        _export_whole(path, export, meta)
        written[g.part] = path
    keep = {g.part: g.fp16_keep_ops for g in graphs}
    return {part: _variants(p, fp16, int8, keep[part]) for part, p in written.items()}


def export_model(
    model: nn.Module,
    family: str | ModelFamily,
    out_dir: str | Path,
    label: str = "",
    *,
    fp16: bool = False,
    int8: bool = False,
    opset: int = 18,
    extra_meta: dict[str, Any] | None = None,
) -> dict[str, list[Path]]:
    """Export a model of ``family`` into ``out_dir``: the family's graphs, file stems carrying ``label``
    (``model-<label>.onnx`` for CTC families, ``{encoder,decoder,joiner}-<label>.onnx`` for the transducer).
    Returns {part: [paths, fp32 first]}."""
    family = get_family(family)
    model = model.eval()
    return export_graphs(family, model, family.onnx_graphs(model, label), out_dir, fp16=fp16, int8=int8,
                         opset=opset, extra_meta=extra_meta)


def export_ctc_model(
    model: nn.Module,
    out_path: str | Path,
    *,
    fp16: bool = False,
    int8: bool = False,
    opset: int = 18,
    extra_meta: dict[str, Any] | None = None,
    family: str | ModelFamily = "crctc",
) -> list[Path]:
    """Export a CTC model (a CR-CTC CtcModel by default) to ``out_path`` (fp32) plus ``.fp16.onnx`` /
    ``.int8.onnx`` beside it. Returns the written paths, fp32 first.
    """
    family = get_family(family)
    model = model.eval()
    out_path = Path(out_path)
    graphs = family.onnx_graphs(model, "")
    if len(graphs) != 1:
        raise ValueError(f"export_ctc_model: a {family.name} model exports {len(graphs)} graphs, not one")
    graphs[0].stem = out_path.name.removesuffix(".onnx")
    return export_graphs(family, model, graphs, out_path.parent, fp16=fp16, int8=int8, opset=opset,
                         extra_meta=extra_meta)[graphs[0].part]


def export_transducer_model(
    model: nn.Module,
    out_dir: str | Path,
    suffix: str = "",
    *,
    fp16: bool = False,
    int8: bool = False,
    opset: int = 18,
    extra_meta: dict[str, Any] | None = None,
) -> dict[str, list[Path]]:
    """Export a TransducerModel as ``{encoder,decoder,joiner}-<suffix>.onnx`` (+ fp16 / int8 variants)
    in ``out_dir``; ``suffix`` "" gives ``encoder.onnx`` etc.  Returns {part: [paths, fp32 first]}.
    """
    return export_model(model, "transducer", out_dir, suffix, fp16=fp16, int8=int8, opset=opset,
                        extra_meta=extra_meta)


# ---------------------------------------------------------------------------------------------
# Command line (behind zipformer_crctc/export.py and zipformer_transducer/export.py)
# ---------------------------------------------------------------------------------------------


def get_export_parser(family: str, description: str | None = None, argv: list[str] | None = None):
    """icefall-style export flags, ``--family`` and the model flags of the family ``argv`` names (``--family``,
    else the exp dir's config.json, else ``family``, the recipe's); the model flags are optional: the exp dir's
    config.json describes the model."""
    import argparse

    from anyphone.evaluation.run import add_checkpoint_arguments, add_family_argument, chosen_family
    from anyphone.families import family_names
    from anyphone.utils import str2bool

    name = chosen_family(family, argv, exp_dir_flags=True) if argv is not None else family
    chosen = get_family(name if name in family_names() else family)

    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(p.add_argument_group("checkpoint (icefall names)"), verb="Export")
    g = p.add_argument_group("export")
    g.add_argument("--tokens", type=Path, default=None,
                   help="tokens.txt (default: <lang-dir>/tokens.txt, else the packaged ZIPA table)")
    g.add_argument("--lang-dir", type=Path, default=Path("ipa_simplified"))
    g.add_argument("--output-dir", type=Path, default=None, help="Default: --exp-dir.")
    g.add_argument("--onnx", type=str2bool, default=True, help="Write ONNX (fp32) models.")
    g.add_argument("--fp16", type=str2bool, default=False, help="Also write .fp16.onnx (fp16 weights, fp32 I/O).")
    g.add_argument("--int8", type=str2bool, default=False, help="Also write .int8.onnx (dynamic quantisation).")
    g.add_argument("--opset", type=int, default=18)
    add_family_argument(g, None)
    chosen.add_model_arguments(p)
    return p


def _tokens_file(args) -> Path:
    if args.tokens is not None:
        if not Path(args.tokens).is_file():
            raise SystemExit(f"--tokens {args.tokens}: file not found")
        return Path(args.tokens)
    cand = Path(args.lang_dir) / "tokens.txt"
    if cand.is_file():
        return cand
    packaged = Path(__file__).resolve().parents[1] / "text" / "tokens.txt"
    log.warning("%s not found; using the packaged ZIPA token table %s", cand, packaged)
    return packaged


def _count_tokens(path: Path) -> int:
    return sum(1 for line in open(path, encoding="utf-8") if line.strip())


def _label(args) -> str:
    if args.checkpoint is not None:
        return Path(args.checkpoint).stem
    base = f"iter-{args.iter}" if args.iter > 0 else f"epoch-{args.epoch}"
    return f"{base}-avg-{args.avg}"


def export_main(args, family: str | ModelFamily | None = None) -> dict[str, list[Path]]:
    """Load/average weights, write ``pretrained.pt`` (plain state_dict), tokens.txt and the ONNX files.

    The model is the one the exp dir's config.json (or the checkpoint's tensors) describes, of the family they
    name (``family``: the recipe's, used when nothing else names one); a transducer's joint CTC head, if it has
    one, is loaded and not exported."""
    from anyphone.evaluation.run import model_config_for, resolve_family, select_decoding_weights
    from anyphone.weights.checkpoint import CheckpointMismatchError, load_model_weights
    from anyphone.weights.expdir import CONFIG_FILE, write_config

    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    tokens = _tokens_file(args)
    sd, source = select_decoding_weights(args)
    fam = resolve_family(args, family, sd)
    cfg, options = model_config_for(args, fam, sd)
    model: nn.Module = fam.build(cfg.replace(vocab_size=_count_tokens(tokens)), **options)
    try:
        load_model_weights(model, sd, source)
    except CheckpointMismatchError as e:  # shapes were checked: the token table is the other size
        raise SystemExit(f"{e}; {tokens} must be the token table it was trained with") from None
    model.eval()
    out_dir = Path(args.output_dir or args.exp_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_dir / "pretrained.pt", "wb") as f:
        torch.save(model.state_dict(), f)
    if tokens.resolve() != (out_dir / "tokens.txt").resolve():
        atomic_write_bytes(out_dir / "tokens.txt", tokens.read_bytes())
    if not (out_dir / CONFIG_FILE).is_file():  # pretrained.pt describes itself too (load_model, finetune)
        write_config(out_dir, model=model.cfg.to_dict(), family=fam.name, tokens="tokens.txt")
    log.info("Loaded %s %s (%s parameters); wrote %s", fam.name, source,
             f"{sum(p.numel() for p in model.parameters()):,}", out_dir / "pretrained.pt")
    written: dict[str, list[Path]] = {}
    if not args.onnx:
        return written
    written = export_model(model, fam, out_dir, _label(args), fp16=args.fp16, int8=args.int8, opset=args.opset,
                           extra_meta={"checkpoint": str(source)})
    for part, paths in written.items():
        for p in paths:
            log.info("%s: %s (%.1f MB)", part, p, p.stat().st_size / 1e6)
    return written
