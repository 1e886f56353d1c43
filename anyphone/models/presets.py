"""Zipformer model configurations: the :class:`ZipformerConfig` dataclass, named presets, and
icefall-compatible command-line flags.

Presets:
  * ``small`` / ``large``: exactly ZIPA's ``small_params`` / ``large_params`` (64M / 300M CR-CTC).
  * ``tiny``: a ~3.3M-parameter model that trains on a laptop CPU.
  * ``fixture_tiny``: the configuration of the ZIPA reference fixtures (tests only).

Per-stack values are tuples of ints; in dicts and on the command line they are comma-separated
strings as in icefall (``--num-encoder-layers 2,2,3,4,3,2``).  A single value applies to every stack.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from anyphone.utils import str2bool as _str2bool

from .scaling import int_tuple

__all__ = [
    "PRESETS",
    "ZipformerConfig",
    "add_model_arguments",
    "config_from_args",
    "get_preset",
    "model_flag_dests",
]

# Fields that hold one int per encoder stack (or a list of choices, for the chunk options).
_TUPLE_FIELDS = (
    "num_encoder_layers",
    "downsampling_factor",
    "feedforward_dim",
    "num_heads",
    "encoder_dim",
    "query_head_dim",
    "value_head_dim",
    "pos_head_dim",
    "encoder_unmasked_dim",
    "cnn_module_kernel",
    "chunk_size",
    "left_context_frames",
    "embed_channels",
)


@dataclass
class ZipformerConfig:
    """Hyper-parameters of a Zipformer encoder plus the head sizes of the CTC/transducer models."""

    num_encoder_layers: tuple[int, ...] = (2, 2, 3, 4, 3, 2)
    downsampling_factor: tuple[int, ...] = (1, 2, 4, 8, 4, 2)
    feedforward_dim: tuple[int, ...] = (512, 768, 1024, 1536, 1024, 768)
    num_heads: tuple[int, ...] = (4, 4, 4, 8, 4, 4)
    encoder_dim: tuple[int, ...] = (192, 256, 384, 512, 384, 256)
    query_head_dim: tuple[int, ...] = (32,)
    value_head_dim: tuple[int, ...] = (12,)
    pos_head_dim: tuple[int, ...] = (4,)
    pos_dim: int = 48
    encoder_unmasked_dim: tuple[int, ...] = (192, 192, 256, 256, 256, 192)
    cnn_module_kernel: tuple[int, ...] = (31, 31, 15, 15, 15, 31)
    decoder_dim: int = 512
    joiner_dim: int = 512
    context_size: int = 2
    causal: bool = False
    chunk_size: tuple[int, ...] = (16, 32, 64, -1)
    left_context_frames: tuple[int, ...] = (64, 128, 256, -1)
    feature_dim: int = 80
    # Channels of the front end's three convolutions (the last one is also the ConvNeXt's width).
    embed_channels: tuple[int, ...] = (8, 32, 128)
    vocab_size: int = 127
    # Not model shape: which preset this came from, for logs and checkpoints.
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        for f in _TUPLE_FIELDS:
            setattr(self, f, int_tuple(getattr(self, f), what=f"ZipformerConfig.{f}"))
        n = len(self.downsampling_factor)
        for f in _TUPLE_FIELDS:
            if f in ("chunk_size", "left_context_frames"):
                continue
            if f == "embed_channels":
                if len(getattr(self, f)) != 3:
                    raise ValueError(f"ZipformerConfig.embed_channels: {getattr(self, f)}, expected 3 values")
                continue
            v = getattr(self, f)
            if len(v) not in (1, n):
                raise ValueError(
                    f"ZipformerConfig.{f}: {len(v)} values {v}, expected 1 or {n} (one per encoder stack)"
                )
        for u, d in zip(self.stack(self.encoder_unmasked_dim), self.encoder_dim_per_stack):
            if u > d:
                raise ValueError(f"ZipformerConfig: encoder_unmasked_dim {u} > encoder_dim {d}")

    # -- helpers ---------------------------------------------------------------------------------
    def stack(self, v: tuple[int, ...]) -> tuple[int, ...]:
        """Broadcast a per-stack tuple to the number of stacks."""
        return v * len(self.downsampling_factor) if len(v) == 1 else v

    @property
    def encoder_dim_per_stack(self) -> tuple[int, ...]:
        return self.stack(self.encoder_dim)

    @property
    def output_dim(self) -> int:
        """Channels of the encoder output, max(encoder_dim)."""
        return max(self.encoder_dim_per_stack)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict; per-stack tuples become icefall-style comma strings."""
        d = dataclasses.asdict(self)
        for f in _TUPLE_FIELDS:
            d[f] = ",".join(str(v) for v in d[f])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], strict: bool = False) -> ZipformerConfig:
        """Build from a dict such as ``to_dict()`` output or a ZIPA/icefall params dict.

        Unknown keys are ignored unless ``strict``.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if strict and unknown:
            raise ValueError(f"ZipformerConfig.from_dict: unknown keys {unknown}")
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **overrides: Any) -> ZipformerConfig:
        """Copy with some fields changed (values may be comma strings)."""
        return dataclasses.replace(self, **overrides)


PRESETS: dict[str, ZipformerConfig] = {
    # ZIPA zipa_ctc_inference.py small_params (also the transducer's).
    "small": ZipformerConfig(name="small"),
    # ZIPA large_params.
    "large": ZipformerConfig(
        num_encoder_layers=(4, 3, 4, 5, 4, 4),
        downsampling_factor=(1, 2, 4, 8, 4, 2),
        feedforward_dim=(768, 768, 1536, 2048, 1536, 768),
        num_heads=(6, 6, 6, 8, 6, 6),
        encoder_dim=(512, 512, 768, 1024, 768, 512),
        query_head_dim=(64,),
        value_head_dim=(48,),
        pos_head_dim=(4,),
        pos_dim=48,
        encoder_unmasked_dim=(192, 192, 256, 320, 256, 192),
        cnn_module_kernel=(31, 31, 15, 15, 15, 31),
        decoder_dim=1024,
        joiner_dim=1024,
        name="large",
    ),
    # ~3.3M parameters: one layer per stack, narrow; trains in minutes on 2 CPU cores.
    "tiny": ZipformerConfig(
        num_encoder_layers=(1, 1, 1, 1, 1, 1),
        downsampling_factor=(1, 2, 4, 8, 4, 2),
        feedforward_dim=(256, 320, 384, 512, 384, 320),
        num_heads=(4, 4, 4, 4, 4, 4),
        encoder_dim=(96, 128, 128, 192, 128, 128),
        query_head_dim=(16,),
        value_head_dim=(8,),
        pos_head_dim=(4,),
        pos_dim=32,
        encoder_unmasked_dim=(96, 96, 96, 128, 96, 96),
        cnn_module_kernel=(31, 31, 15, 15, 15, 31),
        # half the front-end width: its ConvNeXt at 50 Hz x 19 bins cost ~40% of a CPU training step at 128
        embed_channels=(8, 32, 64),
        decoder_dim=256,
        joiner_dim=256,
        name="tiny",
    ),
    # The configuration of /work/shared/reference/zipa/tiny_*.pt.
    "fixture_tiny": ZipformerConfig(
        num_encoder_layers=(1, 1, 2, 1, 1, 1),
        downsampling_factor=(1, 2, 4, 8, 4, 2),
        feedforward_dim=(96, 128, 128, 192, 128, 96),
        num_heads=(2, 4, 4, 4, 4, 2),
        encoder_dim=(48, 64, 64, 96, 64, 48),
        query_head_dim=(8,),
        value_head_dim=(4,),
        pos_head_dim=(2,),
        pos_dim=16,
        encoder_unmasked_dim=(32, 48, 48, 64, 48, 32),
        cnn_module_kernel=(31, 31, 15, 15, 15, 31),
        decoder_dim=64,
        joiner_dim=64,
        name="fixture_tiny",
    ),
}


def get_preset(name: str) -> ZipformerConfig:
    """A fresh copy of a named preset (tiny, small, large, fixture_tiny)."""
    if name not in PRESETS:
        raise ValueError(f"presets: unknown model size {name!r}, expected one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name])


# flag name -> (field, help); every flag defaults to None meaning "take the preset's value".
_FLAGS = [
    (
        "--num-encoder-layers",
        "num_encoder_layers",
        "Layers per encoder stack, comma separated, e.g. 2,2,3,4,3,2",
    ),
    ("--downsampling-factor", "downsampling_factor", "Downsampling factor of each stack relative to 50 Hz"),
    ("--feedforward-dim", "feedforward_dim", "Feed-forward hidden size per stack"),
    ("--num-heads", "num_heads", "Attention heads per stack"),
    ("--encoder-dim", "encoder_dim", "Embedding size per stack"),
    ("--query-head-dim", "query_head_dim", "Query/key size per head (one value or one per stack)"),
    ("--value-head-dim", "value_head_dim", "Value size per head"),
    ("--pos-head-dim", "pos_head_dim", "Positional-query size per head"),
    (
        "--encoder-unmasked-dim",
        "encoder_unmasked_dim",
        "Channels per stack never zeroed by the training feature mask (<= encoder dim)",
    ),
    ("--cnn-module-kernel", "cnn_module_kernel", "Depthwise convolution kernel size per stack"),
    ("--chunk-size", "chunk_size", "Chunk sizes (50 Hz frames) sampled in causal training; -1 = full"),
    ("--left-context-frames", "left_context_frames", "Left-context choices (frames) in causal training"),
    ("--embed-channels", "embed_channels", "Channels of the Conv2dSubsampling front end's 3 convolutions"),
]
_INT_FLAGS = [
    ("--pos-dim", "pos_dim", "Positional encoding size before projection"),
    ("--decoder-dim", "decoder_dim", "Transducer decoder (prediction network) embedding size"),
    ("--joiner-dim", "joiner_dim", "Transducer joiner hidden size"),
    ("--context-size", "context_size", "Transducer decoder context (1 = bigram, 2 = trigram)"),
]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--model-size`` and icefall's Zipformer flags; explicit flags override the preset."""
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model-size",
        type=str,
        default=None,
        choices=[k for k in PRESETS if k != "fixture_tiny"],
        help="Preset whose values are used for every model flag not given explicitly (default: small; decode.py "
        "and export.py read the exp dir's config.json instead)",
    )
    for flag, dest, help_ in _FLAGS:
        g.add_argument(flag, dest=dest, type=str, default=None, help=help_)
    for flag, dest, help_ in _INT_FLAGS:
        g.add_argument(flag, dest=dest, type=int, default=None, help=help_)
    g.add_argument(
        "--causal",
        dest="causal",
        type=_str2bool,
        default=None,
        help="Train a chunk-causal (streaming-capable) model: true/false",
    )


def model_flag_dests() -> list[str]:
    """Namespace names of the shape flags :func:`add_model_arguments` adds besides ``--model-size``."""
    return [dest for _, dest, _ in _FLAGS + _INT_FLAGS] + ["causal"]


def config_from_args(args: argparse.Namespace) -> ZipformerConfig:
    """Preset named by ``args.model_size`` with every explicitly given model flag applied."""
    cfg = get_preset(getattr(args, "model_size", None) or "small")
    overrides = {}
    for _, dest, _ in _FLAGS + _INT_FLAGS:
        v = getattr(args, dest, None)
        if v is not None:
            overrides[dest] = v
    if getattr(args, "causal", None) is not None:
        overrides["causal"] = args.causal
    for key in ("feature_dim", "vocab_size"):
        v = getattr(args, key, None)
        if isinstance(v, int):
            overrides[key] = v
    return cfg.replace(**overrides) if overrides else cfg
