"""What a recognition returns: tokens with their frames, phones with their times, and the Allosaurus-style text
(see :mod:`anyphone.inference.api` for the output conventions)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["PhoneSegment", "RecognitionResult", "TokenFrame"]


@dataclass
class TokenFrame:
    """One emitted model token: ``start``/``duration`` in seconds, ``prob`` its posterior at ``start``,
    ``candidates`` the top-k (token, prob) of that frame (best first; filled when topk > 1)."""

    start: float
    duration: float
    token: str
    prob: float
    candidates: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class PhoneSegment:
    """One phone (one or more tokens): ``start``, ``duration`` in seconds and the tokens' mean posterior."""

    start: float
    duration: float
    phone: str
    prob: float

    @property
    def end(self) -> float:
        return round(self.start + self.duration, 6)


@dataclass
class RecognitionResult:
    """Everything one recognition produced; ``str(result)`` gives the Allosaurus-style text.

    posteriors: (T, V) float32 frame probabilities (only with ``keep_posteriors=True``), frame ``t`` at time
    ``t * frame_shift``; for transducers they are the joiner's distributions along the greedy path.
    """

    phones: list[str]
    segments: list[PhoneSegment]
    tokens: list[TokenFrame]
    duration: float
    frame_shift: float
    topk: int = 1
    timestamp: bool = False
    silent: bool = False
    notes: list[str] = field(default_factory=list)
    posteriors: np.ndarray | None = None
    id2token: list[str] | None = None
    blank_id: int = 0
    source: str | None = None

    @property
    def text(self) -> str:
        """Phones separated by spaces: ``'æ l u s ɔ ɹ s'``."""
        return " ".join(self.phones)

    def format(self, topk: int | None = None, timestamp: bool | None = None) -> str:
        """Allosaurus-style output text (see :mod:`anyphone.inference.api`)."""
        k = self.topk if topk is None else topk
        ts = self.timestamp if timestamp is None else timestamp
        if k > 1 and any(len(t.candidates) < min(k, 2) for t in self.tokens):
            raise ValueError(f"format(topk={k}): this result was computed with topk={self.topk}")
        if k <= 1:
            if not ts:
                return self.text
            return "\n".join(f"{s.start:.3f} {s.end:.3f} {s.phone}" for s in self.segments)
        frames = [" ".join(f"{tok} ({p:.3f})" for tok, p in t.candidates[:k]) for t in self.tokens]
        if not ts:
            return " | ".join(frames)
        return "\n".join(f"{t.start:.3f} {t.duration:.3f} {f}" for t, f in zip(self.tokens, frames))

    def __str__(self) -> str:
        return self.format()
