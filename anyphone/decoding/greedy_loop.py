"""The one batched greedy transducer search, for PyTorch models and ONNX Runtime sessions alike (no torch here).

The search sees the network only through two callables, so that each backend gives a small adapter
(:func:`anyphone.decoding.transducer.torch_steps` for a PyTorch model, the sessions of
:class:`anyphone.inference.onnx_runtime.OnnxTransducerRecognizer`):

* ``decoder(contexts)``: int64 numpy array (E, context_size) of token contexts -> projected decoder output (E, J);
* ``joiner(enc, dec)``: projected encoder frames (A, J) and decoder outputs (A, J) -> logits (A, V) as a numpy
  array.

``encoder_out`` (N, T, J) and the decoder outputs stay in the backend's own arrays (numpy arrays or torch tensors
on any device): the loop only indexes them, ``x[rows, t]``, ``x[rows]`` and ``x[rows] = y`` with ``rows`` a list
of ints, which both kinds of array do.  The logits come back to numpy, where the search takes its decisions.

Semantics (ZIPA's ``greedy_search_batch`` for ``max_sym_per_frame=1``): every hypothesis starts from the context
``[-1] * (context_size - 1) + [blank]``; at frame t each hypothesis with ``t < lens[n]`` takes the argmax of its
(adjusted) logits; a non-blank token is emitted and becomes the newest context entry.  With ``max_sym_per_frame
> 1`` the frame is scored again after each emission, until blank or the limit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = ["GreedyOutput", "TransducerHypothesis", "greedy_transducer_search", "transducer_lengths"]

_WHERE = "greedy transducer search"


class TransducerHypothesis(NamedTuple):
    tokens: list[int]
    timestamps: list[int]  # encoder frame index of each token (25 Hz for ZIPA transducers)
    score: float  # log-probability (beam search) or sum of chosen-token log-probs (greedy)


class GreedyOutput(NamedTuple):
    hyps: list[TransducerHypothesis]
    # with keep_log_probs: (N, T, V) float32, each frame's log-softmax of the adjusted logits on the decoded path
    # (the frame's first step), -inf at frames t >= lens[n]; else None
    log_probs: np.ndarray | None


def transducer_lengths(shape: Sequence[int], lens: Sequence[int], where: str = _WHERE) -> list[int]:
    """``lens`` as ints, checked against an encoder output of ``shape`` (N, T, J); ValueError naming ``where``."""
    if len(shape) != 3:
        raise ValueError(f"{where}: encoder_out must be (N, T, C), got {tuple(shape)}")
    out = [int(v) for v in lens]
    if len(out) != shape[0] or any(not 0 <= v <= shape[1] for v in out):
        raise ValueError(f"{where}: encoder_out_lens {out} do not fit encoder_out {tuple(shape)}")
    return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    shifted = x - m
    with np.errstate(divide="ignore"):
        return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def greedy_transducer_search(
    decoder: Callable[[np.ndarray], Any],
    joiner: Callable[[Any, Any], Any],
    encoder_out: Any,
    lens: Sequence[int],
    *,
    blank_id: int,
    context_size: int,
    max_sym_per_frame: int = 1,
    blank_penalty: float = 0.0,
    adjust: np.ndarray | None = None,
    unk_id: int | None = None,
    next_state: np.ndarray | None = None,
    keep_log_probs: bool = False,
) -> GreedyOutput:
    """Batched greedy search over projected encoder output (N, T, J) with valid lengths (N,).

    Args:
        decoder, joiner: the backend's steps (module docstring).
        max_sym_per_frame: symbols one frame may emit (>= 1).
        blank_penalty: subtracted from the blank's logit (> 0 emits more tokens).
        adjust: (V,) added to every step's logits (a prior; -inf forbids a token), after ``blank_penalty``.
        unk_id: a token that is never emitted (a step choosing it counts as blank); None: only blank.
        next_state: (S, V) int automaton over the emitted tokens, starting in state 0: a hypothesis in state s
            may emit v only where ``next_state[s, v] >= 0`` (then moves there); blank is always allowed.
        keep_log_probs: also return each frame's log-probabilities (:class:`GreedyOutput`).
    Returns:
        :class:`GreedyOutput`: per utterance the tokens, their frames and the summed log-probability of every
        choice (blanks included) under the adjusted logits.
    """
    if max_sym_per_frame < 1:
        raise ValueError(f"{_WHERE}: max_sym_per_frame={max_sym_per_frame}, expected >= 1")
    if context_size < 1:
        raise ValueError(f"{_WHERE}: context_size={context_size}, expected >= 1")
    lens = transducer_lengths(tuple(encoder_out.shape), lens)
    n, t_max = len(lens), int(encoder_out.shape[1])
    hist = [[-1] * (context_size - 1) + [blank_id] for _ in range(n)]
    stamps: list[list[int]] = [[] for _ in range(n)]
    scores = np.zeros(n, dtype=np.float64)
    state = np.zeros(n, dtype=np.int64)
    kept: np.ndarray | None = None
    if n == 0:
        return GreedyOutput([], np.zeros((0, t_max, 0), np.float32) if keep_log_probs else None)
    dec = decoder(np.array(hist, dtype=np.int64))  # (N, J)
    for t in range(max(lens)):
        active = [i for i in range(n) if lens[i] > t]
        for step in range(max_sym_per_frame):
            logits = np.array(joiner(encoder_out[active, t], dec[active]), dtype=np.float32)  # (A, V), a copy
            if blank_penalty:
                logits[:, blank_id] -= blank_penalty
            if adjust is not None:
                logits += adjust
            if next_state is not None:
                ok = next_state[state[active]] >= 0
                ok[:, blank_id] = True
                logits[~ok] = -np.inf
            lp = _log_softmax(logits)
            if kept is None and keep_log_probs:
                kept = np.full((n, t_max, logits.shape[1]), -np.inf, dtype=np.float32)
            if keep_log_probs and step == 0:
                kept[active, t] = lp
            best = logits.argmax(axis=-1)  # on the logits, not lp: no ties made by rounding in the log-softmax
            scores[active] += lp[np.arange(len(active)), best]
            emitted = []
            for i, v in zip(active, best.tolist()):
                if v == blank_id or v == unk_id:
                    continue
                hist[i].append(v)
                stamps[i].append(t)
                emitted.append(i)
                if next_state is not None:
                    state[i] = next_state[state[i], v]
            if not emitted:
                break
            dec[emitted] = decoder(np.array([hist[i][-context_size:] for i in emitted], dtype=np.int64))
            active = emitted
    if keep_log_probs and kept is None:  # every length 0: the vocabulary size is not known without a step
        kept = np.zeros((n, t_max, 0), dtype=np.float32)
    hyps = [TransducerHypothesis(hist[i][context_size:], stamps[i], float(scores[i])) for i in range(n)]
    return GreedyOutput(hyps, kept)
