"""The training loop's *task* is a model family (:mod:`anyphone.families`); these are the older names of it.

The loop (:mod:`anyphone.training.loop`) calls ``task.name``, ``task.output_downsampling_factor``,
``task.build_model(args, tokenizer)``, ``task.compute_loss(model, batch, args, batch_idx_train, is_training)`` and
``task.greedy_decode(model, batch)``: the :class:`anyphone.families.base.ModelFamily` interface.
"""

from __future__ import annotations

from anyphone.families import UnknownFamilyError, get_family
from anyphone.families.base import ModelFamily
from anyphone.families.crctc import CrCtcFamily as CrCtcTask
from anyphone.families.transducer import TransducerFamily as TransducerTask

__all__ = ["CrCtcTask", "TransducerTask", "get_task"]


def get_task(name: str) -> ModelFamily:
    """:func:`anyphone.families.get_family`, with an unknown name ending the program in one line."""
    try:
        return get_family(name)
    except UnknownFamilyError as e:
        raise SystemExit(str(e)) from None
