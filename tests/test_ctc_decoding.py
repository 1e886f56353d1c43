"""Tests for anyphone.decoding.ctc."""

import itertools
import math

import pytest
import torch
from training_fixtures import ZIPA_REF

from anyphone.decoding.ctc import (
    apply_blank_scale,
    apply_prior,
    ctc_greedy_search,
    ctc_prefix_beam_search,
    ctc_sequence_log_prob,
    ctc_topk_frames,
)

SHARED = ZIPA_REF


def _frames_from_argmax(best: list[int], vocab: int, peak: float = 0.7) -> torch.Tensor:
    """(T, V) log-probs whose argmax per frame is ``best`` (peak prob, rest spread evenly)."""
    rest = (1.0 - peak) / (vocab - 1)
    probs = torch.full((len(best), vocab), rest, dtype=torch.float64)
    for t, b in enumerate(best):
        probs[t, b] = peak
    return probs.log()


def test_greedy_hand_made_matrix():
    # utt 0: argmax 0 1 1 0 1 2 2 | 3 (frame 7 is padding and must be ignored)
    # utt 1: argmax 2 2 0 2 | padding
    u0 = _frames_from_argmax([0, 1, 1, 0, 1, 2, 2, 3], vocab=4)
    u1 = _frames_from_argmax([2, 2, 0, 2, 3, 3, 3, 3], vocab=4)
    lp = torch.stack([u0, u1])
    lens = torch.tensor([7, 4])
    # repeated 1 separated by a blank stays twice; id 2 (<unk> in our vocab) is NOT dropped
    assert ctc_greedy_search(lp, lens) == [[1, 1, 2], [2, 2]]
    assert ctc_greedy_search(lp, [8, 0]) == [[1, 1, 2, 3], []]
    # another blank id: 2 becomes the blank
    assert ctc_greedy_search(lp, lens, blank_id=2) == [[0, 1, 0, 1], [0]]

    hyps = ctc_greedy_search(lp, lens, return_timestamps=True)
    assert hyps[0].tokens == [1, 1, 2]
    assert hyps[0].timestamps == [1, 4, 5]
    assert hyps[1].timestamps == [0, 3]
    assert hyps[0].probs == pytest.approx([0.7, 0.7, 0.7])


def test_greedy_ties_go_to_lowest_id():
    lp = torch.log(torch.tensor([[[0.4, 0.4, 0.2], [0.1, 0.45, 0.45]]]))
    assert ctc_greedy_search(lp, [2]) == [[1]]


def test_greedy_matches_reference_fixture():
    path = SHARED / "tiny_crctc.pt"
    if not path.exists():
        pytest.skip(f"reference fixture {path} is absent")
    ref = torch.load(path, weights_only=True)
    hyps = ctc_greedy_search(ref["ctc_log_probs"], ref["encoder_out_lens"])
    expected = [row[:n].tolist() for row, n in zip(ref["greedy_token_ids"], ref["greedy_token_lens"])]
    assert hyps == expected


def _collapse(path: tuple[int, ...], blank: int = 0) -> tuple[int, ...]:
    out = []
    prev = None
    for p in path:
        if p != prev and p != blank:
            out.append(p)
        prev = p
    return tuple(out)


def _brute_force(lp: torch.Tensor) -> dict[tuple[int, ...], float]:
    """Sum over every alignment of a (T, V) matrix, grouped by collapsed label sequence."""
    t_len, vocab = lp.shape
    scores: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(vocab), repeat=t_len):
        s = sum(float(lp[t, p]) for t, p in enumerate(path))
        key = _collapse(path)
        prev = scores.get(key, -math.inf)
        hi = max(prev, s)
        scores[key] = hi + math.log(math.exp(prev - hi) + math.exp(s - hi))
    return scores


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_prefix_beam_search_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    lp = (torch.randn(4, 3, generator=g, dtype=torch.float64) * 1.5).log_softmax(-1)  # T=4, V=3
    exact = _brute_force(lp)
    assert math.isclose(math.log(sum(math.exp(v) for v in exact.values())), 0.0, abs_tol=1e-9)

    # 31 possible prefixes, so a beam of 64 never prunes and the search is exact
    nbest = ctc_prefix_beam_search(lp[None], [4], beam=64, return_nbest=True)[0]
    got = {tuple(tokens): score for tokens, score in nbest}
    assert set(got) == set(exact)
    for key, value in exact.items():
        assert got[key] == pytest.approx(value, abs=1e-9)
        assert ctc_sequence_log_prob(lp, list(key)) == pytest.approx(value, abs=1e-9)
    best = max(exact, key=exact.get)
    assert ctc_prefix_beam_search(lp[None], [4], beam=64) == [list(best)]
    # n-best is sorted
    scores = [s for _, s in nbest]
    assert scores == sorted(scores, reverse=True)


def test_prefix_beam_search_not_worse_than_greedy():
    g = torch.Generator().manual_seed(7)
    lp = (torch.randn(5, 30, 6, generator=g) * 2.0).log_softmax(-1)
    lens = torch.tensor([30, 25, 17, 9, 1])
    greedy = ctc_greedy_search(lp, lens)
    nbest = ctc_prefix_beam_search(lp, lens, beam=4, return_nbest=True)
    for n, length in enumerate(lens.tolist()):
        best_path_score = float(lp[n, :length].max(dim=-1).values.sum())
        greedy_total = ctc_sequence_log_prob(lp[n, :length], greedy[n])
        beam_tokens, beam_score = nbest[n][0]
        assert beam_score >= best_path_score - 1e-9
        # the beam's best label sequence is at least as probable as the greedy one
        assert ctc_sequence_log_prob(lp[n, :length], beam_tokens) >= greedy_total - 1e-9
        assert len(nbest[n]) <= 4
    # pruning tokens per frame still returns valid hypotheses
    pruned = ctc_prefix_beam_search(lp, lens, beam=4, token_prune=2)
    assert len(pruned) == 5 and all(0 not in h for h in pruned)


def test_prefix_beam_search_peaky_equals_greedy():
    u0 = _frames_from_argmax([0, 1, 1, 0, 1, 2, 2, 3], vocab=4, peak=0.97)
    assert ctc_prefix_beam_search(u0[None], [8], beam=4) == [[1, 1, 2, 3]]


def test_sequence_log_prob_impossible():
    lp = _frames_from_argmax([1, 1], vocab=3)
    # "1 1" needs a blank in between: 3 frames at least
    assert ctc_sequence_log_prob(lp, [1, 1]) == -math.inf
    assert ctc_sequence_log_prob(lp, [1]) > -math.inf


def test_topk_frames():
    u0 = _frames_from_argmax([0, 1, 1, 0, 1, 2, 2, 3], vocab=4, peak=0.55)
    lp = u0[None]
    frames = ctc_topk_frames(lp, [7], k=2)[0]
    assert [f.frame for f in frames] == [1, 4, 5]
    assert [f.candidates[0][0] for f in frames] == ctc_greedy_search(lp, [7])[0]
    for f in frames:
        assert len(f.candidates) == 2
        assert all(tok != 0 for tok, _ in f.candidates)  # blank excluded
        probs = [p for _, p in f.candidates]
        assert probs == sorted(probs, reverse=True)
        assert probs[0] == pytest.approx(0.55)
        assert probs[1] == pytest.approx(0.15)
    # k larger than the non-blank vocabulary is clipped
    assert len(ctc_topk_frames(lp, [7], k=10)[0][0].candidates) == 3
    with_blank = ctc_topk_frames(lp, [7], k=4, include_blank=True)[0][0]
    assert {tok for tok, _ in with_blank.candidates} == {0, 1, 2, 3}
    assert sum(p for _, p in with_blank.candidates) == pytest.approx(1.0)


def test_blank_scale_emit():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 50, 5, generator=g, dtype=torch.float64)
    logits[..., 0] += 1.5  # mostly blank
    lp = logits.log_softmax(-1)
    lens = [50, 40]

    assert torch.allclose(apply_blank_scale(lp, 1.0), lp)
    more = apply_blank_scale(lp, 4.0)
    fewer = apply_blank_scale(lp, 0.25)
    # still normalised log-probs
    assert torch.allclose(more.exp().sum(-1), torch.ones(2, 50, dtype=torch.float64))
    # blank probability divided by emit, before renormalisation: check the odds blank : token 1
    odds_before = lp[..., 0] - lp[..., 1]
    odds_after = more[..., 0] - more[..., 1]
    assert torch.allclose(odds_after, odds_before - math.log(4.0))
    # non-blank ratios unchanged
    assert torch.allclose(more[..., 2] - more[..., 1], lp[..., 2] - lp[..., 1])

    def count(x):
        return sum(len(h) for h in ctc_greedy_search(x, lens))

    n_base, n_more, n_fewer = count(lp), count(more), count(fewer)
    assert n_fewer < n_base < n_more
    with pytest.raises(ValueError):
        apply_blank_scale(lp, 0.0)


def test_apply_prior():
    lp = _frames_from_argmax([0, 1, 1, 0, 2, 2], vocab=4)[None]
    boosted = apply_prior(lp, {3: 5.0})
    assert torch.allclose(boosted.exp().sum(-1), torch.ones(1, 6, dtype=torch.float64))
    assert ctc_greedy_search(boosted, [6]) == [[3]]
    # raw additive mode
    raw = apply_prior(lp, {1: -2.0}, renormalize=False)
    assert torch.allclose(raw[..., 1], lp[..., 1] - 2.0)
    assert torch.equal(raw[..., 2], lp[..., 2])
    # a strong negative prior removes a phone
    assert ctc_greedy_search(apply_prior(lp, {1: -10.0}), [6]) == [[2]]
    # empty prior: only renormalisation
    assert torch.allclose(apply_prior(lp, {}), lp)
    with pytest.raises(ValueError):
        apply_prior(lp, {9: 1.0})


def test_recipe_blank_penalty_lets_a_weaker_phone_through():
    from anyphone.decoding.options import DecodeOptions
    from anyphone.families import get_family

    # one frame: blank 0.6, token 5 0.4 -> nothing without a penalty; a penalty of log 2 halves blank (0.3 < 0.4)
    probs = torch.full((1, 1, 8), 1e-9)
    probs[0, 0, 0], probs[0, 0, 5] = 0.6, 0.4
    log_probs = probs.log().log_softmax(-1)

    def model(feats, lens):
        return log_probs, torch.tensor([1])

    batch = {"features": torch.zeros(1, 10, 80), "feature_lens": torch.tensor([10])}
    crctc = get_family("crctc")
    for method in ("ctc-greedy-search", "ctc-prefix-beam-search"):
        assert crctc.decode(model, batch, DecodeOptions(method=method, beam_size=4)) == [[]]
        options = DecodeOptions(method=method, beam_size=4, blank_penalty=math.log(2.0))
        assert crctc.decode(model, batch, options) == [[5]]
        # far past float range as a scale (exp(1000)); fine in the log domain
        assert crctc.decode(model, batch, DecodeOptions(method=method, blank_penalty=1000.0)) == [[5]]


def test_blank_penalty_flag_refuses_non_finite_values(capsys):
    import argparse

    from anyphone.decoding.ctc import apply_blank_penalty
    from anyphone.evaluation.recipe import add_decode_arguments

    parser = argparse.ArgumentParser(prog="decode.py")
    add_decode_arguments(parser)
    assert parser.parse_args(["--blank-penalty", "-0.5"]).blank_penalty == -0.5
    for bad in ("nan", "inf", "lots"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--blank-penalty", bad])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "--blank-penalty" in err and f"expected a finite number, got '{bad}'" in err
    with pytest.raises(ValueError, match="finite"):
        apply_blank_penalty(torch.zeros(1, 3), math.nan)
    # the scale form is the same operation: emit = exp(penalty)
    lp = torch.randn(4, 6).log_softmax(-1)
    torch.testing.assert_close(apply_blank_penalty(lp, 0.7), apply_blank_scale(lp, math.exp(0.7)))
