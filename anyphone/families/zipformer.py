"""What the two Zipformer families (CR-CTC, transducer) share: the model flags, the config of a state_dict and
the encoder part of their ONNX graphs."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from anyphone.families.base import ModelFamily
from anyphone.models.presets import ZipformerConfig
from anyphone.weights.config import zipformer_config_from_state_dict


class ZipformerFamily(ModelFamily):
    """A family whose encoder is ZIPA's Zipformer (:class:`ZipformerConfig`, ``--model-size`` presets)."""

    config_type = ZipformerConfig

    def add_model_arguments(self, parser: argparse.ArgumentParser) -> None:
        from anyphone.models.presets import add_model_arguments

        add_model_arguments(parser)

    def model_flags_given(self, args: argparse.Namespace) -> bool:
        from anyphone.models.presets import model_flag_dests

        return getattr(args, "model_size", None) is not None or any(
            getattr(args, dest, None) is not None for dest in model_flag_dests())

    def config_from_args(self, args: argparse.Namespace, vocab_size: int | None = None) -> ZipformerConfig:
        from anyphone.models.presets import config_from_args

        cfg = config_from_args(args)
        return cfg.replace(vocab_size=vocab_size) if vocab_size is not None else cfg

    def config_for_weights(self, args: argparse.Namespace, state_dict: Mapping[str, Any]) -> ZipformerConfig:
        return self.config_from_args(args).replace(**self.head_sizes(state_dict))

    def published_size(self, state_dict: Mapping[str, Any]) -> str | None:
        """ZIPA's releases by their subsampling output width (``encoder_embed.out.weight`` rows): 192 small,
        512 large; any other width is a custom configuration (None)."""
        w = state_dict.get("encoder_embed.out.weight")
        return {192: "small", 512: "large"}.get(int(w.shape[0])) if w is not None else None

    def head_sizes(self, state_dict: Mapping[str, Any]) -> dict[str, int]:
        """The output-side sizes of a state_dict, as ZipformerConfig fields."""
        return {"vocab_size": self.vocab_size_of(state_dict)}

    def options_of(self, state_dict: Mapping[str, Any]) -> dict[str, Any]:
        """Build options read off the keys."""
        return {}

    def config_from_state_dict(self, state_dict: Mapping[str, Any], config: Any = None
                               ) -> tuple[ZipformerConfig, dict[str, Any]]:
        options = self.options_of(state_dict)
        cfg = zipformer_config_from_state_dict(state_dict, self.head_sizes(state_dict),
                                               lambda c: self.build(c, **options), config)
        return cfg, options


def encode(encoder_embed: nn.Module, encoder: nn.Module, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
    """The Zipformer encoder as the ONNX graphs compute it: (N, T, 80) fbank -> (N, T', C), lengths."""
    import torch

    x, lens = encoder_embed(x, x_lens)
    mask = torch.arange(x.shape[1], device=lens.device).unsqueeze(0) >= lens.unsqueeze(1)  # True at padding
    out, out_lens = encoder(x.permute(1, 0, 2), lens, mask)
    return out.permute(1, 0, 2), out_lens
