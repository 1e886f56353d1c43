"""CTC decoding: greedy search, prefix beam search and Allosaurus-style output controls.

All functions take frame-level log-posteriors ``log_probs`` of shape (N, T, V) (the output of
``model.ctc_output``) and the number of valid frames per utterance ``lens`` of shape (N,).
Frames at or beyond ``lens[n]`` are padding and are never read.

Token ids follow the project vocabulary (``<blk>`` = 0, ``<sos/eos>`` = 1, ``<unk>`` = 2, ...).
Only the blank id is special here: every other id, ``<unk>`` included, is an ordinary output token.

Phone-level language restriction: greedy search, prefix beam search and top-k take ``constraint=``, an
:class:`anyphone.inventory.PhoneConstraint` (a token automaton of an inventory). With it the output is always
made of whole inventory phones: greedy search becomes the best single CTC path whose collapsed output the
automaton accepts (:func:`ctc_constrained_best_path`; without restrictions that is the argmax path), the beam
search extends a prefix only by tokens its automaton state allows and returns only accepted prefixes, and the
top-k candidates of an emitting frame are the tokens allowed at that point of the hypothesis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple, overload

import numpy as np
import torch

__all__ = [
    "ConstrainedPath",
    "CtcHypothesis",
    "TopkFrame",
    "apply_blank_scale",
    "apply_prior",
    "ctc_constrained_best_path",
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


class ConstrainedPath(NamedTuple):
    """The best constrained CTC path of one utterance (:func:`ctc_constrained_best_path`).

    tokens: emitted token ids; frames: first frame of each token's run; runs: frames in each run;
    states: automaton state *before* each token (what was allowed there: ``constraint.allowed(state)``).
    """

    tokens: list[int]
    frames: list[int]
    runs: list[int]
    states: list[int]


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
    constraint: Any = None,
) -> list[list[int]]: ...


@overload
def ctc_greedy_search(
    log_probs: torch.Tensor,
    lens: torch.Tensor | Sequence[int],
    blank_id: int = 0,
    *,
    return_timestamps: Literal[True],
    constraint: Any = None,
) -> list[CtcHypothesis]: ...


def ctc_greedy_search(
    log_probs: torch.Tensor,
    lens: torch.Tensor | Sequence[int],
    blank_id: int = 0,
    *,
    return_timestamps: bool = False,
    constraint: Any = None,
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
      constraint: an :class:`anyphone.inventory.PhoneConstraint`: the best path that spells whole inventory
        phones (:func:`ctc_constrained_best_path`) instead of the frame-wise argmax.

    Returns:
      N lists of token ids, or N :class:`CtcHypothesis` if ``return_timestamps``.
    """
    lens_list = _check_inputs(log_probs, lens)
    if constraint is not None:
        _check_constraint(constraint, log_probs.shape[-1], blank_id)
        lp_all = log_probs.detach().to("cpu", torch.float64)
        out: list = []
        for n, length in enumerate(lens_list):
            path = ctc_constrained_best_path(lp_all[n, :length].numpy(), constraint, blank_id)
            if not return_timestamps:
                out.append(path.tokens)
                continue
            post = [math.exp(float(lp_all[n, f, t])) for t, f in zip(path.tokens, path.frames)]
            out.append(CtcHypothesis(path.tokens, path.frames, post))
        return out
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


def _check_constraint(constraint: Any, vocab: int, blank_id: int) -> None:
    if constraint.next.shape[1] != vocab:
        raise ValueError(f"constraint is for {constraint.next.shape[1]} tokens but log_probs have V={vocab}")
    if constraint.blank_id != blank_id:
        raise ValueError(f"constraint has blank id {constraint.blank_id}, the search uses {blank_id}")


def _constraint_arcs(constraint: Any) -> tuple[np.ndarray, ...]:
    """Arcs (src, dst) of the automaton for the CTC search, sorted by dst, with group starts per dst.

    A token state m (m >= 1) is entered from a predecessor p (``next[p, token_of[m]] == m``) that sits either
    on its own token or on a blank; from p's token only if it differs from m's (the same token on the next
    frame is a repeat, not a new emission)."""
    cached = getattr(constraint, "_ctc_arcs", None)
    if cached is not None:
        return cached
    nxt = constraint.next
    src, dst = np.nonzero(nxt >= 0)
    dst_state = nxt[src, dst].astype(np.int64)
    order = np.argsort(dst_state, kind="stable")
    src, dst_state = src[order].astype(np.int64), dst_state[order]
    same_tok = constraint.token_of[src] == constraint.token_of[dst_state]
    n = constraint.num_states
    starts = np.searchsorted(dst_state, np.arange(1, n))  # every non-root state has at least its parent arc
    arcs = (src, dst_state, same_tok, starts)
    try:
        constraint._ctc_arcs = arcs
    except AttributeError:
        pass
    return arcs


def ctc_constrained_best_path(log_probs: np.ndarray, constraint: Any, blank_id: int = 0) -> ConstrainedPath:
    """The most probable single CTC path whose collapsed output the constraint accepts (Viterbi).

    The search runs over (automaton state, on-token / on-blank) pairs, so the cost per frame is
    O(arcs of the automaton), a few thousand for an inventory. If every frame's best token is allowed where
    the path stands, the result is the plain greedy (argmax) path.

    Args:
        log_probs: (T, V) log-posteriors of one utterance (numpy, or a CPU tensor).
        constraint: :class:`anyphone.inventory.PhoneConstraint` over the same V tokens.
    Returns:
        :class:`ConstrainedPath` (empty when T = 0).
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    t_len = lp.shape[0]
    n = constraint.num_states
    if t_len == 0:
        return ConstrainedPath([], [], [], [])
    src, dst, same_tok, starts = _constraint_arcs(constraint)
    tok_of = constraint.token_of
    tok_ids = np.where(tok_of >= 0, tok_of, blank_id)
    on_tok = np.full(n, _NEG_INF)
    on_blk = np.full(n, _NEG_INF)
    on_blk[0] = 0.0  # before the first frame: "after a blank" in the start state
    bp_tok = np.zeros((t_len, n), dtype=np.int32)  # -1 stay on the token, else arc index
    bp_blk = np.zeros((t_len, n), dtype=bool)  # True: came from the blank state, False: from the token state
    bp_arc_tok = np.zeros((t_len, n), dtype=bool)  # the arc into a token state left p's token (not p's blank)
    big = np.iinfo(np.int64).max
    for t in range(t_len):
        frame = lp[t]
        from_blk = on_blk[src]
        from_tok = np.where(same_tok, _NEG_INF, on_tok[src])
        cand = np.maximum(from_blk, from_tok)
        arc_tok = from_tok > from_blk
        if cand.size:
            gmax = np.maximum.reduceat(cand, starts)  # (n-1,) best predecessor of states 1..n-1
            hit = np.where(cand == gmax[dst - 1], np.arange(cand.size), big)
            garg = np.minimum.reduceat(hit, starts)
        else:
            gmax = np.full(n - 1, _NEG_INF)
            garg = np.zeros(n - 1, dtype=np.int64)
        stay = on_tok[1:]
        take_stay = stay >= gmax
        new_tok = np.full(n, _NEG_INF)
        new_tok[1:] = np.where(take_stay, stay, gmax) + frame[tok_ids[1:]]
        garg = np.minimum(garg, max(cand.size - 1, 0))  # a state no arc reaches keeps -inf anyway
        bp_tok[t, 1:] = np.where(take_stay, -1, garg)
        if cand.size:
            bp_arc_tok[t, 1:] = arc_tok[garg]
        blk_from_blk = on_blk >= on_tok
        bp_blk[t] = blk_from_blk
        new_blk = np.where(blk_from_blk, on_blk, on_tok) + frame[blank_id]
        on_tok, on_blk = new_tok, new_blk
    final = constraint.final
    end_tok = np.where(final, on_tok, _NEG_INF)
    end_blk = np.where(final, on_blk, _NEG_INF)
    if max(end_tok.max(), end_blk.max()) == _NEG_INF:
        return ConstrainedPath([], [], [], [])
    if end_tok.max() > end_blk.max():
        state, on_token = int(end_tok.argmax()), True
    else:
        state, on_token = int(end_blk.argmax()), False
    # backtrack: collect emissions (token state entered from another state) from the end
    tokens, frames, runs, states = [], [], [], []
    run = 0
    for t in range(t_len - 1, -1, -1):
        if on_token:
            run += 1
            b = int(bp_tok[t, state])
            if b < 0:
                continue  # stayed on the same token
            tokens.append(int(tok_of[state]))
            frames.append(t)
            runs.append(run)
            run = 0
            prev = int(src[b])
            states.append(prev)
            on_token = bool(bp_arc_tok[t, state])
            state = prev
        else:
            on_token = not bool(bp_blk[t, state])
    tokens.reverse()
    frames.reverse()
    runs.reverse()
    states.reverse()
    return ConstrainedPath(tokens, frames, runs, states)


def _logaddexp(a: float, b: float) -> float:
    if a == _NEG_INF:
        return b
    if b == _NEG_INF:
        return a
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


def _prefix_beam_one(
    frames: np.ndarray, beam: int, blank_id: int, token_prune: int | None, constraint: Any = None
) -> list[tuple[tuple[int, ...], float]]:
    """Prefix beam search over one utterance; ``frames`` is a (T, V) float64 array of log-probs.

    Each prefix keeps two log-scores: paths ending in blank (pb) and paths ending in its last token
    (pnb). The distinction is what lets "a a" (with a blank between) differ from a repeated "a".

    Extensions are scored for all (prefix, token) pairs at once with numpy. Only the extensions that
    land on a prefix already in the beam need merging; every other extension is a new prefix whose score
    is final, so keeping the best ``beam`` of those is enough for the result to equal a full search.

    With a ``constraint`` each prefix carries its automaton state; a prefix is extended only by the tokens
    that state allows, and at the end only prefixes in a final state (whole phones) are returned. If the beam
    holds none, the best prefix cut back to its last whole phone is returned.
    """
    vocab = frames.shape[1] if frames.ndim == 2 else 0
    # Start: the empty prefix, reached by "ending in blank" with probability 1.
    prefixes: list[tuple[int, ...]] = [()]
    state_of: dict[tuple[int, ...], int] = {(): 0}
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
        if constraint is not None:
            states = np.array([state_of[p] for p in prefixes], dtype=np.int64)
            ext[constraint.next[states] < 0] = _NEG_INF
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
                if constraint is not None:
                    state_of[prefixes[b] + (c,)] = int(constraint.next[state_of[prefixes[b]], c])
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
    if constraint is not None and final:
        whole = [(p, sc) for p, sc in final if constraint.final[state_of[p]]]
        final = whole or [(tuple(constraint.complete_prefix(final[0][0])), final[0][1])]
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
    constraint: Any = None,
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
    constraint: Any = None,
) -> list[list[tuple[list[int], float]]]: ...


def ctc_prefix_beam_search(
    log_probs: torch.Tensor,
    lens: torch.Tensor | Sequence[int],
    beam: int = 4,
    blank_id: int = 0,
    *,
    token_prune: int | None = None,
    return_nbest: bool = False,
    constraint: Any = None,
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
      constraint: an :class:`anyphone.inventory.PhoneConstraint`: only whole inventory phones are written.

    Returns:
      N token-id lists (the best prefix), or N n-best lists of (tokens, log_prob).
    """
    if beam < 1:
        raise ValueError(f"ctc_prefix_beam_search: beam={beam}, expected an integer >= 1")
    lens_list = _check_inputs(log_probs, lens)
    if constraint is not None:
        _check_constraint(constraint, log_probs.shape[-1], blank_id)
    lp_all = log_probs.detach().to("cpu", torch.float64)
    out: list = []
    for n, length in enumerate(lens_list):
        frames = lp_all[n, :length].numpy()
        nbest = _prefix_beam_one(frames, beam, blank_id, token_prune, constraint)
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
    constraint: Any = None,
) -> list[list[TopkFrame]]:
    """Allosaurus-style ``--topk`` output: the k best tokens at each emitting frame.

    The emitting frames are exactly the frames :func:`ctc_greedy_search` reports as timestamps (first
    frame of each non-blank run), so the top-1 candidates spell the greedy hypothesis. Probabilities are
    the frame posteriors ``softmax(log_probs[t])`` over the full vocabulary; the blank is left out of the
    candidate list unless ``include_blank``.

    With a ``constraint`` the hypothesis is the constrained best path and the candidates of each emitting frame
    are the tokens the automaton allows at that point (plus the blank), with probabilities renormalised over
    them, so no candidate can start or continue a phone outside the inventory.

    Returns:
      For each utterance, one :class:`TopkFrame` per emitting frame.
    """
    if k < 1:
        raise ValueError(f"ctc_topk_frames: k={k}, expected an integer >= 1")
    lens_list = _check_inputs(log_probs, lens)
    if constraint is not None:
        _check_constraint(constraint, log_probs.shape[-1], blank_id)
        lp64 = log_probs.detach().to("cpu", torch.float64)
        paths = [ctc_constrained_best_path(lp64[n, :length].numpy(), constraint, blank_id)
                 for n, length in enumerate(lens_list)]
        hyps = [CtcHypothesis(p.tokens, p.frames, []) for p in paths]
    else:
        hyps = ctc_greedy_search(log_probs, lens, blank_id, return_timestamps=True)
    out: list[list[TopkFrame]] = []
    for n, hyp in enumerate(hyps):
        frames: list[TopkFrame] = []
        if hyp.timestamps:
            idx = torch.tensor(hyp.timestamps, dtype=torch.long)
            logits = log_probs[n, idx].detach().double()  # (E, V)
            if constraint is not None:
                allowed = torch.from_numpy(constraint.next[paths[n].states] >= 0)
                allowed[:, blank_id] = True
                logits = logits.masked_fill(~allowed, _NEG_INF)
            probs = logits.softmax(dim=-1)
            if not include_blank:
                probs[:, blank_id] = -1.0  # sorts last, then dropped below
            kk = min(k, probs.shape[-1] - (0 if include_blank else 1))
            top_p, top_i = probs.topk(kk, dim=-1)
            for e, t in enumerate(hyp.timestamps):
                # (with a constraint, tokens it rules out have probability 0 and are left out)
                frames.append(TopkFrame(t, [(int(i), float(p)) for i, p in zip(top_i[e], top_p[e])
                                            if constraint is None or p > 0]))
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
