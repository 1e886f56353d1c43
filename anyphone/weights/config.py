"""The Zipformer configuration of a state_dict: presets tried first, then every shape read off the tensors.

Family-free: the model families (:mod:`anyphone.families`) say which head sizes a state_dict has and how to
build the model whose keys and shapes it must match; :func:`zipformer_config_from_state_dict` does the rest, so
nobody passes ``--model-size`` for a published checkpoint.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from anyphone.models.presets import PRESETS, ZipformerConfig
from anyphone.utils import state_dict_mismatch

__all__ = ["derive_config", "shapes_match", "zipformer_config_from_state_dict"]

log = logging.getLogger("anyphone.weights")


def shapes_match(make_model: Callable[[], torch.nn.Module], sd: Mapping[str, Any]) -> str | None:
    """None if ``make_model()`` (built on the meta device, no memory) has exactly the keys and shapes of ``sd``,
    else the first difference."""
    try:
        with torch.device("meta"):
            model = make_model()
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


def zipformer_config_from_state_dict(
    sd: Mapping[str, Any], heads: Mapping[str, int], make_model: Callable[[ZipformerConfig], torch.nn.Module],
    config: ZipformerConfig | Mapping[str, Any] | str | None = None,
) -> ZipformerConfig:
    """The ZipformerConfig of a state_dict whose output-side sizes are ``heads`` (ZipformerConfig fields: vocab,
    a transducer's decoder/joiner dims...) and whose model ``make_model(cfg)`` builds.

    The config is ``config`` if given (a ZipformerConfig, a dict, or a preset name), else the first preset
    (small, large, tiny, fixture_tiny) whose shapes match exactly, else one derived from the shapes. Every
    candidate is checked against all keys and shapes.

    Raises:
        ValueError: not a Zipformer checkpoint, or shapes that fit no configuration (names the first mismatch).
    """
    heads = dict(heads)
    if config is not None:
        if isinstance(config, str):
            cfg = PRESETS[config].replace(**heads) if config in PRESETS else None
            if cfg is None:
                raise ValueError(f"config={config!r}: unknown preset, expected one of {sorted(PRESETS)}")
        elif isinstance(config, ZipformerConfig):
            cfg = config
        else:
            cfg = ZipformerConfig.from_dict(dict(config))
        why = shapes_match(lambda: make_model(cfg), sd)
        if why:
            raise ValueError(f"the given config ({cfg.name}) does not fit the checkpoint: {why}")
        return cfg
    sig = _stack_signature(sd)
    for name in ("small", "large", "tiny", "fixture_tiny"):
        cfg = PRESETS[name].replace(**heads)
        if sig != (cfg.stack(cfg.num_encoder_layers), cfg.encoder_dim_per_stack):
            continue  # cheap pre-check; building even a meta model takes a while
        if shapes_match(lambda c=cfg: make_model(c), sd) is None:
            return cfg
    cfg = derive_config(sd, heads)
    why = shapes_match(lambda: make_model(cfg), sd)
    if why:
        raise ValueError(f"checkpoint shapes fit no Zipformer configuration (derived one: {why}); pass config=")
    log.warning("model configuration derived from tensor shapes (no preset matches); attention heads assumed "
                "%s x query %d / value %d / pos %d: put a config.json (ZipformerConfig.to_dict()) beside the "
                "checkpoint if the model was trained with other head sizes", ",".join(map(str, cfg.num_heads)),
                cfg.query_head_dim[0], cfg.value_head_dim[0], cfg.pos_head_dim[0])
    return cfg
