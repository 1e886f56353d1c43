"""Transducer decoding: batched greedy search and modified beam search (icefall / ZIPA semantics).

Both take a model with ``decoder`` (stateless, ``blank_id``, ``context_size``) and ``joiner``
(``encoder_proj``, ``decoder_proj``) attributes, encoder output (N, T, C) and lengths (N,), and
return N lists of token ids, or :class:`TransducerHypothesis` (ids, frame indices, score) with
``return_timestamps=True``.  The initial context is ``[-1] * (context_size - 1) + [blank]``; only
blank is non-emitting (``unk_id`` is not suppressed unless given, as in ZIPA, whose model has no
``unk_id``).  The greedy search is :func:`anyphone.decoding.greedy_loop.greedy_transducer_search`
(the one loop the ONNX runtime and the recogniser use too) over the model's :func:`torch_steps`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from anyphone.decoding.greedy_loop import TransducerHypothesis, greedy_transducer_search, transducer_lengths

__all__ = ["TransducerHypothesis", "greedy_search", "greedy_search_batch", "modified_beam_search", "torch_steps"]

_FILE = "anyphone/decoding/transducer.py"


def _check(encoder_out: Tensor, encoder_out_lens: Tensor) -> list[int]:
    return transducer_lengths(tuple(encoder_out.shape), torch.as_tensor(encoder_out_lens).tolist(), _FILE)


def _decoder_proj(model, contexts: list[list[int]] | np.ndarray, device: torch.device) -> Tensor:
    """contexts: H lists of context_size ids -> projected decoder output (H, joiner_dim)."""
    y = torch.as_tensor(np.asarray(contexts, dtype=np.int64), device=device)
    return model.joiner.decoder_proj(model.decoder(y, need_pad=False)).squeeze(1)


def _skip(token: int, blank_id: int, unk_id: int | None) -> bool:
    return token == blank_id or (unk_id is not None and token == unk_id)


def torch_steps(model, device: torch.device | str) -> tuple[Callable[[np.ndarray], Tensor],
                                                             Callable[[Tensor, Tensor], np.ndarray]]:
    """A PyTorch transducer's (decoder, joiner) steps for :func:`greedy_transducer_search`: ``decoder`` takes
    int64 contexts (E, context_size) as numpy and gives the projected decoder output (E, J) on ``device``;
    ``joiner`` takes projected encoder frames and decoder outputs (A, J) and gives float32 logits (A, V) as
    numpy."""
    device = torch.device(device)

    @torch.no_grad()
    def decoder(contexts: np.ndarray) -> Tensor:
        return _decoder_proj(model, contexts, device)

    @torch.no_grad()
    def joiner(enc: Tensor, dec: Tensor) -> np.ndarray:
        return model.joiner(enc, dec, project_input=False).float().cpu().numpy()

    return decoder, joiner


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
    decoder, joiner = torch_steps(model, encoder_out.device)
    hyps = greedy_transducer_search(
        decoder, joiner, model.joiner.encoder_proj(encoder_out), lens, blank_id=model.decoder.blank_id,
        context_size=model.decoder.context_size, max_sym_per_frame=max_sym_per_frame, blank_penalty=blank_penalty,
        unk_id=unk_id).hyps
    return hyps if return_timestamps else [h.tokens for h in hyps]


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
