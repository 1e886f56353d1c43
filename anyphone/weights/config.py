"""The Zipformer configuration of a state_dict, and the model it builds.

:func:`config_from_state_dict` tells (family, config, use_ctc) from the tensors alone, so nobody passes
``--model-size`` for a published checkpoint; :func:`build_model` builds the model of a family.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import torch

from anyphone.models.presets import PRESETS, ZipformerConfig
from anyphone.utils import state_dict_mismatch
from anyphone.weights.safe_load import FAMILIES, model_family

__all__ = ["build_model", "config_from_state_dict", "derive_config", "head_sizes", "shapes_match"]

log = logging.getLogger("anyphone.weights")


def head_sizes(sd: Mapping[str, Any], family: str) -> dict[str, int]:
    """The output-side sizes of a state_dict (vocab; a transducer's joiner/decoder dims and context size), as
    ZipformerConfig fields."""
    out: dict[str, int] = {}
    if family == "transducer":
        out["vocab_size"] = int(sd["joiner.output_linear.weight"].shape[0])
        out["joiner_dim"] = int(sd["joiner.output_linear.weight"].shape[1])
        out["decoder_dim"] = int(sd["decoder.embedding.weight"].shape[1])
        conv = sd.get("decoder.conv.weight")
        out["context_size"] = int(conv.shape[-1]) if conv is not None else 1
    else:
        out["vocab_size"] = int(sd["ctc_output.1.weight"].shape[0])
    return out


def build_model(family: str, cfg: ZipformerConfig, use_ctc: bool = False) -> torch.nn.Module:
    """The (untrained) model of a family: CtcModel for "crctc", TransducerModel (with a joint CTC head when
    ``use_ctc``) for "transducer"."""
    if family not in FAMILIES:
        raise ValueError(f"family={family!r}, expected one of {FAMILIES}")
    if family == "transducer":
        from anyphone.models.transducer import TransducerModel

        return TransducerModel(cfg, use_ctc=use_ctc)
    from anyphone.models.ctc import CtcModel

    return CtcModel(cfg)


def shapes_match(family: str, cfg: ZipformerConfig, sd: Mapping[str, Any], use_ctc: bool) -> str | None:
    """None if a model built from ``cfg`` has exactly the keys and shapes of ``sd``, else the first difference."""
    try:
        with torch.device("meta"):
            model = build_model(family, cfg, use_ctc)
    except (ValueError, AssertionError, RuntimeError) as e:
        return f"cannot build ({e})"
    return state_dict_mismatch(model.state_dict(), sd)


_LAYER_RE = re.compile(r"^encoder\.encoders\.(\d+)\.(?:encoder\.)?layers\.(\d+)\.")


def _stack_signature(sd: Mapping[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(layers per stack, encoder dim per stack) read off the key names and norm biases."""
    layers: dict[int, set[int]] = {}
    dims: dict[int, int] = {}
    for k, v in sd.items():
        m = _LAYER_RE.match(k)
        if m:
            i = int(m.group(1))
            layers.setdefault(i, set()).add(int(m.group(2)))
            if k.endswith(".norm.bias"):
                dims[i] = int(v.shape[0])
    n = sorted(layers)
    return tuple(len(layers[i]) for i in n), tuple(dims.get(i, 0) for i in n)


def derive_config(sd: Mapping[str, Any], heads: dict[str, int]) -> ZipformerConfig:
    """Read every Zipformer hyper-parameter that shapes a tensor off the state_dict.

    Head sizes are ambiguous from shapes alone (rows = heads * head_dim); the first pos_head_dim among
    4, 2, 8, 1, 16 (ZIPA uses 4) that gives whole, stack-independent query/value head dims is taken.
    encoder_unmasked_dim only matters in training and is set to the encoder dims.
    """
    layers: dict[int, set[int]] = {}
    prefix: dict[int, str] = {}
    for k in sd:
        m = _LAYER_RE.match(k)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            layers.setdefault(i, set()).add(j)
            prefix[i] = k[: m.end()].rsplit("layers.", 1)[0] + "layers.0."
    if not layers or sorted(layers) != list(range(len(layers))):
        raise ValueError("state_dict has no encoder.encoders.N.layers.M.* keys; not a Zipformer checkpoint")
    n = len(layers)

    def shape(i: int, name: str) -> tuple[int, ...]:
        return tuple(sd[prefix[i] + name].shape)

    causal = any(k.endswith("depthwise_conv.causal_conv.weight") for k in sd)
    conv_w = "conv_module1.depthwise_conv.chunkwise_conv.weight" if causal else "conv_module1.depthwise_conv.weight"
    dims = [shape(i, "norm.bias")[0] for i in range(n)]
    pos_rows = [shape(i, "self_attn_weights.linear_pos.weight")[0] for i in range(n)]
    in_rows = [shape(i, "self_attn_weights.in_proj.weight")[0] for i in range(n)]
    val_rows = [shape(i, "self_attn1.in_proj.weight")[0] for i in range(n)]
    choice = None
    for pd in (4, 2, 8, 1, 16):
        if any(r % pd for r in pos_rows):
            continue
        h = [r // pd for r in pos_rows]
        if any((ir // hh - pd) % 2 or ir % hh or vr % hh for ir, vr, hh in zip(in_rows, val_rows, h)):
            continue
        qd = {(ir // hh - pd) // 2 for ir, hh in zip(in_rows, h)}
        vd = {vr // hh for vr, hh in zip(val_rows, h)}
        if len(qd) == 1 and len(vd) == 1 and min(qd) > 0:
            choice = (h, qd.pop(), vd.pop(), pd)
            break
    if choice is None:
        raise ValueError("cannot tell the attention head sizes from the state_dict shapes; pass config=")
    h, qd, vd, pd = choice
    return ZipformerConfig(
        num_encoder_layers=tuple(len(layers[i]) for i in range(n)),
        downsampling_factor=tuple(
            int(sd[f"encoder.encoders.{i}.downsample.bias"].shape[0]) if f"encoder.encoders.{i}.downsample.bias" in sd
            else 1 for i in range(n)),
        feedforward_dim=tuple(shape(i, "feed_forward2.in_proj.weight")[0] for i in range(n)),
        num_heads=tuple(h),
        encoder_dim=tuple(dims),
        query_head_dim=(qd,),
        value_head_dim=(vd,),
        pos_head_dim=(pd,),
        pos_dim=shape(0, "self_attn_weights.linear_pos.weight")[1],
        encoder_unmasked_dim=tuple(dims),
        cnn_module_kernel=tuple(shape(i, conv_w)[-1] for i in range(n)),
        causal=causal,
        feature_dim=80,
        embed_channels=tuple(int(sd[f"encoder_embed.conv.{i}.weight"].shape[0]) for i in (0, 4, 7)),
        name="custom",
        **heads,
    )


def config_from_state_dict(
    sd: Mapping[str, Any], config: ZipformerConfig | Mapping[str, Any] | str | None = None
) -> tuple[str, ZipformerConfig, bool]:
    """Tell (family, config, use_ctc) from a ZIPA/anyphone state_dict, so users never pass ``--model-size``.

    family: "crctc" (``ctc_output.1.*``) or "transducer" (``decoder.*``/``joiner.*``; ``use_ctc`` when it also
    has a CTC head). The config is ``config`` if given (a ZipformerConfig, a dict, or a preset name), else the
    first preset (small, large, tiny, fixture_tiny) whose shapes match exactly, else one derived from the shapes.
    Every candidate is checked against all keys and shapes.

    Raises:
        ValueError: not a Zipformer checkpoint, or shapes that fit no configuration (names the first mismatch).
    """
    family = model_family(sd)
    if family is None:
        raise ValueError("state_dict has neither ctc_output.* (CR-CTC) nor decoder.*/joiner.* (transducer) "
                         f"weights; first keys: {list(sd)[:5]}")
    use_ctc = family == "transducer" and "ctc_output.1.weight" in sd
    heads = head_sizes(sd, family)
    if config is not None:
        if isinstance(config, str):
            cfg = PRESETS[config].replace(**heads) if config in PRESETS else None
            if cfg is None:
                raise ValueError(f"config={config!r}: unknown preset, expected one of {sorted(PRESETS)}")
        elif isinstance(config, ZipformerConfig):
            cfg = config
        else:
            cfg = ZipformerConfig.from_dict(dict(config))
        why = shapes_match(family, cfg, sd, use_ctc)
        if why:
            raise ValueError(f"the given config ({cfg.name}) does not fit the checkpoint: {why}")
        return family, cfg, use_ctc
    sig = _stack_signature(sd)
    for name in ("small", "large", "tiny", "fixture_tiny"):
        cfg = PRESETS[name].replace(**heads)
        if sig != (cfg.stack(cfg.num_encoder_layers), cfg.encoder_dim_per_stack):
            continue  # cheap pre-check; building even a meta model takes a while
        if shapes_match(family, cfg, sd, use_ctc) is None:
            return family, cfg, use_ctc
    cfg = derive_config(sd, heads)
    why = shapes_match(family, cfg, sd, use_ctc)
    if why:
        raise ValueError(f"checkpoint shapes fit no Zipformer configuration (derived one: {why}); pass config=")
    log.warning("model configuration derived from tensor shapes (no preset matches); attention heads assumed "
                "%s x query %d / value %d / pos %d: put a config.json (ZipformerConfig.to_dict()) beside the "
                "checkpoint if the model was trained with other head sizes", ",".join(map(str, cfg.num_heads)),
                cfg.query_head_dim[0], cfg.value_head_dim[0], cfg.pos_head_dim[0])
    return family, cfg, use_ctc


