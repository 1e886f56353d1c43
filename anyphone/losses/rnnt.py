"""Pruned RNN-T loss in pure PyTorch (k2 / fast_rnnt compatible names and conventions).

Everything reduces to the "mutual information" recursion over a lattice of (s, t) cells::

    p[b, 0, 0] = 0
    p[b, s, t] = logaddexp(p[b, s-1, t] + px[b, s-1, t],   # emit symbol s-1 on frame t
                           p[b, s, t-1] + py[b, s, t-1])   # emit blank: go to frame t
    score[b]   = p[b, s_end, t_end]

with ``px`` of shape (B, S, T+1) and ``py`` of shape (B, S+1, T).  All cells on one
anti-diagonal ``d = s + t`` depend only on diagonal ``d - 1``, so both passes loop over the
S+T+1 diagonals and vectorise over (batch, s).  The backward pass runs in the probability
domain on "edge weights" (the fraction of a cell's mass that came through each incoming
edge), so no logaddexp is ever differentiated and -inf cells simply get zero weight.

Public functions follow k2's ``rnnt_loss.py`` API: ``rnnt_loss_simple``, ``rnnt_loss_smoothed``,
``get_rnnt_prune_ranges``, ``do_rnnt_pruning``, ``rnnt_loss_pruned``, ``rnnt_loss`` and
``mutual_information_recursion``.  ``boundary`` rows are ``[s_begin, t_begin, s_end, t_end]``.
Only the "regular" RNN-T topology (several symbols per frame) is implemented.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch
from torch import Tensor

from anyphone.utils import LazyKernels

__all__ = [
    "do_rnnt_pruning",
    "get_rnnt_backend",
    "get_rnnt_logprobs",
    "get_rnnt_logprobs_joint",
    "get_rnnt_logprobs_pruned",
    "get_rnnt_logprobs_smoothed",
    "get_rnnt_prune_ranges",
    "mutual_information_recursion",
    "rnnt_loss",
    "rnnt_loss_pruned",
    "rnnt_loss_simple",
    "rnnt_loss_smoothed",
]

_NEG_INF = float("-inf")
_LOG = logging.getLogger(__name__)
_FILE = "anyphone/losses/rnnt.py"


# --------------------------------------------------------------------------------------------
# Mutual-information recursion
# --------------------------------------------------------------------------------------------


def _check_boundary(boundary: Tensor | None, B: int, S: int, T: int, device: torch.device) -> Tensor:
    """Return a (B, 4) int64 boundary on ``device``, defaulting to [0, 0, S, T]; validate it."""
    if boundary is None:
        return torch.tensor([[0, 0, S, T]], dtype=torch.int64, device=device).expand(B, 4)
    if boundary.shape != (B, 4):
        raise ValueError(f"{_FILE}: boundary has shape {tuple(boundary.shape)}, expected ({B}, 4)")
    boundary = boundary.to(device=device, dtype=torch.int64)
    sb, tb, se, te = boundary.unbind(1)
    ok = (sb >= 0) & (sb <= se) & (se <= S) & (tb >= 0) & (tb <= te) & (te <= T)
    if not bool(ok.all()):
        raise ValueError(
            f"{_FILE}: boundary {boundary.tolist()} invalid, expected 0<=s_begin<=s_end<={S}, "
            f"0<=t_begin<=t_end<={T}"
        )
    return boundary


def _skew_index(boundary: Tensor, rows: int, width: int, S: int, T: int, is_px: bool) -> Tensor:
    """Flat indices that map a (B, rows, width) tensor onto the diagonal layout (D, B, S+1).

    Entry [d, b, s] points at ``src[b, s + s_begin, (d - s) + t_begin]`` when that lattice edge
    lies inside utterance b's box, otherwise at ``B*rows*width`` (a -inf / scratch slot
    appended by the caller).  The box follows k2: px edges need s < s_len and t <= t_len,
    py edges need s <= s_len and t < t_len, with s_len = s_end - s_begin etc.
    """
    device = boundary.device
    B = boundary.shape[0]
    D = S + T + 1
    d = torch.arange(D, device=device).view(D, 1, 1)
    s = torch.arange(S + 1, device=device).view(1, 1, S + 1)
    b = torch.arange(B, device=device).view(1, B, 1)
    sb, tb, se, te = (x.view(1, B, 1) for x in boundary.unbind(1))
    t = d - s
    s_len, t_len = se - sb, te - tb
    if is_px:
        valid = (t >= 0) & (t <= t_len) & (s < s_len)
    else:
        valid = (t >= 0) & (t < t_len) & (s <= s_len)
    flat = ((b * rows + s + sb) * width) + t + tb
    return torch.where(valid, flat, B * rows * width)


def _to_diagonals(src: Tensor, index: Tensor) -> Tensor:
    """Gather ``src`` (any shape) into the diagonal layout, -inf where ``index`` is the pad slot."""
    padded = torch.cat([src.reshape(-1), src.new_full((1,), _NEG_INF)])
    return torch.take(padded, index)


def _from_diagonals(values: Tensor, index: Tensor, like: Tensor) -> Tensor:
    """Inverse of :func:`_to_diagonals`: scatter (D, B, S+1) values back to the shape of ``like``."""
    out = like.new_zeros(like.numel() + 1)
    # Valid indices are unique; only the scratch slot (dropped below) receives duplicates.
    out.scatter_(0, index.reshape(-1), values.reshape(-1))
    return out[:-1].view(like.shape)


def _mi_forward(X: Tensor, Y: Tensor) -> Tensor:
    """Forward pass over diagonals. X, Y: (D, B, S+1) edge log-probs; returns alpha (D, B, S+1)."""
    D, B, S1 = X.shape
    if _use_triton(X):
        out = _triton_call("mi_forward", X, Y)
        if out is not None:
            return out
    alpha = X.new_full((D, B, S1), _NEG_INF)
    alpha[0, :, 0] = 0.0
    via_y = X.new_empty(B, S1)
    for d in range(1, D):
        prev, cur = alpha[d - 1], alpha[d]
        torch.add(prev, Y[d - 1], out=via_y)
        # cell s on diagonal d is reached by an x-edge from cell s-1 on diagonal d-1
        torch.add(prev[:, :-1], X[d - 1, :, :-1], out=cur[:, 1:])
        torch.logaddexp(cur, via_y, out=cur)
    return alpha


def _edge_posteriors(X: Tensor, Y: Tensor, alpha: Tensor, end_d: Tensor, end_s: Tensor) -> tuple[Tensor, Tensor]:
    """Posterior (occupation) probability of every x- and y-edge, in the diagonal layout.

    gamma[d, b, s] is the probability that a path goes through cell (s, d-s); it satisfies
    gamma[cell] = sum over outgoing edges e of gamma[dest(e)] * w(e), where
    w(e) = exp(alpha[cell] + logp(e) - alpha[dest(e)]) is the share of dest's mass that came
    through e.  The weights are in [0, 1], so the recursion is stable in float32.
    """
    D, B, S1 = X.shape
    with torch.no_grad():
        # w_x[d, b, s]: x-edge from (d, s) to (d+1, s+1); its last column (no such edge) stays 0
        w_x = X.new_zeros(D - 1, B, S1)
        torch.exp(alpha[:-1, :, :-1] + X[:-1, :, :-1] - alpha[1:, :, 1:], out=w_x[:, :, :-1])
        w_y = torch.exp(alpha[:-1] + Y[:-1] - alpha[1:])
        # unreachable destination: -inf - -inf = nan; such edges carry nothing
        torch.nan_to_num_(w_x, nan=0.0)
        torch.nan_to_num_(w_y, nan=0.0)
        gamma = X.new_zeros(D, B, S1)
        gamma[end_d, torch.arange(B, device=X.device), end_s] = 1.0
        if not (_use_triton(X) and _triton_call("gamma", w_x, w_y, gamma)):
            for d in range(D - 2, -1, -1):
                gamma[d].addcmul_(w_y[d], gamma[d + 1])
                gamma[d, :, :-1].addcmul_(w_x[d, :, :-1], gamma[d + 1, :, 1:])
        grad_x = X.new_zeros(D, B, S1)
        grad_x[:-1, :, :-1] = w_x[:, :, :-1] * gamma[1:, :, 1:]
        grad_y = X.new_zeros(D, B, S1)
        grad_y[:-1] = w_y * gamma[1:]
    return grad_x, grad_y


# --------------------------------------------------------------------------------------------
# Optional Triton kernels for CUDA: the diagonal loops above launch ~5 tiny kernels per
# diagonal, which is launch-bound on a GPU; these run a whole utterance's loop in one program.
# --------------------------------------------------------------------------------------------

def _use_triton(x: Tensor) -> bool:
    return x.shape[2] <= 8192 and _TRITON.available(x)


def _build_triton_kernels() -> SimpleNamespace:
    import triton
    import triton.language as tl

    @triton.jit
    def mi_forward_kernel(X, Y, A, D, B, S1, BLOCK: tl.constexpr):
        b = tl.program_id(0)
        s = tl.arange(0, BLOCK)
        in_row = s < S1
        has_left = in_row & (s > 0)
        row = b * S1
        step = B * S1
        neg = float("-inf")
        prev = tl.where(s == 0, tl.zeros([BLOCK], dtype=A.dtype.element_ty), neg)
        tl.store(A + row + s, prev, mask=in_row)
        for d in range(1, D):
            tl.debug_barrier()  # diagonal d-1 was written by other threads of this program
            base = (d - 1) * step + row
            left = tl.load(A + base + s - 1, mask=has_left, other=neg)
            via_x = left + tl.load(X + base + s - 1, mask=has_left, other=neg)
            via_y = prev + tl.load(Y + base + s, mask=in_row, other=neg)
            m = tl.maximum(via_x, via_y)
            m = tl.where(m == neg, 0.0, m)
            cur = m + tl.log(tl.exp(via_x - m) + tl.exp(via_y - m))
            tl.store(A + d * step + row + s, cur, mask=in_row)
            prev = cur

    @triton.jit
    def gamma_kernel(WX, WY, G, D, B, S1, BLOCK: tl.constexpr):
        b = tl.program_id(0)
        s = tl.arange(0, BLOCK)
        in_row = s < S1
        has_right = (s + 1) < S1
        row = b * S1
        step = B * S1
        nxt = tl.load(G + (D - 1) * step + row + s, mask=in_row, other=0.0)
        for i in range(D - 1):
            d = D - 2 - i
            tl.debug_barrier()  # diagonal d+1 was written by other threads of this program
            right = tl.load(G + (d + 1) * step + row + s + 1, mask=has_right, other=0.0)
            wx = tl.load(WX + d * step + row + s, mask=in_row, other=0.0)
            wy = tl.load(WY + d * step + row + s, mask=in_row, other=0.0)
            seed = tl.load(G + d * step + row + s, mask=in_row, other=0.0)
            cur = seed + wy * nxt + wx * right
            tl.store(G + d * step + row + s, cur, mask=in_row)
            nxt = cur

    def launch_args(x: Tensor) -> tuple[int, int, int]:
        block = max(32, triton.next_power_of_2(x.shape[2]))
        return x.shape[1], block, max(1, min(8, block // 128))

    def mi_forward(X: Tensor, Y: Tensor) -> Tensor:
        D, B, S1 = X.shape
        A = torch.empty_like(X)
        nb, block, warps = launch_args(X)
        mi_forward_kernel[(nb,)](X.contiguous(), Y.contiguous(), A, D, B, S1, BLOCK=block, num_warps=warps)
        return A

    def gamma(w_x: Tensor, w_y: Tensor, G: Tensor) -> None:
        D, B, S1 = G.shape
        nb, block, warps = launch_args(G)
        gamma_kernel[(nb,)](w_x.contiguous(), w_y.contiguous(), G, D, B, S1, BLOCK=block, num_warps=warps)

    return SimpleNamespace(mi_forward=mi_forward, gamma=gamma)


def _triton_call(name: str, *args: Tensor):
    """A kernel's result (True for ``gamma``, which fills its output in place), or None after a failure."""
    ok, out = _TRITON.call(name, *args)
    if not ok:
        return None
    return out if name == "mi_forward" else True


_TRITON = LazyKernels(_build_triton_kernels, "ANYPHONE_RNNT_TRITON", _FILE)


def _mutual_information(
    px: Tensor, py: Tensor, boundary: Tensor | None, need_grad: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Scores (B,) and, if ``need_grad``, d score / d px and d score / d py (no autograd)."""
    B, S, T1 = px.shape
    T = py.shape[-1]
    bnd = _check_boundary(boundary, B, S, T, px.device)
    ix = _skew_index(bnd, S, T1, S, T, is_px=True)
    iy = _skew_index(bnd, S + 1, T, S, T, is_px=False)
    X = _to_diagonals(px.detach(), ix)
    Y = _to_diagonals(py.detach(), iy)
    alpha = _mi_forward(X, Y)
    s_len = bnd[:, 2] - bnd[:, 0]
    end_d = s_len + bnd[:, 3] - bnd[:, 1]
    scores = alpha[end_d, torch.arange(B, device=px.device), s_len]
    if not need_grad:
        return scores, None, None
    gx, gy = _edge_posteriors(X, Y, alpha, end_d, s_len)
    return scores, _from_diagonals(gx, ix, px), _from_diagonals(gy, iy, py)


class _MutualInformationFunction(torch.autograd.Function):
    """Autograd wrapper: the gradients are computed in forward (they are also what
    ``return_grad`` hands out), backward only scales them by the incoming per-sequence grad."""

    @staticmethod
    def forward(ctx, px: Tensor, py: Tensor, boundary: Tensor | None, grads_out: list) -> Tensor:
        need = bool(grads_out[0]) or ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        scores, gx, gy = _mutual_information(px, py, boundary, need)
        grads_out[:] = [gx, gy]
        if gx is not None:
            ctx.save_for_backward(gx, gy)
        return scores

    @staticmethod
    def backward(ctx, grad_scores: Tensor):
        gx, gy = ctx.saved_tensors
        g = grad_scores.view(-1, 1, 1)
        return gx * g, gy * g, None, None


def mutual_information_recursion(
    px: Tensor, py: Tensor, boundary: Tensor | None = None, return_grad: bool = False
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """Total log-score of all monotone paths through the (s, t) lattice (see module doc).

    Args:
      px: (B, S, T+1) log-probs of the x (symbol) edges; only the "regular" layout is supported.
      py: (B, S+1, T) log-probs of the y (blank / next-frame) edges.
      boundary: optional (B, 4) int64 ``[s_begin, t_begin, s_end, t_end]``; default [0, 0, S, T].
      return_grad: also return (px_grad, py_grad), the gradients of ``scores.sum()`` w.r.t. px and
        py, i.e. the occupation probabilities of the edges.
    Returns:
      scores (B,), or (scores, (px_grad, py_grad)) if ``return_grad``.
    """
    if px.ndim != 3 or py.ndim != 3:
        raise ValueError(f"{_FILE}: px/py must be 3-D, got {tuple(px.shape)} and {tuple(py.shape)}")
    B, S, T1 = px.shape
    T = py.shape[-1]
    if T1 != T + 1:
        raise NotImplementedError(
            f"{_FILE}: px has {T1} frames, expected T+1={T + 1} (only the regular RNN-T layout is supported)"
        )
    if py.shape != (B, S + 1, T):
        raise ValueError(f"{_FILE}: py has shape {tuple(py.shape)}, expected ({B}, {S + 1}, {T})")
    if px.dtype != py.dtype:
        raise ValueError(f"{_FILE}: px dtype {px.dtype} differs from py dtype {py.dtype}")
    grads: list = [return_grad]
    scores = _MutualInformationFunction.apply(px, py, boundary, grads)
    if return_grad:
        return scores, (grads[0], grads[1])
    return scores


# --------------------------------------------------------------------------------------------
# Building px / py
# --------------------------------------------------------------------------------------------


def _fix_for_boundary(px: Tensor, boundary: Tensor | None) -> Tensor:
    """Forbid symbols on the one-past-the-last frame: px[b, :, t_end[b]] = -inf (out of place)."""
    if boundary is None:
        return px  # the appended column T is already -inf
    B, S, _T1 = px.shape
    t_end = boundary[:, 3].to(px.device).view(B, 1, 1).expand(B, S, 1)
    return px.scatter(2, t_end, _NEG_INF)


def _append_neg_inf_frame(px: Tensor) -> Tensor:
    """(B, S, T) -> (B, S, T+1) with a -inf last column."""
    B, S, _ = px.shape
    return torch.cat([px, px.new_full((B, S, 1), _NEG_INF)], dim=2)


def _check_reduction(reduction: str | None) -> None:
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"{_FILE}: reduction={reduction!r}, expected 'none', 'mean' or 'sum'")


def _reduce(neg_loss: Tensor, reduction: str | None) -> Tensor:
    if reduction == "none":
        return -neg_loss
    if reduction == "mean":
        return -neg_loss.mean()
    return -neg_loss.sum()


def _check_rnnt_type(rnnt_type: str) -> None:
    if rnnt_type != "regular":
        raise NotImplementedError(f"{_FILE}: rnnt_type={rnnt_type!r}, only 'regular' is implemented")


def get_rnnt_logprobs_smoothed(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    lm_only_scale: float = 0.1,
    am_only_scale: float = 0.1,
    boundary: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """px (B, S, T+1), py (B, S+1, T) for the "simple" joiner ``logits = am[t] + lm[s]``.

    The edge log-probs interpolate three models::

        (1 - lm_only_scale - am_only_scale) * log p(am + lm)
        + lm_only_scale * log p(lm alone)
        + am_only_scale * log p(am with a unigram LM averaged over the batch's lm rows)

    Args:
      lm: (B, S+1, C) unnormalised "LM" part; lm[b, s] sees the symbols before s.
      am: (B, T, C) unnormalised "acoustic" part.
      symbols: (B, S) int64 targets (padding value irrelevant beyond s_end).
      termination_symbol: blank id.
    """
    if lm.ndim != 3 or am.ndim != 3 or lm.shape[0] != am.shape[0] or lm.shape[2] != am.shape[2]:
        raise ValueError(f"{_FILE}: lm {tuple(lm.shape)} and am {tuple(am.shape)} must be (B,S+1,C), (B,T,C)")
    B, T, _C = am.shape
    S = lm.shape[1] - 1
    if symbols.shape != (B, S):
        raise ValueError(f"{_FILE}: symbols has shape {tuple(symbols.shape)}, expected ({B}, {S})")
    symbols = symbols.to(torch.int64)
    tiny = torch.finfo(am.dtype).tiny
    # exp() of max-shifted values so the big normaliser is a single batched matmul
    am_max = am.amax(dim=2, keepdim=True)  # (B, T, 1)
    lm_max = lm.amax(dim=2, keepdim=True)  # (B, S+1, 1)
    am_e = (am - am_max).exp()
    lm_e = (lm - lm_max).exp()
    norm = (torch.bmm(lm_e, am_e.transpose(1, 2)) + tiny).log() + lm_max + am_max.transpose(1, 2)  # (B,S+1,T)

    am_sym = torch.gather(am, 2, symbols.unsqueeze(1).expand(B, T, S)).transpose(1, 2)  # (B, S, T)
    lm_sym = torch.gather(lm[:, :S], 2, symbols.unsqueeze(2))  # (B, S, 1)
    am_blank = am[:, :, termination_symbol].unsqueeze(1)  # (B, 1, T)
    lm_blank = lm[:, :, termination_symbol].unsqueeze(2)  # (B, S+1, 1)

    px = am_sym + lm_sym - norm[:, :S]
    py = am_blank + lm_blank - norm
    if lm_only_scale != 0.0 or am_only_scale != 0.0:
        lm_sum = lm_e.sum(dim=2, keepdim=True)  # (B, S+1, 1)
        # "unigram" LM: the LM distribution averaged over every row of the batch (padding included,
        # as k2 does), so the AM-only model does not depend on the history.
        unigram = (lm_e / lm_sum).mean(dim=(0, 1)) + tiny  # (C,)
        am_only_norm = ((am_e @ unigram).log() + am_max.squeeze(2)).unsqueeze(1)  # (B, 1, T)
        log_unigram = unigram.log()
        lm_only_norm = lm_sum.log() + lm_max  # (B, S+1, 1)
        px_am_only = am_sym + log_unigram[symbols].unsqueeze(2) - am_only_norm
        py_am_only = am_blank + log_unigram[termination_symbol] - am_only_norm
        px_lm_only = lm_sym - lm_only_norm[:, :S]
        py_lm_only = lm_blank - lm_only_norm
        main = 1.0 - lm_only_scale - am_only_scale
        px = main * px + lm_only_scale * px_lm_only + am_only_scale * px_am_only
        py = main * py + lm_only_scale * py_lm_only + am_only_scale * py_am_only
    px = _fix_for_boundary(_append_neg_inf_frame(px), boundary)
    return px, py


def get_rnnt_logprobs(
    lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int, boundary: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """px, py for the simple (additive) joiner without smoothing; see :func:`get_rnnt_logprobs_smoothed`."""
    return get_rnnt_logprobs_smoothed(lm, am, symbols, termination_symbol, 0.0, 0.0, boundary)


class _JointLogprobs(torch.autograd.Function):
    """log_softmax(logits)[..., sym] and log_softmax(logits)[..., blank] without materialising
    the log-softmax; backward builds the logits gradient in a single full-size buffer."""

    @staticmethod
    def forward(ctx, logits: Tensor, sym: Tensor, blank: int) -> tuple[Tensor, Tensor]:
        lse = torch.logsumexp(logits, dim=3)
        lp_sym = logits.gather(3, sym.unsqueeze(3)).squeeze(3) - lse
        lp_blank = logits[..., blank] - lse
        ctx.blank = blank
        ctx.save_for_backward(logits, lse, sym)
        return lp_sym, lp_blank

    @staticmethod
    def backward(ctx, g_sym: Tensor | None, g_blank: Tensor | None):
        logits, lse, sym = ctx.saved_tensors
        if g_sym is None:
            g_sym = torch.zeros_like(lse)
        if g_blank is None:
            g_blank = torch.zeros_like(lse)
        grad = torch.sub(logits, lse.unsqueeze(3)).exp_()  # softmax
        grad.mul_((g_sym + g_blank).neg().unsqueeze(3))
        grad.scatter_add_(3, sym.unsqueeze(3), g_sym.unsqueeze(3))
        grad[..., ctx.blank] += g_blank
        return grad, None, None


def get_rnnt_logprobs_joint(
    logits: Tensor, symbols: Tensor, termination_symbol: int, boundary: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """px (B, S, T+1), py (B, S+1, T) from full joiner output ``logits`` (B, T, S+1, C)."""
    if logits.ndim != 4:
        raise ValueError(f"{_FILE}: logits must be (B, T, S+1, C), got {tuple(logits.shape)}")
    B, T, S1, _C = logits.shape
    S = S1 - 1
    if symbols.shape != (B, S):
        raise ValueError(f"{_FILE}: symbols has shape {tuple(symbols.shape)}, expected ({B}, {S})")
    sym = torch.cat([symbols.to(torch.int64), symbols.new_full((B, 1), termination_symbol)], dim=1)
    lp_sym, lp_blank = _JointLogprobs.apply(logits, sym.unsqueeze(1).expand(B, T, S1), termination_symbol)
    px = _fix_for_boundary(_append_neg_inf_frame(lp_sym[:, :, :S].transpose(1, 2)), boundary)
    py = lp_blank.transpose(1, 2)
    return px, py


def get_rnnt_logprobs_pruned(
    logits: Tensor, symbols: Tensor, ranges: Tensor, termination_symbol: int, boundary: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """px (B, S, T+1), py (B, S+1, T) from pruned joiner output ``logits`` (B, T, R, C).

    ``ranges`` (B, T, R) gives the symbol position s of every logits row; lattice edges outside
    the kept ranges get -inf.
    """
    if logits.ndim != 4:
        raise ValueError(f"{_FILE}: logits must be (B, T, R, C), got {tuple(logits.shape)}")
    B, T, R, _C = logits.shape
    if ranges.shape != (B, T, R):
        raise ValueError(f"{_FILE}: ranges has shape {tuple(ranges.shape)}, expected ({B}, {T}, {R})")
    S = symbols.shape[1]
    ranges = ranges.to(torch.int64)
    sym_all = torch.cat([symbols.to(torch.int64), symbols.new_full((B, 1), termination_symbol)], dim=1)
    sym = torch.gather(sym_all, 1, ranges.reshape(B, T * R)).view(B, T, R)
    lp_sym, lp_blank = _JointLogprobs.apply(logits, sym, termination_symbol)
    dense = logits.new_full((B, T, S + 1), _NEG_INF)
    px = dense.scatter(2, ranges, lp_sym)[:, :, :S].transpose(1, 2)
    py = dense.scatter(2, ranges, lp_blank).transpose(1, 2)
    px = _fix_for_boundary(_append_neg_inf_frame(px), boundary)
    return px, py


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def rnnt_loss_smoothed(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    lm_only_scale: float = 0.1,
    am_only_scale: float = 0.1,
    boundary: Tensor | None = None,
    reduction: str | None = "mean",
    return_grad: bool = False,
    *,
    rnnt_type: str = "regular",
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """Smoothed "simple" RNN-T loss (additive joiner), as k2's ``rnnt_loss_smoothed``.

    Args:
      lm: (B, S+1, C); am: (B, T, C); symbols: (B, S) int64; termination_symbol: blank id.
      lm_only_scale, am_only_scale: interpolation weights (see :func:`get_rnnt_logprobs_smoothed`).
      boundary: optional (B, 4) int64 [0, 0, num_symbols, num_frames].
      reduction: 'none' -> (B,), 'mean' or 'sum' over the batch.
      return_grad: also return (px_grad, py_grad) occupation probabilities (for pruning).
    Returns:
      loss, or (loss, (px_grad (B, S, T+1), py_grad (B, S+1, T))).
    """
    _check_rnnt_type(rnnt_type)
    _check_reduction(reduction)
    px, py = get_rnnt_logprobs_smoothed(
        lm, am, symbols, termination_symbol, lm_only_scale, am_only_scale, boundary
    )
    out = mutual_information_recursion(px, py, boundary, return_grad=return_grad)
    if return_grad:
        scores, grads = out
        return _reduce(scores, reduction), grads
    return _reduce(out, reduction)


def rnnt_loss_simple(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Tensor | None = None,
    reduction: str | None = "mean",
    return_grad: bool = False,
    *,
    rnnt_type: str = "regular",
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """Simple RNN-T loss with the additive joiner ``am[t] + lm[s]`` (no smoothing)."""
    return rnnt_loss_smoothed(
        lm, am, symbols, termination_symbol, 0.0, 0.0, boundary, reduction, return_grad, rnnt_type=rnnt_type
    )


def rnnt_loss(
    logits: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Tensor | None = None,
    reduction: str | None = "mean",
    *,
    rnnt_type: str = "regular",
) -> Tensor:
    """Full (unpruned) RNN-T loss from joiner output ``logits`` (B, T, S+1, C)."""
    _check_rnnt_type(rnnt_type)
    _check_reduction(reduction)
    px, py = get_rnnt_logprobs_joint(logits, symbols, termination_symbol, boundary)
    return _reduce(mutual_information_recursion(px, py, boundary), reduction)


def rnnt_loss_pruned(
    logits: Tensor,
    symbols: Tensor,
    ranges: Tensor,
    termination_symbol: int,
    boundary: Tensor | None = None,
    reduction: str | None = "mean",
    *,
    rnnt_type: str = "regular",
) -> Tensor:
    """Pruned RNN-T loss from pruned joiner output ``logits`` (B, T, R, C) and ``ranges`` (B, T, R)."""
    _check_rnnt_type(rnnt_type)
    _check_reduction(reduction)
    px, py = get_rnnt_logprobs_pruned(logits, symbols, ranges, termination_symbol, boundary)
    return _reduce(mutual_information_recursion(px, py, boundary), reduction)


# --------------------------------------------------------------------------------------------
# Pruning
# --------------------------------------------------------------------------------------------


def _suffix_min(x: Tensor) -> Tensor:
    """Running minimum from the right along the last axis."""
    return torch.flip(torch.cummin(torch.flip(x, [-1]), dim=-1).values, [-1])


def _adjust_pruning_lower_bound(s_begin: Tensor, s_range: int) -> Tensor:
    """Make (B, T) window starts non-decreasing, start at 0 and advance by < ``s_range`` per frame.

    A window start may only be lowered (never raised beyond what a later frame needs), so the
    result is the largest sequence below ``s_begin`` with these properties, except that
    steps larger than s_range-1 are repaired by raising earlier frames.
    """
    T = s_begin.shape[1]
    s_begin = _suffix_min(s_begin)
    # s[t+1] - s[t] <= s_range-1  <=>  u[t] = (s_range-1)*t - s[t] is non-decreasing
    ramp = (s_range - 1) * torch.arange(T, device=s_begin.device)
    u = _suffix_min(ramp - s_begin).clamp(min=0)  # clamp: s[t] <= (s_range-1)*t, so s[0] = 0
    return ramp - u


def get_rnnt_prune_ranges(px_grad: Tensor, py_grad: Tensor, boundary: Tensor, s_range: int) -> Tensor:
    """Per-frame windows of ``s_range`` consecutive symbol positions that hold most of the
    alignment mass of the simple loss (k2 / fast_rnnt algorithm).

    Args:
      px_grad: (B, S, T+1) and py_grad: (B, S+1, T): occupation probabilities from
        ``rnnt_loss_smoothed(..., return_grad=True)``.
      boundary: (B, 4) int64 [0, 0, num_symbols, num_frames].
      s_range: window size; raised to the smallest size that keeps a path alive
        (``(S_b - 1) // T_b + 2``) and capped at S+1 (then nothing is pruned).
    Returns:
      ranges (B, T, s_range') int64, ranges[b, t] = s_begin[b, t] + arange(s_range'), where
      s_begin is non-decreasing in t, starts at 0, grows by < s_range' per frame and the last
      real frame covers s_end.
    """
    B, S, T1 = px_grad.shape
    T = py_grad.shape[-1]
    if T1 != T + 1:
        raise NotImplementedError(f"{_FILE}: px_grad has {T1} frames, expected T+1={T + 1} (regular RNN-T)")
    if py_grad.shape != (B, S + 1, T) or boundary.shape != (B, 4):
        raise ValueError(
            f"{_FILE}: py_grad {tuple(py_grad.shape)} / boundary {tuple(boundary.shape)}, "
            f"expected ({B}, {S + 1}, {T}) / ({B}, 4)"
        )
    if s_range < 1:
        raise ValueError(f"{_FILE}: s_range={s_range}, expected >= 1")
    boundary = boundary.to(px_grad.device)
    s_lens, t_lens = boundary[:, 2], boundary[:, 3]
    if B > 0:
        needed = int(((s_lens - 1).clamp(min=0) // t_lens.clamp(min=1) + 2).max())
        if s_range < needed:
            _LOG.warning(f"{_FILE}: s_range={s_range} cannot cover S={s_lens.tolist()} in T={t_lens.tolist()}; "
                            f"using {needed}")
            s_range = needed
    R = min(s_range, S + 1)
    n_win = S + 2 - R
    # Score of window [s0, s0+R): blank mass leaving its cells on frame t minus the symbol mass
    # entering it from below on the same frame (that path was outside the window first).
    csum = torch.nn.functional.pad(py_grad.cumsum(dim=1), (0, 0, 1, 0))  # (B, S+2, T)
    win = csum[:, R:R + n_win] - csum[:, :n_win]
    enter = torch.nn.functional.pad(px_grad[:, : n_win - 1, :T], (0, 0, 1, 0))  # px_grad[s0-1]
    s_begin = torch.argmax(win - enter, dim=1)  # (B, T)

    # From the last real frame on, pin the window so that it ends at s_end.
    t_idx = torch.arange(T, device=px_grad.device).view(1, T)
    inside = t_idx < (t_lens.view(B, 1) - 1)
    last = (s_lens.view(B, 1) - R + 1).clamp(min=0)
    s_begin = torch.where(inside, s_begin, last)
    s_begin = _adjust_pruning_lower_bound(s_begin, R)
    return s_begin.unsqueeze(2) + torch.arange(R, device=px_grad.device)


def do_rnnt_pruning(am: Tensor, lm: Tensor, ranges: Tensor) -> tuple[Tensor, Tensor]:
    """Expand ``am`` (B, T, C) and gather ``lm`` (B, S+1, C) into (B, T, R, C) joiner inputs."""
    B, T, R = ranges.shape
    if am.shape[:2] != (B, T) or lm.shape[0] != B:
        raise ValueError(
            f"{_FILE}: am {tuple(am.shape)} / lm {tuple(lm.shape)} do not match ranges {tuple(ranges.shape)}"
        )
    am_pruned = am.unsqueeze(2).expand(B, T, R, am.shape[-1])
    lm_pruned = lm[torch.arange(B, device=lm.device).view(B, 1, 1), ranges]
    return am_pruned, lm_pruned


# --------------------------------------------------------------------------------------------
# Backend selection
# --------------------------------------------------------------------------------------------

_API = (
    "rnnt_loss",
    "rnnt_loss_simple",
    "rnnt_loss_smoothed",
    "rnnt_loss_pruned",
    "get_rnnt_prune_ranges",
    "do_rnnt_pruning",
    "mutual_information_recursion",
)


def _namespace_of(module, name: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, **{fn: getattr(module, fn) for fn in _API})


def get_rnnt_backend(name: str = "auto", device: str | torch.device | None = None) -> SimpleNamespace:
    """Namespace with the RNN-T loss functions (``rnnt_loss``, ``rnnt_loss_smoothed``, ...).

    ``name``: "torch" (this module), "k2", "fast_rnnt", or "auto": k2, else fast_rnnt, else
    torch, skipping a compiled backend that was built without CUDA when ``device`` is CUDA.
    """
    import sys

    if name == "torch":
        return _namespace_of(sys.modules[__name__], "torch")
    if name not in ("auto", "k2", "fast_rnnt"):
        raise ValueError(f"{_FILE}: backend {name!r}, expected 'auto', 'torch', 'k2' or 'fast_rnnt'")
    on_cuda = device is not None and torch.device(device).type == "cuda"
    for cand in ("k2", "fast_rnnt") if name == "auto" else (name,):
        try:
            mod = __import__(cand)
        except ImportError:
            if name != "auto":
                raise ImportError(f"{_FILE}: backend {name!r} requested but it is not importable") from None
            continue
        if on_cuda and name == "auto":
            has_cuda = getattr(mod, "with_cuda", None)
            has_cuda = has_cuda() if callable(has_cuda) else bool(has_cuda)
            if not has_cuda:
                continue
        return _namespace_of(mod, cand)
    return _namespace_of(sys.modules[__name__], "torch")
