"""Decoding and scoring: pure functions over tensors and strings (the ground layer; no weights, no model
loading). The model families (:mod:`anyphone.families`) run these searches; the decode run behind decode.py is
:mod:`anyphone.evaluation.run`.

- :mod:`anyphone.decoding.ctc`: CTC greedy / prefix beam search, top-k frames, emit and prior controls (torch).
- :mod:`anyphone.decoding.transducer`: transducer greedy and modified beam search (torch).
- :mod:`anyphone.decoding.scoring`: PER, PFER and icefall-style recogs/errs/summary files (pure Python).

Names are loaded lazily so that importing the scoring helpers never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ctc": (
        "CtcHypothesis",
        "TopkFrame",
        "apply_blank_scale",
        "apply_prior",
        "ctc_greedy_search",
        "ctc_prefix_beam_search",
        "ctc_sequence_log_prob",
        "ctc_topk_frames",
    ),
    "scoring": (
        "ErrorStats",
        "ScoreReport",
        "align_phones",
        "compute_per",
        "compute_pfer",
        "phone_feature_edit_distance",
        "score_results",
        "text_to_phones",
        "utterance_stats",
        "write_errs",
        "write_language_table",
        "write_recogs",
        "write_summary",
    ),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'anyphone.decoding' has no attribute {name!r}")
    return getattr(importlib.import_module(f"anyphone.decoding.{module}"), name)
