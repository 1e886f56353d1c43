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

Every model carries metadata (``model_type``: how its outputs are decoded, "ctc" log-probs or "transducer"
parts; ``family``: the model family; ``vocab_size``, ``frame_shift_ms``, ``subsampling_factor``,
``sample_rate``, ``feature_dim``, ``context_size``, ``blank_id``, ``precision``, ...) so the runtime
(``anyphone.inference.onnx_runtime``) needs no torch and no config file.

Every file (the ONNX models, ``pretrained.pt``, ``tokens.txt``) is written under a temporary name in its
folder and renamed into place once complete, metadata included: an export that is interrupted, or runs out
of disk, leaves the previous files as they were and never a half-written model.

The pieces: :mod:`anyphone.export.traceable` (the Zipformer forwards that trace with symbolic shapes, and the
export notes), :mod:`anyphone.export.onnx_files` (tracing into a file, metadata, the fp16 / int8 variants and
the precision notes), :mod:`anyphone.export.recipe` (the recipes' ``export.py`` command line).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from torch import nn

from anyphone.export import onnx_files
from anyphone.export.traceable import export_friendly
from anyphone.families import get_family
from anyphone.families.base import ModelFamily, OnnxGraph

__all__ = [
    "export_ctc_model",
    "export_graphs",
    "export_model",
    "export_transducer_model",
]

SAMPLE_RATE = 16000
FRAME_SHIFT_MS = 10  # fbank frame shift


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
                # looked up on the module at call time (the fault tests replace onnx_files._torch_export)
                onnx_files._torch_export(g.module, g.example, tmp, g.input_names, g.output_names,
                                         g.dynamic_shapes, opset, g.translations)

        onnx_files._export_whole(path, export, meta)
        written[g.part] = path
    keep = {g.part: g.fp16_keep_ops for g in graphs}
    return {part: onnx_files._variants(p, fp16, int8, keep[part]) for part, p in written.items()}


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
