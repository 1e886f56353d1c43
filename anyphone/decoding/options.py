"""Decode options shared by the recipes' decode.py, ``anyphone recognize`` and the Python API.

One knob moves the balance between blank and phones. icefall calls it ``--blank-penalty`` (subtracted from the
blank's log-probability, CTC, or logit, transducer, before the search), Allosaurus ``--emit`` (the blank
probability is divided by it). They are the same knob::

    emit = exp(blank_penalty)        blank_penalty = log(emit)

so ``--blank-penalty 0.5`` decodes as ``--emit 1.65``; 0 (emit 1) changes nothing, > 0 (emit > 1) emits more
phones. :class:`DecodeOptions` stores the penalty; ``emit`` is its other face. ``decode.py
--save-decode-options 1`` records the options it decoded with in the exp dir's ``config.json``, and
``anyphone recognize -m EXP`` / ``load_model(EXP)`` use them unless told otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = ["DecodeOptions"]


@dataclass(frozen=True)
class DecodeOptions:
    """How to search (lhotse-style config: ``to_dict`` / ``from_dict``).

    method: ``ctc-greedy-search`` | ``ctc-prefix-beam-search`` (CR-CTC), ``greedy_search`` |
        ``modified_beam_search`` (transducer); None: the family's greedy search.
    beam_size: hypotheses kept by the beam searches.
    blank_penalty: subtracted from the blank's log-score before the search (see the module docstring).
    max_sym_per_frame: symbols a transducer's greedy search may emit per frame.
    """

    method: str | None = None
    beam_size: int = 4
    blank_penalty: float = 0.0
    max_sym_per_frame: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.blank_penalty, (int, float)) or not math.isfinite(self.blank_penalty):
            raise ValueError(f"blank_penalty={self.blank_penalty!r}, expected a finite number")
        if int(self.beam_size) != self.beam_size or self.beam_size < 1:
            raise ValueError(f"beam_size={self.beam_size!r}, expected an integer >= 1")
        if int(self.max_sym_per_frame) != self.max_sym_per_frame or self.max_sym_per_frame < 1:
            raise ValueError(f"max_sym_per_frame={self.max_sym_per_frame!r}, expected an integer >= 1")
        if self.method is not None and not isinstance(self.method, str):
            raise ValueError(f"method={self.method!r}, expected a decoding method name or None")

    @property
    def emit(self) -> float:
        """Allosaurus's name for the same knob: ``exp(blank_penalty)``."""
        return math.exp(self.blank_penalty)

    def with_emit(self, emit: float) -> DecodeOptions:
        """These options with ``blank_penalty = log(emit)`` (``emit`` > 0)."""
        if not (isinstance(emit, (int, float)) and emit > 0 and math.isfinite(emit)):
            raise ValueError(f"emit={emit}, expected a positive number (1.0 = unchanged)")
        return replace(self, blank_penalty=math.log(emit))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "decode options") -> DecodeOptions:
        """Options from a dict (``config.json``'s ``decode`` entry); unknown keys or bad values raise
        ValueError naming ``where``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected an object with {[f.name for f in fields(cls)]}, "  # noqa: TRY004
                             f"got {type(data).__name__}")  # (bad data in a file, like a bad value)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown decode option(s) {unknown}; expected some of {sorted(known)}")
        try:
            return cls(**dict(data))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None
