"""CTC decoding: greedy search, prefix beam search and Allosaurus-style output controls.

All functions take frame-level log-posteriors ``log_probs`` of shape (N, T, V) (the output of
``model.ctc_output``) and the number of valid frames per utterance ``lens`` of shape (N,).
Frames at or beyond ``lens[n]`` are padding and are never read.

Token ids follow the project vocabulary (``<blk>`` = 0, ``<sos/eos>`` = 1, ``<unk>`` = 2, ...).
Only the blank id is special here: every other id, ``<unk>`` included, is an ordinary output token.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple, overload

import numpy as np
import torch

__all__ = [
    "CtcHypothesis",
    "TopkFrame",
    "apply_blank_scale",
    "apply_prior",
    "ctc_greedy_search",
    "ctc_prefix_beam_search",
    "ctc_sequence_log_prob",
    "ctc_topk_frames",
]

_NEG_INF = float("-inf")


class CtcHypothesis(NamedTuple):
    """One greedy hypothesis with per-token alignment details.

    tokens: the decoded token ids.
    timestamps: for each token, the index (in encoder frames) of the first frame of its run.
    probs: for each token, its posterior probability at that frame (``exp(log_probs[t, token])``).
    """

    tokens: list[int]
    timestamps: list[int]
    probs: list[float]


class TopkFrame(NamedTuple):
    """Top-k candidates at one emitting frame: ``candidates`` is [(token_id, prob), ...], best first."""

    frame: int
    candidates: list[tuple[int, float]]


def _check_inputs(log_probs: torch.Tensor, lens: torch.Tensor | Sequence[int]) -> list[int]:
    """Validate shapes and return the valid lengths as Python ints."""
    if log_probs.dim() != 3:
        raise ValueError(f"ctc decoding: log_probs has shape {tuple(log_probs.shape)}, expected (N, T, V)")
    lens_list = [int(x) for x in (lens.tolist() if isinstance(lens, torch.Tensor) else lens)]
    n, t, _ = log_probs.shape
    if len(lens_list) != n:
        raise ValueError(f"ctc decoding: lens has {len(lens_list)} entries, expected N={n} (one per utterance)")
    for i, length in enumerate(lens_list):
        if not 0 <= length <= t:
            raise ValueError(f"ctc decoding: lens[{i}]={length} is outside [0, T={t}]")
    return lens_list


@overload
def ctc_greedy_search(
    log_probs: torch.Tensor,
    lens: torch.Tensor | Sequence[int],
    blank_id: int = 0,
    *,
    return_timestamps: Literal[False] = False,
) -> list[list[int]]: ...


@overload
def ctc_greedy_search(
    log_probs: torch.Tensor,
    lens: torch.Tensor | Sequence[int],
    blank_id: int = 0,
    *,
    return_timestamps: Literal[True],
) -> list[CtcHypothesis]: ...


def ctc_greedy_search(
    log_probs: torch.Tensor,
    lens: torch.Tensor | Sequence[int],
    blank_id: int = 0,
    *,
    return_timestamps: bool = False,
) -> list[list[int]] | list[CtcHypothesis]:
    """Best-path CTC decoding with icefall's semantics.

    For each utterance: argmax over the vocabulary on the valid frames ``[0, lens[n])``, merge runs of
    identical consecutive ids, then drop ``blank_id``. Ties in the argmax go to the lowest id (torch's
    ``argmax`` rule), so results match icefall's ``ctc_greedy_search`` exactly.

    Args:
      log_probs: (N, T, V) log-posteriors (any monotonic scores work).
      lens: (N,) number of valid frames per utterance.
      blank_id: id of the CTC blank.
      return_timestamps: if True, return :class:`CtcHypothesis` objects holding, for each token, the
        first frame of its run and its posterior at that frame.

    Returns:
      N lists of token ids, or N :class:`CtcHypothesis` if ``return_timestamps``.
    """
    lens_list = _check_inputs(log_probs, lens)
    best = log_probs.argmax(dim=-1)  # (N, T)
    results: list = []
    for n, length in enumerate(lens_list):
        ids = best[n, :length]
        if length == 0:
            results.append(CtcHypothesis([], [], []) if return_timestamps else [])
            continue
        # A frame starts a new run when its id differs from the previous frame's id.
        starts = torch.ones(length, dtype=torch.bool, device=ids.device)
        starts[1:] = ids[1:] != ids[:-1]
        keep = starts & (ids != blank_id)
        frames = keep.nonzero(as_tuple=True)[0]
        tokens = ids[frames].tolist()
        if not return_timestamps:
            results.append(tokens)
            continue
        post = log_probs[n, frames, ids[frames]].double().exp().tolist()
        results.append(CtcHypothesis(tokens, frames.tolist(), post))
    return results


def _logaddexp(a: float, b: float) -> float:
    if a == _NEG_INF:
        return b
    if b == _NEG_INF:
        return a
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


def _prefix_beam_one(
    frames: np.ndarray, beam: int, blank_id: int, token_prune: int | None
) -> list[tuple[tuple[int, ...], float]]:
    """Prefix beam search over one utterance; ``frames`` is a (T, V) float64 array of log-probs.

    Each prefix keeps two log-scores: paths ending in blank (pb) and paths ending in its last token
    (pnb). The distinction is what lets "a a" (with a blank between) differ from a repeated "a".

    Extensions are scored for all (prefix, token) pairs at once with numpy. Only the extensions that
    land on a prefix already in the beam need merging; every other extension is a new prefix whose score
    is final, so keeping the best ``beam`` of those is enough for the result to equal a full search.
    """
    vocab = frames.shape[1] if frames.ndim == 2 else 0
    # Start: the empty prefix, reached by "ending in blank" with probability 1.
    prefixes: list[tuple[int, ...]] = [()]
    pb = np.array([0.0])
    pnb = np.array([_NEG_INF])
    prune = token_prune is not None and token_prune < vocab - 1
    for lp in frames:
        total = np.logaddexp(pb, pnb)
        k = len(prefixes)
        last = np.array([p[-1] if p else -1 for p in prefixes], dtype=np.int64)
        has_last = last >= 0
        # Staying on a prefix: emit blank, or repeat its last token without a blank in between.
        stay_pb = total + lp[blank_id]
        stay_pnb = np.full(k, _NEG_INF)
        stay_pnb[has_last] = pnb[has_last] + lp[last[has_last]]
        # Extending prefix b with token c: a copy of the last token needs a blank in between (pb only).
        ext = total[:, None] + lp[None, :]
        rows = np.nonzero(has_last)[0]
        ext[rows, last[rows]] = pb[rows] + lp[last[rows]]
        ext[:, blank_id] = _NEG_INF
        if prune:
            allowed = np.argsort(np.where(np.arange(vocab) == blank_id, _NEG_INF, lp))[::-1][:token_prune]
            mask = np.full(vocab, _NEG_INF)
            mask[allowed] = 0.0
            ext = ext + mask[None, :]
        # Extensions that equal a prefix already in the beam merge into its pnb.
        index = {p: i for i, p in enumerate(prefixes)}
        for j, p in enumerate(prefixes):
            if p:
                parent = index.get(p[:-1])
                if parent is not None:
                    stay_pnb[j] = np.logaddexp(stay_pnb[j], ext[parent, p[-1]])
                    ext[parent, p[-1]] = _NEG_INF
        cand_prefixes = list(prefixes)
        cand_pb = list(stay_pb)
        cand_pnb = list(stay_pnb)
        flat = ext.ravel()
        n_new = min(beam, flat.size)
        if n_new:
            top = np.argpartition(-flat, n_new - 1)[:n_new] if n_new < flat.size else np.arange(flat.size)
            for cell in top.tolist():
                score = flat[cell]
                if score == _NEG_INF:
                    continue
                b, c = divmod(cell, vocab)
                cand_prefixes.append(prefixes[b] + (c,))
                cand_pb.append(_NEG_INF)
                cand_pnb.append(score)
        cpb = np.array(cand_pb)
        cpnb = np.array(cand_pnb)
        ctot = np.logaddexp(cpb, cpnb)
        # Prefixes that no path can reach (e.g. "a a" after one frame) score -inf: drop them.
        order = [i for i in np.argsort(-ctot, kind="stable").tolist() if ctot[i] != _NEG_INF][:beam]
        prefixes = [cand_prefixes[i] for i in order]
        pb = cpb[order]
        pnb = cpnb[order]
    final = [(p, float(np.logaddexp(a, b))) for p, a, b in zip(prefixes, pb, pnb)]
    final.sort(key=lambda x: x[1], reverse=True)
    return final or [((), _NEG_INF)]  # every path impossible (all -inf input): empty hypothesis


@overload
def ctc_prefix_beam_search(
    log_probs: torch.Tensor,
    lens: torch.Tensor | Sequence[int],
    beam: int = 4,
    blank_id: int = 0,
    *,
    token_prune: int | None = None,
    return_nbest: Literal[False] = False,
) -> list[list[int]]: ...


@overload
def ctc_prefix_beam_search(
    log_probs: torch.Tensor,
    lens: torch.Tensor | Sequence[int],
    beam: int = 4,
    blank_id: int = 0,
    *,
    token_prune: int | None = None,
    return_nbest: Literal[True],
) -> list[list[tuple[list[int], float]]]: ...


def ctc_prefix_beam_search(
    log_probs: torch.Tensor,
    lens: torch.Tensor | Sequence[int],
    beam: int = 4,
    blank_id: int = 0,
    *,
    token_prune: int | None = None,
    return_nbest: bool = False,
) -> list[list[int]] | list[list[tuple[list[int], float]]]:
    """CTC prefix beam search in log space (no language model).

    The score of a prefix is the log of the summed probability of every alignment that collapses to
    it, so with a beam at least as large as the number of distinct prefixes the search is exact.

    Args:
      log_probs: (N, T, V) log-posteriors.
      lens: (N,) number of valid frames per utterance.
      beam: number of prefixes kept after each frame.
      blank_id: id of the CTC blank.
      token_prune: if set, only the ``token_prune`` best non-blank tokens of each frame may extend a
        prefix (a speed-up; ``None`` considers all V-1 tokens).
      return_nbest: if True, return for each utterance up to ``beam`` (tokens, log_prob) pairs, best first.

    Returns:
      N token-id lists (the best prefix), or N n-best lists of (tokens, log_prob).
    """
    if beam < 1:
        raise ValueError(f"ctc_prefix_beam_search: beam={beam}, expected an integer >= 1")
    lens_list = _check_inputs(log_probs, lens)
    lp_all = log_probs.detach().to("cpu", torch.float64)
    out: list = []
    for n, length in enumerate(lens_list):
        frames = lp_all[n, :length].numpy()
        nbest = _prefix_beam_one(frames, beam, blank_id, token_prune)
        if return_nbest:
            out.append([(list(p), s) for p, s in nbest])
        else:
            out.append(list(nbest[0][0]))
    return out


def ctc_sequence_log_prob(log_probs: torch.Tensor, tokens: Sequence[int], blank_id: int = 0) -> float:
    """Log of the total CTC probability of ``tokens`` given one utterance's (T, V) log-probs.

    Uses the CTC forward algorithm over the blank-interleaved label sequence. Returns -inf when the
    sequence cannot be aligned to T frames.
    """
    if log_probs.dim() != 2:
        raise ValueError(f"ctc_sequence_log_prob: log_probs has shape {tuple(log_probs.shape)}, expected (T, V)")
    lp = log_probs.detach().to("cpu", torch.float64).tolist()
    ext = [blank_id]
    for tok in tokens:
        ext += [tok, blank_id]
    s = len(ext)
    if not lp:
        return 0.0 if not tokens else _NEG_INF
    alpha = [_NEG_INF] * s
    alpha[0] = lp[0][ext[0]]
    if s > 1:
        alpha[1] = lp[0][ext[1]]
    for frame in lp[1:]:
        new = [_NEG_INF] * s
        for i in range(s):
            acc = alpha[i]
            if i >= 1:
                acc = _logaddexp(acc, alpha[i - 1])
            # Skipping a blank is allowed only between two different labels.
            if i >= 2 and ext[i] != blank_id and ext[i] != ext[i - 2]:
                acc = _logaddexp(acc, alpha[i - 2])
            new[i] = acc + frame[ext[i]] if acc != _NEG_INF else _NEG_INF
        alpha = new
    return _logaddexp(alpha[-1], alpha[-2]) if s > 1 else alpha[-1]


def ctc_topk_frames(
    log_probs: torch.Tensor,
    lens: torch.Tensor | Sequence[int],
    k: int,
    blank_id: int = 0,
    *,
    include_blank: bool = False,
) -> list[list[TopkFrame]]:
    """Allosaurus-style ``--topk`` output: the k best tokens at each emitting frame.

    The emitting frames are exactly the frames :func:`ctc_greedy_search` reports as timestamps (first
    frame of each non-blank run), so the top-1 candidates spell the greedy hypothesis. Probabilities are
    the frame posteriors ``softmax(log_probs[t])`` over the full vocabulary; the blank is left out of the
    candidate list unless ``include_blank``.

    Returns:
      For each utterance, one :class:`TopkFrame` per emitting frame.
    """
    if k < 1:
        raise ValueError(f"ctc_topk_frames: k={k}, expected an integer >= 1")
    hyps = ctc_greedy_search(log_probs, lens, blank_id, return_timestamps=True)
    out: list[list[TopkFrame]] = []
    for n, hyp in enumerate(hyps):
        frames: list[TopkFrame] = []
        if hyp.timestamps:
            idx = torch.tensor(hyp.timestamps, dtype=torch.long)
            probs = log_probs[n, idx].detach().double().softmax(dim=-1)  # (E, V)
            if not include_blank:
                probs[:, blank_id] = -1.0  # sorts last, then dropped below
            kk = min(k, probs.shape[-1] - (0 if include_blank else 1))
            top_p, top_i = probs.topk(kk, dim=-1)
            for e, t in enumerate(hyp.timestamps):
                frames.append(TopkFrame(t, [(int(i), float(p)) for i, p in zip(top_i[e], top_p[e])]))
        out.append(frames)
    return out


def apply_blank_scale(log_probs: torch.Tensor, emit: float, blank_id: int = 0) -> torch.Tensor:
    """Allosaurus ``--emit``: shift the balance between blank and phones.

    The blank probability of every frame is divided by ``emit`` and the frame is renormalised:
    ``log_probs[..., blank] -= log(emit)``, then log-softmax. ``emit > 1`` makes blank less likely, so
    more phones are emitted; ``emit < 1`` gives fewer phones; ``emit == 1`` changes nothing. (Allosaurus
    divides the raw blank logit by ``emit``; log-probs carry no absolute logit offset, so the probability
    ratio is the shift-invariant equivalent.) Ratios between non-blank tokens are unchanged.

    Args:
      log_probs: (..., V) log-posteriors.
      emit: positive scale.

    Returns:
      A new tensor of the same shape with normalised log-probs.
    """
    if not emit > 0:
        raise ValueError(f"apply_blank_scale: emit={emit}, expected a positive number")
    return apply_blank_penalty(log_probs, math.log(emit), blank_id)


def apply_blank_penalty(log_probs: torch.Tensor, penalty: float, blank_id: int = 0) -> torch.Tensor:
    """icefall's ``--blank-penalty``: ``log_probs[..., blank] -= penalty``, then log-softmax (a new tensor).

    The log-domain form of :func:`apply_blank_scale` (``penalty = log(emit)``); > 0 emits more phones.
    """
    if not math.isfinite(penalty):
        raise ValueError(f"apply_blank_penalty: penalty={penalty}, expected a finite number")
    if penalty == 0.0:
        return log_probs.clone()
    out = log_probs.clone()
    out[..., blank_id] -= penalty
    return out.log_softmax(dim=-1)


def apply_prior(
    log_probs: torch.Tensor, prior: Mapping[int, float], *, renormalize: bool = True
) -> torch.Tensor:
    """Add per-token log-prior adjustments (Allosaurus ``--prior``).

    ``prior[token_id]`` is added to ``log_probs[..., token_id]``; positive values make the token more
    likely, negative values less likely; tokens absent from ``prior`` are unchanged. With ``renormalize``
    the frames are log-softmax normalised again (same argmax as without).

    Args:
      log_probs: (..., V) log-posteriors.
      prior: token id -> additive log-score.

    Returns:
      A new tensor of the same shape.
    """
    vocab = log_probs.shape[-1]
    bias = torch.zeros(vocab, dtype=log_probs.dtype, device=log_probs.device)
    for tok, value in prior.items():
        if not 0 <= int(tok) < vocab:
            raise ValueError(f"apply_prior: token id {tok} is outside the vocabulary [0, {vocab})")
        bias[int(tok)] = float(value)
    out = log_probs + bias
    return out.log_softmax(dim=-1) if renormalize else out
