"""CTC forced alignment: the best path of a known token sequence, and phone intervals from it.

Everything here works on numpy arrays of frame log-posteriors ``log_probs`` of shape (T, V) (one utterance;
the output of the model's CTC head after log-softmax) and needs no torch.

* :func:`ctc_viterbi` -- Viterbi over the CTC topology: the label sequence with a blank before, between and
  after the labels (``S = 2L + 1`` states); a state may stay, step to the next state, or skip the blank between
  two different labels. Returns, for every frame, the index of the label it is aligned to (-1 for blank).
* :func:`ctc_viterbi_windowed` -- the same for long recordings, in windows of bounded memory.
* :func:`phone_frame_spans` -- per phone (a group of consecutive labels), its first and last aligned frames.
* :func:`share_blanks` -- turns those frame spans into start/end times (the rule is documented there).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

__all__ = [
    "DEFAULT_MAX_SHARE",
    "DEFAULT_SPLIT",
    "AlignmentError",
    "ctc_viterbi",
    "ctc_viterbi_windowed",
    "min_frames",
    "phone_frame_spans",
    "share_blanks",
]

_NEG = -np.inf
# Blank-sharing defaults (see share_blanks), chosen on the dev alignment set (local/align_eval.py, RESULTS.md): a
# CTC spike marks where a phone starts, so the blank frames after it belong to it (split 1: median error 21 ms
# against 36 ms with 0.5).
DEFAULT_SPLIT = 1.0
DEFAULT_MAX_SHARE = 0.1


class AlignmentError(ValueError):
    """The transcript cannot be aligned to the audio (one-line message)."""


def min_frames(tokens: Sequence[int]) -> int:
    """Fewest frames a CTC path for ``tokens`` needs: one per token plus a blank between equal neighbours."""
    return len(tokens) + sum(1 for a, b in itertools.pairwise(tokens) if a == b)


def ctc_viterbi(log_probs: np.ndarray, tokens: Sequence[int], blank: int = 0, *, free_end: bool = False,
                start_blank: bool = False) -> tuple[np.ndarray, float]:
    """Best CTC path of ``tokens`` through ``log_probs``.

    Args:
        log_probs: (T, V) frame log-posteriors.
        tokens: (L,) label ids (no blanks).
        blank: the blank id.
        free_end: the path may end in any state (a window of a longer recording: the labels after the last
            one it reaches belong to later frames). Otherwise it must end on the last label or the final blank.
        start_blank: the path must start in the leading blank (used between windows when the next label equals
            the previous window's last one, so that the two are not merged).
    Returns:
        (path, score): path (T,) int64, for each frame the index into ``tokens`` of its label or -1 for a blank
        frame; score: the path's summed log-probability.
    Raises:
        AlignmentError: no path exists (fewer frames than :func:`min_frames`).
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    t_len = lp.shape[0]
    n_lab = len(tokens)
    s_len = 2 * n_lab + 1
    ext = np.full(s_len, blank, dtype=np.int64)
    ext[1::2] = np.asarray(tokens, dtype=np.int64)
    if t_len == 0:
        if n_lab:
            raise AlignmentError(f"no frames for {n_lab} label(s)")
        return np.zeros(0, dtype=np.int64), 0.0
    # a skip s-2 -> s is allowed into a label that differs from the label two states back
    skip = np.zeros(s_len, dtype=bool)
    if n_lab > 1:
        skip[3::2] = ext[3::2] != ext[1:-2:2]
    alpha = np.full(s_len, _NEG)
    alpha[0] = lp[0, blank]
    if n_lab and not start_blank:
        alpha[1] = lp[0, ext[1]]
    back = np.zeros((t_len, s_len), dtype=np.int8)  # 0 stay, 1 from s-1, 2 from s-2
    cand = np.empty((3, s_len))
    for t in range(1, t_len):
        cand[0] = alpha
        cand[1, 0] = _NEG
        cand[1, 1:] = alpha[:-1]
        cand[2, :2] = _NEG
        cand[2, 2:] = np.where(skip[2:], alpha[:-2], _NEG)
        best = cand.argmax(axis=0)
        back[t] = best
        alpha = cand[best, np.arange(s_len)] + lp[t, ext]
    if free_end:
        end = int(np.argmax(alpha))
    else:
        end = s_len - 1 if n_lab == 0 or alpha[-1] >= alpha[-2] else s_len - 2
    score = float(alpha[end])
    if not np.isfinite(score):
        raise AlignmentError(f"{t_len} frame(s) cannot hold {n_lab} label(s) (at least {min_frames(tokens)} "
                             "needed)")
    states = np.empty(t_len, dtype=np.int64)
    s = end
    for t in range(t_len - 1, -1, -1):
        states[t] = s
        s -= int(back[t, s])
    path = np.where(states % 2 == 1, (states - 1) // 2, -1)
    return path, score


def ctc_viterbi_windowed(log_probs: np.ndarray, tokens: Sequence[int], blank: int = 0, *,
                         window: int = 1500, margin: int = 250) -> np.ndarray:
    """:func:`ctc_viterbi` for long recordings: memory O(window x labels in the window), not O(T x L).

    The first window is aligned with a free end; the labels whose frames end before the last ``margin``
    frames of the window are kept, and the next window starts at the first blank frame after the last kept
    label, with the labels not yet placed. The last window must place all remaining labels. With
    ``T <= window`` this is exactly :func:`ctc_viterbi`.

    Args:
        log_probs: (T, V) frame log-posteriors.
        tokens: (L,) label ids.
        window, margin: in frames (1500 frames = 30 s at 20 ms; 0 < margin < window/2).
    Returns:
        path (T,): label index per frame, -1 for blank.
    """
    if not 0 < margin < window // 2:
        raise ValueError(f"ctc_viterbi_windowed: margin={margin}, expected 0 < margin < window/2 ({window // 2})")
    lp = np.asarray(log_probs)
    t_len = lp.shape[0]
    if t_len <= window:
        return ctc_viterbi(lp, tokens, blank)[0]
    if t_len < min_frames(tokens):
        raise AlignmentError(f"{t_len} frame(s) cannot hold {len(tokens)} label(s) (at least "
                             f"{min_frames(tokens)} needed)")
    out = np.full(t_len, -1, dtype=np.int64)
    f0, pos = 0, 0
    start_blank = False
    while True:
        f1 = min(t_len, f0 + window)
        rest = list(tokens[pos:])
        if f1 == t_len or t_len - f1 < margin:
            f1 = t_len
            # the last window: every remaining label must fit
            path = ctc_viterbi(lp[f0:f1], rest, blank, start_blank=start_blank)[0]
            out[f0:f1] = np.where(path >= 0, path + pos, -1)
            return out
        # a window can place at most one label per frame
        sub = rest[: f1 - f0]
        path = ctc_viterbi(lp[f0:f1], sub, blank, free_end=True, start_blank=start_blank)[0]
        limit = (f1 - f0) - margin
        placed = path[path >= 0]
        keep = -1  # last label index (within sub) to keep
        if placed.size:
            last_frame = {int(k): int(i) for i, k in enumerate(path) if k >= 0}  # label -> its last frame
            for k in sorted(last_frame):
                # a label is kept when it ends before the margin and a blank frame follows it there
                if last_frame[k] < limit - 1 and path[last_frame[k] + 1] == -1:
                    keep = k
        if keep < 0:
            if placed.size and int(np.flatnonzero(path >= 0)[0]) == 0 and (path == path[0]).all():
                raise AlignmentError(f"one label spans a whole {window}-frame window; cannot window this path")
            # nothing to keep: move on over the leading blank frames (at least one frame)
            first = int(np.flatnonzero(path >= 0)[0]) if placed.size else limit
            step = max(1, min(first, limit))
            f0 += step
            start_blank = False
            continue
        cut = last_frame[keep] + 1  # a blank frame: the next window starts there
        out[f0:f0 + cut] = np.where((path[:cut] >= 0), path[:cut] + pos, -1)
        nxt = pos + keep + 1
        start_blank = nxt < len(tokens) and tokens[nxt] == tokens[pos + keep]
        f0 += cut
        pos = nxt


def phone_frame_spans(path: np.ndarray, phone_of_label: Sequence[int], n_phones: int) -> list[tuple[int, int]]:
    """(first frame, last frame + 1) of each phone: the frames from its first label's first frame to its last
    label's last frame (blank frames between labels of one phone included).

    Args:
        path: (T,) label index per frame, -1 for blank (from :func:`ctc_viterbi`).
        phone_of_label: (L,) phone index of each label; non-decreasing.
        n_phones: number of phones.
    """
    first = [-1] * n_phones
    last = [-1] * n_phones
    owner = np.asarray(phone_of_label, dtype=np.int64)
    frames = np.flatnonzero(path >= 0)
    phones = owner[path[frames]]
    for f, p in zip(frames.tolist(), phones.tolist()):
        if first[p] < 0:
            first[p] = f
        last[p] = f
    if any(f < 0 for f in first):
        missing = [i for i, f in enumerate(first) if f < 0]
        raise AlignmentError(f"phone(s) {missing[:5]} got no frame (path and labels disagree)")
    return [(a, b + 1) for a, b in zip(first, last)]


def share_blanks(spans: Sequence[tuple[int, int]], n_frames: int, frame_shift: float, *,
                 split: float = DEFAULT_SPLIT, max_share: float = DEFAULT_MAX_SHARE,
                 offset: float = 0.0) -> list[tuple[float, float]]:
    """Start and end times (s) of each phone from its frame span: the rule that shares out blank frames.

    A CTC model marks a phone with a short spike of its label and fills the rest with blank, so the aligned
    frames of a phone are only its core. The blank frames between the end of phone i's core and the start of
    phone i+1's core (a gap of ``g`` seconds) are shared out: phone i is extended by ``min(split * g,
    max_share)`` and phone i+1 by ``min((1 - split) * g, max_share)``; what remains of a long gap is silence
    (no phone). Before the first phone and after the last one the same rule applies with the recording's edge
    as the neighbour (the first phone gets ``min((1 - split) * g, max_share)`` before it, the last one
    ``min(split * g, max_share)`` after it). A frame ``t`` covers ``[t, t + 1) * frame_shift``; ``offset``
    (s) shifts everything (a window's start).

    Args:
        spans: per phone (first frame, last frame + 1), in order, non-overlapping.
        n_frames: frames in the recording.
        frame_shift: seconds per frame.
        split: share of each gap given to the phone before it (0..1).
        max_share: most seconds a phone is extended by on each side.
    Returns:
        per phone (start, end) in seconds, rounded to 0.1 ms; phones never overlap.
    """
    if not 0.0 <= split <= 1.0:
        raise ValueError(f"share_blanks: split={split}, expected 0 <= split <= 1")
    if not max_share >= 0.0:
        raise ValueError(f"share_blanks: max_share={max_share}, expected >= 0")
    out = []
    n = len(spans)
    for i, (a, b) in enumerate(spans):
        prev_end = spans[i - 1][1] if i > 0 else 0
        next_start = spans[i + 1][0] if i + 1 < n else n_frames
        before = min((1.0 - split) * (a - prev_end) * frame_shift, max_share)
        after = min(split * (next_start - b) * frame_shift, max_share)
        start = offset + a * frame_shift - max(0.0, before)
        end = offset + b * frame_shift + max(0.0, after)
        out.append((round(start, 4), round(end, 4)))
    return out
