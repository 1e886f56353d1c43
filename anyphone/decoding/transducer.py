"""Transducer decoding: batched greedy search and modified beam search (icefall / ZIPA semantics).

Both take a model with ``decoder`` (stateless, ``blank_id``, ``context_size``) and ``joiner``
(``encoder_proj``, ``decoder_proj``) attributes, encoder output (N, T, C) and lengths (N,), and
return N lists of token ids, or :class:`TransducerHypothesis` (ids, frame indices, score) with
``return_timestamps=True``.  The initial context is ``[-1] * (context_size - 1) + [blank]``; only
blank is non-emitting (``unk_id`` is not suppressed unless given, as in ZIPA, whose model has no
``unk_id``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["TransducerHypothesis", "greedy_search", "greedy_search_batch", "modified_beam_search"]

_FILE = "anyphone/decoding/transducer.py"


class TransducerHypothesis(NamedTuple):
    tokens: list[int]
    timestamps: list[int]  # encoder frame index of each token (25 Hz for ZIPA transducers)
    score: float  # log-probability (beam search) or sum of chosen-token log-probs (greedy)


def _check(encoder_out: Tensor, encoder_out_lens: Tensor) -> list[int]:
    if encoder_out.ndim != 3:
        raise ValueError(f"{_FILE}: encoder_out must be (N, T, C), got {tuple(encoder_out.shape)}")
    lens = [int(v) for v in torch.as_tensor(encoder_out_lens).tolist()]
    if len(lens) != encoder_out.shape[0] or any(not 0 <= v <= encoder_out.shape[1] for v in lens):
        raise ValueError(f"{_FILE}: encoder_out_lens {lens} do not fit encoder_out {tuple(encoder_out.shape)}")
    return lens


def _decoder_proj(model, contexts: list[list[int]], device: torch.device) -> Tensor:
    """contexts: H lists of context_size ids -> projected decoder output (H, joiner_dim)."""
    y = torch.tensor(contexts, dtype=torch.int64, device=device)
    return model.joiner.decoder_proj(model.decoder(y, need_pad=False)).squeeze(1)


def _skip(token: int, blank_id: int, unk_id: int | None) -> bool:
    return token == blank_id or (unk_id is not None and token == unk_id)


@torch.no_grad()
def greedy_search_batch(model, encoder_out: Tensor, encoder_out_lens: Tensor, max_sym_per_frame: int = 1,
                        blank_penalty: float = 0.0, unk_id: int | None = None,
                        return_timestamps: bool = False) -> list[list[int]] | list[TransducerHypothesis]:
    """Greedy search over a padded batch; with ``max_sym_per_frame=1`` this is ZIPA's
    ``greedy_search_batch`` (argmax per frame, a non-blank emits and updates the decoder context).

    With ``max_sym_per_frame > 1`` a frame is re-scored after each emission until blank or the limit.
    encoder_out (N, T, C), encoder_out_lens (N,).
    """
    if max_sym_per_frame < 1:
        raise ValueError(f"{_FILE}: max_sym_per_frame={max_sym_per_frame}, expected >= 1")
    lens = _check(encoder_out, encoder_out_lens)
    device = encoder_out.device
    blank_id, ctx = model.decoder.blank_id, model.decoder.context_size
    n = encoder_out.shape[0]
    hyps = [[-1] * (ctx - 1) + [blank_id] for _ in range(n)]
    stamps: list[list[int]] = [[] for _ in range(n)]
    scores = [0.0] * n
    enc = model.joiner.encoder_proj(encoder_out)  # (N, T, J)
    dec = _decoder_proj(model, hyps, device)  # (N, J)
    for t in range(max(lens, default=0)):
        active = [i for i in range(n) if lens[i] > t]
        for _ in range(max_sym_per_frame):
            idx = torch.tensor(active, device=device)
            logits = model.joiner(enc[idx, t], dec[idx], project_input=False)  # (A, V)
            if blank_penalty:
                logits[:, blank_id] -= blank_penalty
            best = logits.argmax(dim=-1).tolist()
            if return_timestamps:
                logp = logits.float().log_softmax(-1)[torch.arange(len(active)), best].tolist()
            emitted = []
            for j, (i, v) in enumerate(zip(active, best)):
                if return_timestamps:
                    scores[i] += logp[j]
                if not _skip(v, blank_id, unk_id):
                    hyps[i].append(v)
                    stamps[i].append(t)
                    emitted.append(i)
            if not emitted:
                break
            new = _decoder_proj(model, [hyps[i][-ctx:] for i in emitted], device)
            dec = dec.clone()
            dec[torch.tensor(emitted, device=device)] = new
            active = emitted
    tokens = [h[ctx:] for h in hyps]
    if return_timestamps:
        return [TransducerHypothesis(tokens[i], stamps[i], scores[i]) for i in range(n)]
    return tokens


greedy_search = greedy_search_batch


class _Hyp:
    __slots__ = ("log_prob", "stamps", "ys")

    def __init__(self, ys: list[int], log_prob: float, stamps: list[int]) -> None:
        self.ys, self.log_prob, self.stamps = ys, log_prob, stamps


def _logaddexp(a: float, b: float) -> float:
    m = max(a, b)
    if m == -math.inf:
        return m
    return m + math.log(math.exp(a - m) + math.exp(b - m))


@torch.no_grad()
def modified_beam_search(model, encoder_out: Tensor, encoder_out_lens: Tensor, beam: int = 4,
                         blank_penalty: float = 0.0, unk_id: int | None = None,
                         return_timestamps: bool = False) -> list[list[int]] | list[TransducerHypothesis]:
    """Beam search with at most one symbol per frame (icefall's ``modified_beam_search``).

    Per frame, every hypothesis of an utterance is extended by every token (blank keeps it as is);
    the ``beam`` best (hypothesis, token) pairs survive, and pairs that give the same token sequence
    are merged by adding their probabilities.  The result is the hypothesis with the best
    log-probability divided by its length (context included), as icefall does.
    encoder_out (N, T, C), encoder_out_lens (N,).
    """
    if beam < 1:
        raise ValueError(f"{_FILE}: beam={beam}, expected >= 1")
    lens = _check(encoder_out, encoder_out_lens)
    device = encoder_out.device
    blank_id, ctx = model.decoder.blank_id, model.decoder.context_size
    n = encoder_out.shape[0]
    beams: list[dict[tuple[int, ...], _Hyp]] = [
        {(tuple([-1] * (ctx - 1) + [blank_id])): _Hyp([-1] * (ctx - 1) + [blank_id], 0.0, [])} for _ in range(n)
    ]
    enc = model.joiner.encoder_proj(encoder_out)  # (N, T, J)
    for t in range(max(lens, default=0)):
        active = [i for i in range(n) if lens[i] > t]
        flat = [(i, h) for i in active for h in beams[i].values()]
        dec = _decoder_proj(model, [h.ys[-ctx:] for _, h in flat], device)  # (H, J)
        rows = torch.tensor([i for i, _ in flat], device=device)
        logits = model.joiner(enc[rows, t], dec, project_input=False)  # (H, V)
        if blank_penalty:
            logits[:, blank_id] -= blank_penalty
        log_probs = logits.float().log_softmax(dim=-1)
        log_probs += torch.tensor([h.log_prob for _, h in flat], device=device).unsqueeze(1)
        vocab = log_probs.shape[1]
        start = 0
        for i in active:
            k = len(beams[i])
            cand = log_probs[start:start + k].reshape(-1)
            hyps_i = [h for _, h in flat[start:start + k]]
            start += k
            top_lp, top_idx = cand.topk(min(beam, cand.numel()))
            new: dict[tuple[int, ...], _Hyp] = {}
            for lp, ix in zip(top_lp.tolist(), top_idx.tolist()):
                h = hyps_i[ix // vocab]
                tok = ix % vocab
                if _skip(tok, blank_id, unk_id):
                    ys, stamps = h.ys, h.stamps
                else:
                    ys, stamps = [*h.ys, tok], [*h.stamps, t]
                key = tuple(ys)
                if key in new:
                    new[key].log_prob = _logaddexp(new[key].log_prob, lp)
                else:
                    new[key] = _Hyp(ys, lp, stamps)
            beams[i] = new
    out: list = []
    for i in range(n):
        best = max(beams[i].values(), key=lambda h: h.log_prob / len(h.ys))
        tokens = best.ys[ctx:]
        out.append(TransducerHypothesis(tokens, best.stamps, best.log_prob) if return_timestamps else tokens)
    return out
