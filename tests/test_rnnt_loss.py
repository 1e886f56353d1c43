"""Tests for anyphone.losses.rnnt against a naive float64 dynamic program written here."""

from __future__ import annotations

import math

import pytest
import torch

from anyphone.losses import rnnt as R

# ----------------------------------------------------------------------------- naive reference


def _logadd(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


def naive_rnnt(
    logp: torch.Tensor, symbols: list[int], n_frames: int, blank: int = 0, allowed=None
) -> float:
    """-log P(symbols | frames) for one utterance by explicit loops.

    logp: (T, U+1, V) log-probabilities; only frames < n_frames and positions <= len(symbols)
    are used.  ``allowed(t, u)`` (optional) says whether lattice node (t, u) may emit anything.
    """
    U = len(symbols)
    lp = logp.double().tolist()
    ok = allowed or (lambda t, u: True)
    alpha = [[-math.inf] * (U + 1) for _ in range(n_frames)]
    alpha[0][0] = 0.0
    for t in range(n_frames):
        for u in range(U + 1):
            if t == 0 and u == 0:
                continue
            a = -math.inf
            if t > 0 and ok(t - 1, u):
                a = alpha[t - 1][u] + lp[t - 1][u][blank]
            if u > 0 and ok(t, u - 1):
                a = _logadd(a, alpha[t][u - 1] + lp[t][u - 1][symbols[u - 1]])
            alpha[t][u] = a
    if not ok(n_frames - 1, U):
        return math.inf
    return -(alpha[n_frames - 1][U] + lp[n_frames - 1][U][blank])


def _batch(B=3, T=6, U=4, V=7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    am = torch.randn(B, T, V, generator=g, dtype=dtype)
    lm = torch.randn(B, U + 1, V, generator=g, dtype=dtype)
    symbols = torch.randint(1, V, (B, U), generator=g)
    return am, lm, symbols


def _boundary(s_lens, t_lens):
    b = torch.zeros(len(s_lens), 4, dtype=torch.int64)
    b[:, 2] = torch.tensor(s_lens)
    b[:, 3] = torch.tensor(t_lens)
    return b


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("use_boundary", [False, True])
def test_full_loss_matches_naive(use_boundary):
    B, T, U, V = 3, 6, 4, 7
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(B, T, U + 1, V, generator=g, dtype=torch.float64)
    symbols = torch.randint(1, V, (B, U), generator=g)
    s_lens, t_lens = ([4, 2, 0], [6, 3, 1]) if use_boundary else ([U] * B, [T] * B)
    boundary = _boundary(s_lens, t_lens) if use_boundary else None
    got = R.rnnt_loss(logits, symbols, 0, boundary, reduction="none")
    logp = logits.log_softmax(-1)
    want = [naive_rnnt(logp[b], symbols[b, : s_lens[b]].tolist(), t_lens[b]) for b in range(B)]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-10, atol=1e-10)


def test_simple_loss_is_full_loss_of_additive_joiner():
    am, lm, symbols = _batch()
    boundary = _boundary([4, 3, 1], [6, 5, 2])
    simple = R.rnnt_loss_simple(lm, am, symbols, 0, boundary, reduction="none")
    full = R.rnnt_loss(am.unsqueeze(2) + lm.unsqueeze(1), symbols, 0, boundary, reduction="none")
    torch.testing.assert_close(simple, full, rtol=1e-10, atol=1e-10)


def test_smoothed_loss_matches_naive_interpolation():
    am, lm, symbols = _batch(B=2, T=5, U=3, V=6)
    lm_scale, am_scale = 0.25, 0.15
    got = R.rnnt_loss_smoothed(lm, am, symbols, 0, lm_scale, am_scale, reduction="none")
    # independent construction of the interpolated per-node log-probs
    joint = (am.unsqueeze(2) + lm.unsqueeze(1)).log_softmax(-1)  # (B, T, U+1, V)
    lm_only = lm.log_softmax(-1).unsqueeze(1)  # (B, 1, U+1, V)
    unigram = lm.softmax(-1).mean(dim=(0, 1))  # averaged over every (b, u)
    am_only = (am.unsqueeze(2) + unigram.log()).log_softmax(-1)  # (B, T, 1, V)
    mix = (1 - lm_scale - am_scale) * joint + lm_scale * lm_only + am_scale * am_only
    want = [naive_rnnt(mix[b], symbols[b].tolist(), 5) for b in range(2)]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-9)


def test_reductions():
    am, lm, symbols = _batch()
    none = R.rnnt_loss_simple(lm, am, symbols, 0, reduction="none")
    assert none.shape == (3,)
    torch.testing.assert_close(R.rnnt_loss_simple(lm, am, symbols, 0, reduction="sum"), none.sum())
    torch.testing.assert_close(R.rnnt_loss_simple(lm, am, symbols, 0, reduction="mean"), none.mean())
    with pytest.raises(ValueError, match="reduction"):
        R.rnnt_loss_simple(lm, am, symbols, 0, reduction="avg")


def test_edge_cases_u0_and_t1():
    # U = 0: the loss is the sum of blank log-probs over the frames
    am, lm, _ = _batch(B=2, T=4, U=0, V=5)
    symbols = torch.zeros(2, 0, dtype=torch.int64)
    got = R.rnnt_loss_simple(lm, am, symbols, 0, reduction="none")
    want = -(am + lm).log_softmax(-1)[:, :, 0].sum(1)
    torch.testing.assert_close(got, want)
    # T = 1: all symbols on the single frame, then blank
    am, lm, symbols = _batch(B=2, T=1, U=3, V=5)
    logp = (am.unsqueeze(2) + lm.unsqueeze(1)).log_softmax(-1)
    got = R.rnnt_loss_simple(lm, am, symbols, 0, reduction="none")
    want = [naive_rnnt(logp[b], symbols[b].tolist(), 1) for b in range(2)]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    # both, with pruning
    _, (pxg, pyg) = R.rnnt_loss_simple(lm, am, symbols, 0, return_grad=True)
    ranges = R.get_rnnt_prune_ranges(pxg, pyg, _boundary([3, 3], [1, 1]), 2)
    assert ranges.shape == (2, 1, 4)  # raised to (S-1)//T + 2 = 4 so a path survives
    am_p, lm_p = R.do_rnnt_pruning(am, lm, ranges)
    pruned = R.rnnt_loss_pruned(am_p + lm_p, symbols, ranges, 0, reduction="none")
    torch.testing.assert_close(pruned, got)


def test_per_utterance_lengths_equal_separate_runs():
    am, lm, symbols = _batch(B=3, T=7, U=5, V=6, seed=3)
    s_lens, t_lens = [5, 2, 3], [7, 4, 2]
    batched = R.rnnt_loss_smoothed(lm, am, symbols, 0, 0.1, 0.1, _boundary(s_lens, t_lens), reduction="none")
    for b in range(3):
        solo = R.rnnt_loss_simple(
            lm[b : b + 1, : s_lens[b] + 1], am[b : b + 1, : t_lens[b]], symbols[b : b + 1, : s_lens[b]], 0,
            reduction="none",
        )
        # smoothing couples utterances through the batch unigram, so compare with scales 0 here
        plain = R.rnnt_loss_simple(lm, am, symbols, 0, _boundary(s_lens, t_lens), reduction="none")
        torch.testing.assert_close(plain[b], solo[0])
    assert torch.isfinite(batched).all()


def test_begin_offsets_in_boundary():
    """Non-zero s_begin / t_begin start the recursion inside the lattice (k2 semantics)."""
    g = torch.Generator().manual_seed(5)
    B, S, T = 2, 4, 5
    px = torch.randn(B, S, T + 1, generator=g, dtype=torch.float64)
    py = torch.randn(B, S + 1, T, generator=g, dtype=torch.float64)
    boundary = torch.tensor([[1, 2, 4, 5], [0, 1, 2, 3]])
    got = R.mutual_information_recursion(px, py, boundary)
    for b in range(B):
        sb, tb, se, te = boundary[b].tolist()
        p = {}
        for s in range(sb, se + 1):
            for t in range(tb, te + 1):
                if (s, t) == (sb, tb):
                    p[s, t] = 0.0
                    continue
                a = p[s - 1, t] + px[b, s - 1, t].item() if s > sb else -math.inf
                c = p[s, t - 1] + py[b, s, t - 1].item() if t > tb else -math.inf
                p[s, t] = _logadd(a, c)
        assert got[b].item() == pytest.approx(p[se, te], rel=1e-12)


# ----------------------------------------------------------------------------- pruning


def test_pruned_equals_full_when_range_covers_everything():
    am, lm, symbols = _batch(B=3, T=6, U=4, V=7, seed=2)
    boundary = _boundary([4, 3, 0], [6, 4, 2])
    _, (pxg, pyg) = R.rnnt_loss_smoothed(lm, am, symbols, 0, 0.1, 0.0, boundary, return_grad=True)
    ranges = R.get_rnnt_prune_ranges(pxg, pyg, boundary, s_range=10)
    assert ranges.shape == (3, 6, 5)
    g = torch.Generator().manual_seed(9)
    w = torch.randn(7, 7, generator=g, dtype=torch.float64)
    joiner = lambda a, b: torch.tanh(a + b) @ w  # a non-additive joiner
    am_p, lm_p = R.do_rnnt_pruning(am, lm, ranges)
    pruned = R.rnnt_loss_pruned(joiner(am_p, lm_p), symbols, ranges, 0, boundary, reduction="none")
    full = R.rnnt_loss(joiner(am.unsqueeze(2), lm.unsqueeze(1)), symbols, 0, boundary, reduction="none")
    torch.testing.assert_close(pruned, full, rtol=1e-10, atol=1e-10)


def test_pruned_matches_naive_restricted_lattice():
    am, lm, symbols = _batch(B=2, T=8, U=6, V=7, seed=4)
    boundary = _boundary([6, 4], [8, 6])
    _, (pxg, pyg) = R.rnnt_loss_simple(lm, am, symbols, 0, boundary, return_grad=True)
    ranges = R.get_rnnt_prune_ranges(pxg, pyg, boundary, s_range=3)
    am_p, lm_p = R.do_rnnt_pruning(am, lm, ranges)
    logits = torch.tanh(am_p + lm_p) * 3
    got = R.rnnt_loss_pruned(logits, symbols, ranges, 0, boundary, reduction="none")
    for b in range(2):
        T, U = boundary[b, 3].item(), boundary[b, 2].item()
        dense = torch.full((T, U + 1, 7), float("nan"), dtype=torch.float64)
        for t in range(T):
            for r, u in enumerate(ranges[b, t].tolist()):
                if u <= U:
                    dense[t, u] = logits[b, t, r].log_softmax(-1)
        kept = {(t, u) for t in range(T) for u in ranges[b, t].tolist()}
        want = naive_rnnt(dense, symbols[b, :U].tolist(), T, allowed=lambda t, u, k=kept: (t, u) in k)
        assert got[b].item() == pytest.approx(want, rel=1e-10)


def test_prune_ranges_properties():
    g = torch.Generator().manual_seed(7)
    B, T, U, V = 4, 30, 12, 9
    am = torch.randn(B, T, V, generator=g) * 3
    lm = torch.randn(B, U + 1, V, generator=g) * 3
    symbols = torch.randint(1, V, (B, U), generator=g)
    s_lens, t_lens = [12, 7, 1, 10], [30, 20, 9, 4]
    boundary = _boundary(s_lens, t_lens)
    _, (pxg, pyg) = R.rnnt_loss_smoothed(lm, am, symbols, 0, 0.25, 0.0, boundary, return_grad=True)
    for s_range in (2, 4, 5):
        ranges = R.get_rnnt_prune_ranges(pxg, pyg, boundary, s_range)
        Rr = ranges.shape[2]
        assert Rr >= s_range
        start = ranges[:, :, 0]
        assert (start[:, 0] == 0).all()
        steps = start[:, 1:] - start[:, :-1]
        assert (steps >= 0).all() and (steps <= Rr - 1).all()
        assert (ranges[:, :, 1:] - ranges[:, :, :-1] == 1).all()
        assert ranges.max() <= U
        for b in range(B):
            assert s_lens[b] in ranges[b, t_lens[b] - 1].tolist()  # the last real frame reaches the end


# ----------------------------------------------------------------------------- gradients


def test_gradcheck_mutual_information():
    g = torch.Generator().manual_seed(11)
    B, S, T = 2, 3, 4
    px = torch.randn(B, S, T + 1, generator=g, dtype=torch.float64, requires_grad=True)
    py = torch.randn(B, S + 1, T, generator=g, dtype=torch.float64, requires_grad=True)
    boundary = torch.tensor([[0, 0, 3, 4], [1, 1, 2, 3]])
    assert torch.autograd.gradcheck(lambda a, b: R.mutual_information_recursion(a, b, boundary), (px, py))
    assert torch.autograd.gradcheck(lambda a, b: R.mutual_information_recursion(a, b), (px, py))


def test_gradcheck_losses():
    am, lm, symbols = _batch(B=2, T=4, U=3, V=5, seed=12)
    am.requires_grad_()
    lm.requires_grad_()
    boundary = _boundary([3, 1], [4, 2])
    assert torch.autograd.gradcheck(
        lambda a, b: R.rnnt_loss_smoothed(b, a, symbols, 0, 0.2, 0.1, boundary, reduction="none"), (am, lm)
    )
    logits = torch.randn(2, 4, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: R.rnnt_loss(x, symbols, 0, boundary, reduction="sum"), (logits,))
    _, (pxg, pyg) = R.rnnt_loss_simple(lm, am, symbols, 0, boundary, return_grad=True)
    ranges = R.get_rnnt_prune_ranges(pxg, pyg, boundary, 2)
    pl = torch.randn(2, 4, 2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: R.rnnt_loss_pruned(x, symbols, ranges, 0, boundary, reduction="mean"), (pl,)
    )


def test_return_grad_is_occupation_and_no_nans():
    am, lm, symbols = _batch(B=2, T=5, U=3, V=6, seed=13)
    boundary = _boundary([3, 2], [5, 3])
    px, py = R.get_rnnt_logprobs(lm, am, symbols, 0, boundary)
    px.requires_grad_()
    py.requires_grad_()
    scores, (pxg, pyg) = R.mutual_information_recursion(px, py, boundary, return_grad=True)
    ax, ay = torch.autograd.grad(scores.sum(), [px, py])
    torch.testing.assert_close(pxg, ax)
    torch.testing.assert_close(pyg, ay)
    assert torch.isfinite(pxg).all() and torch.isfinite(pyg).all()
    # every path leaves each frame < T_b exactly once by a blank: py occupation sums to 1 per frame
    for b, (s_len, t_len) in enumerate([(3, 5), (2, 3)]):
        torch.testing.assert_close(pyg[b, :, :t_len].sum(0), torch.ones(t_len, dtype=torch.float64))
        assert pyg[b, :, t_len:].abs().sum() == 0 and pxg[b, :, t_len + 1 :].abs().sum() == 0


def test_float32_close_to_float64():
    am, lm, symbols = _batch(B=2, T=40, U=15, V=20, seed=14)
    am.requires_grad_()
    am32 = am.detach().float().requires_grad_()
    l64 = R.rnnt_loss_smoothed(lm, am, symbols, 0, 0.25, 0.0, reduction="sum")
    l32 = R.rnnt_loss_smoothed(lm.float(), am32, symbols, 0, 0.25, 0.0, reduction="sum")
    assert l32.item() == pytest.approx(l64.item(), rel=1e-5)
    (g64,) = torch.autograd.grad(l64, am)
    (g32,) = torch.autograd.grad(l32, am32)
    torch.testing.assert_close(g32.double(), g64, rtol=1e-3, atol=1e-4)


def test_errors_name_the_file():
    am, lm, symbols = _batch()
    with pytest.raises(ValueError, match="rnnt.py.*boundary"):
        R.rnnt_loss_simple(lm, am, symbols, 0, _boundary([5, 1, 1], [6, 6, 6]))
    with pytest.raises(NotImplementedError, match="regular"):
        R.rnnt_loss_simple(lm, am, symbols, 0, rnnt_type="modified")


def test_backend_selection():
    k = R.get_rnnt_backend("torch")
    assert k.name == "torch" and k.rnnt_loss_pruned is R.rnnt_loss_pruned
    assert R.get_rnnt_backend("auto").name in ("torch", "k2", "fast_rnnt")
    with pytest.raises(ValueError, match="backend"):
        R.get_rnnt_backend("warp")


# ----------------------------------------------------------------------------- fast_rnnt (optional)


def test_agrees_with_fast_rnnt():
    fast_rnnt = pytest.importorskip("fast_rnnt", reason="fast_rnnt not installed (optional)")
    B, T, U, V = 3, 20, 8, 11
    am, lm, symbols = _batch(B, T, U, V, seed=21, dtype=torch.float32)
    am.requires_grad_()
    lm.requires_grad_()
    boundary = _boundary([8, 5, 2], [20, 12, 6])
    kw = {"symbols": symbols, "termination_symbol": 0, "boundary": boundary}
    ours, (pxg, pyg) = R.rnnt_loss_smoothed(lm=lm, am=am, lm_only_scale=0.25, am_only_scale=0.1,
                                            reduction="sum", return_grad=True, **kw)
    ref, (pxg2, pyg2) = fast_rnnt.rnnt_loss_smoothed(lm=lm, am=am, lm_only_scale=0.25, am_only_scale=0.1,
                                                     reduction="sum", return_grad=True, **kw)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(pxg, pxg2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pyg, pyg2, rtol=1e-4, atol=1e-5)
    for s_range in (2, 3, 5):
        r1 = R.get_rnnt_prune_ranges(pxg, pyg, boundary, s_range)
        r2 = fast_rnnt.get_rnnt_prune_ranges(px_grad=pxg2, py_grad=pyg2, boundary=boundary, s_range=s_range)
        assert torch.equal(r1, r2)
    ranges = R.get_rnnt_prune_ranges(pxg, pyg, boundary, 4)
    # (fast_rnnt's backward scales its returned px_grad/py_grad in place, so take ranges first)
    g1 = torch.autograd.grad(ours, [am, lm])
    g2 = torch.autograd.grad(ref, [am, lm])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    before = pxg.clone()
    torch.autograd.grad(R.rnnt_loss_smoothed(lm=lm, am=am, return_grad=True, **kw)[0], [am])
    assert torch.equal(before, pxg)  # ours never mutates what it handed out
    am_p, lm_p = R.do_rnnt_pruning(am, lm, ranges)
    logits = torch.tanh(am_p + lm_p) * 4
    p1 = R.rnnt_loss_pruned(logits=logits, ranges=ranges, reduction="none", **kw)
    p2 = fast_rnnt.rnnt_loss_pruned(logits=logits, ranges=ranges, reduction="none", **kw)
    torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-4)
    for a, b in zip(torch.autograd.grad(p1.sum(), [am, lm], retain_graph=True),
                    torch.autograd.grad(p2.sum(), [am, lm])):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=5e-5)
    full_logits = (am.unsqueeze(2) + lm.unsqueeze(1)).detach().requires_grad_()
    f1 = R.rnnt_loss(logits=full_logits, reduction="mean", **kw)
    f2 = fast_rnnt.rnnt_loss(logits=full_logits, reduction="mean", **kw)
    torch.testing.assert_close(f1, f2, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(torch.autograd.grad(f1, full_logits)[0], torch.autograd.grad(f2, full_logits)[0],
                               rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("triton", ["1", "0"])
def test_cuda_matches_cpu(monkeypatch, triton):
    """CUDA path (Triton kernels when available, else the PyTorch loops) against CPU float64."""
    monkeypatch.setenv("ANYPHONE_RNNT_TRITON", triton)
    am, lm, symbols = _batch(B=4, T=30, U=12, V=9, seed=31)
    boundary = _boundary([12, 7, 0, 3], [30, 17, 4, 3])

    def run(device):
        a = am.to(device).requires_grad_()
        b = lm.to(device).requires_grad_()
        bd = boundary.to(device)
        loss, (pxg, pyg) = R.rnnt_loss_smoothed(b, a, symbols.to(device), 0, 0.25, 0.1, bd, reduction="none",
                                                return_grad=True)
        ranges = R.get_rnnt_prune_ranges(pxg, pyg, bd, 3)
        ap, lp = R.do_rnnt_pruning(a, b, ranges)
        pruned = R.rnnt_loss_pruned(torch.tanh(ap + lp) * 3, symbols.to(device), ranges, 0, bd, reduction="none")
        grads = torch.autograd.grad(loss.sum() + pruned.sum(), [a, b])
        return [t.detach().cpu() for t in (loss, pruned, pxg, pyg, ranges, *grads)]

    for got, want in zip(run("cuda"), run("cpu")):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
