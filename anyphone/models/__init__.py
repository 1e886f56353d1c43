"""Zipformer models (pure PyTorch, ZIPA-checkpoint compatible).

Main entry points: :class:`CtcModel`, :func:`build_encoder`, :class:`ZipformerConfig` /
:func:`get_preset`, and :func:`set_batch_count` for training schedules.
"""

from .ctc import CtcModel, build_encoder, count_parameters, forward_encoder
from .presets import PRESETS, ZipformerConfig, add_model_arguments, config_from_args, get_preset
from .scaling import set_batch_count
from .transducer import Decoder, Joiner, TransducerModel
from .zipformer import Zipformer2, make_pad_mask

__all__ = [
    "PRESETS",
    "CtcModel",
    "Decoder",
    "Joiner",
    "TransducerModel",
    "Zipformer2",
    "ZipformerConfig",
    "add_model_arguments",
    "build_encoder",
    "config_from_args",
    "count_parameters",
    "forward_encoder",
    "get_preset",
    "make_pad_mask",
    "set_batch_count",
]
