"""Transducer model (decoder, joiner, ZIPA compatibility) and transducer decoding."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from training_fixtures import ZIPA_REF

from anyphone.decoding.transducer import greedy_search_batch, modified_beam_search
from anyphone.models.presets import get_preset
from anyphone.models.transducer import Decoder, Joiner, TransducerModel, transducer_loss_scales

REF = ZIPA_REF


def _fixture():
    path = REF / "tiny_transducer.pt"
    if not path.exists():
        pytest.skip(f"ZIPA reference fixtures not found at {REF}")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def ref_model():
    f = _fixture()
    model = TransducerModel(get_preset("fixture_tiny")).eval()
    model.load_state_dict(f["state_dict"], strict=True)
    return f, model


def _ref_ids(f, key="greedy_token_ids", lens_key="greedy_token_lens"):
    return [row[:n].tolist() for row, n in zip(f[key], f[lens_key])]


# ----------------------------------------------------------------------------- ZIPA compatibility


def test_decoder_and_joiner_match_zipa(ref_model):
    f, model = ref_model
    with torch.no_grad():
        dec = model.decoder(f["decoder_input"], need_pad=False)
        torch.testing.assert_close(dec, f["decoder_out"], rtol=1e-4, atol=1e-4)
        logits = model.joiner(f["encoder_out"].unsqueeze(2), f["decoder_out"].unsqueeze(1))
    assert logits.shape == f["joiner_logits"].shape
    torch.testing.assert_close(logits, f["joiner_logits"], rtol=1e-4, atol=1e-4)


def test_greedy_ids_match_zipa_from_reference_encoder_out(ref_model):
    f, model = ref_model
    hyps = greedy_search_batch(model, f["encoder_out"], f["encoder_out_lens"])
    assert hyps == _ref_ids(f)
    for i in range(3):
        enc = f[f"solo{i}_encoder_out"]
        assert greedy_search_batch(model, enc, torch.tensor([enc.shape[1]]))[0] == f[f"solo{i}_greedy_token_ids"].tolist()


def test_full_model_matches_zipa(ref_model):
    f, model = ref_model
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(f["x"], f["x_lens"])
    assert enc_lens.tolist() == f["encoder_out_lens"].tolist()  # 25 Hz: ((T-7)//2 + 1)//2
    torch.testing.assert_close(enc, f["encoder_out"], rtol=0, atol=1e-4)
    assert greedy_search_batch(model, enc, enc_lens) == _ref_ids(f)
    # beam 1 of the modified beam search is the greedy search
    assert modified_beam_search(model, enc, enc_lens, beam=1) == _ref_ids(f)


@pytest.mark.parametrize("size", ["small", "large"])
def test_state_dict_matches_published_manifest(size):
    path = REF / f"transducer_{size}.keys.json"
    if not path.exists():
        pytest.skip(f"ZIPA manifest not found at {path}")
    ref = json.loads(path.read_text())
    with torch.device("meta"):
        model = TransducerModel(get_preset(size))
    got = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert got == ref["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == ref["total_params"]


def test_ctc_head_adds_only_ctc_output():
    with torch.device("meta"):
        plain = TransducerModel(get_preset("fixture_tiny"))
        joint = TransducerModel(get_preset("fixture_tiny"), use_ctc=True)
    extra = set(joint.state_dict()) - set(plain.state_dict())
    assert extra == {"ctc_output.1.weight", "ctc_output.1.bias"}


# ----------------------------------------------------------------------------- modules


def test_decoder_padding_and_no_token():
    torch.manual_seed(0)
    dec = Decoder(vocab_size=11, decoder_dim=16, blank_id=0, context_size=2).eval()
    y = torch.tensor([[0, 5, 7, 3]])
    full = dec(y, need_pad=True)  # (1, 4, 16): output u sees tokens u-1 and u
    assert full.shape == (1, 4, 16)
    for u in range(4):
        ctx = torch.tensor([[y[0, u - 1].item() if u > 0 else -1, y[0, u].item()]])
        torch.testing.assert_close(full[:, u], dec(ctx, need_pad=False)[:, 0])
    # -1 is a zero embedding, unlike token 0
    with torch.no_grad():
        e = dec.embedding(torch.tensor([0]))
    assert e.abs().sum() > 0
    with pytest.raises(ValueError, match="context_size"):
        dec(torch.tensor([[1, 2, 3]]), need_pad=False)


def test_joiner_project_input():
    torch.manual_seed(0)
    j = Joiner(encoder_dim=6, decoder_dim=5, joiner_dim=8, vocab_size=4)
    enc, dec = torch.randn(2, 3, 1, 6), torch.randn(2, 1, 2, 5)
    out = j(enc, dec)
    assert out.shape == (2, 3, 2, 4)
    torch.testing.assert_close(out, j(j.encoder_proj(enc), j.decoder_proj(dec), project_input=False))
    with pytest.raises(ValueError, match="same number of dims"):
        j(enc[0], dec)


def test_training_step_finite_losses_and_grads():
    torch.manual_seed(0)
    model = TransducerModel(get_preset("fixture_tiny"), use_ctc=True).train()
    x = torch.randn(3, 80, 80)
    x_lens = torch.tensor([80, 64, 45])
    token_ids = [[5, 6, 7, 8, 9, 10], [4, 4, 20], []]
    simple, pruned, ctc = model(x, x_lens, token_ids, prune_range=3, am_scale=0.0, lm_scale=0.25)
    for v in (simple, pruned, ctc):
        assert v.ndim == 0 and torch.isfinite(v)
    (0.5 * simple + pruned + 0.1 * ctc).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    assert model.decoder.embedding.weight.grad.abs().sum() > 0
    assert model.joiner.output_linear.weight.grad.abs().sum() > 0
    assert model.simple_am_proj.weight.grad.abs().sum() > 0


def test_pruned_loss_matches_full_loss_with_wide_range():
    """With prune_range >= U+1 the model's pruned loss equals the full RNN-T loss on the joiner grid."""
    from anyphone.losses.rnnt import rnnt_loss

    torch.manual_seed(1)
    model = TransducerModel(get_preset("fixture_tiny")).eval()
    enc = torch.randn(2, 9, 96)
    enc_lens = torch.tensor([9, 6])
    token_ids = [[3, 4, 5], [7]]
    _, pruned = model.forward_transducer(enc, enc_lens, token_ids, prune_range=10)
    y = torch.tensor([[3, 4, 5], [7, 0, 0]])
    dec = model.decoder(torch.tensor([[0, 3, 4, 5], [0, 7, 0, 0]]))
    logits = model.joiner(enc.unsqueeze(2), dec.unsqueeze(1))
    boundary = torch.tensor([[0, 0, 3, 9], [0, 0, 1, 6]])
    full = rnnt_loss(logits, y, 0, boundary, reduction="sum")
    torch.testing.assert_close(pruned, full, rtol=1e-5, atol=1e-4)


def test_loss_scales_warm_up():
    assert transducer_loss_scales(0) == (1.0, 0.1)
    assert transducer_loss_scales(1000, warm_step=2000) == pytest.approx((0.75, 0.55))
    assert transducer_loss_scales(5000, warm_step=2000, simple_loss_scale=0.3) == (0.3, 1.0)


# ----------------------------------------------------------------------------- decoding


class _ToyModel(torch.nn.Module):
    """A tiny random transducer, V=3, context 2, for exhaustive checks."""

    def __init__(self, vocab=3, dim=8, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.decoder = Decoder(vocab, dim, blank_id=0, context_size=2)
        self.joiner = Joiner(dim, dim, dim, vocab)
        with torch.no_grad():
            self.joiner.output_linear.weight.mul_(6)


def _all_sequence_scores(model, enc, T):
    """log P(y) for every label sequence under the one-symbol-per-frame topology, by enumerating
    every alignment (each frame emits blank or one token)."""
    V = model.decoder.vocab_size
    totals: dict[tuple[int, ...], float] = {}
    cache: dict[tuple[int, int, int], list[float]] = {}

    def logp(context: list[int], t: int) -> list[float]:
        key = (*context, t)
        if key not in cache:
            with torch.no_grad():
                dec = model.decoder(torch.tensor([context]), need_pad=False)[0, 0]
                cache[key] = model.joiner(enc[0, t], dec).log_softmax(-1).tolist()
        return cache[key]

    for path in itertools.product(range(V), repeat=T):
        ys, lp = [-1, 0], 0.0
        for t, tok in enumerate(path):
            lp += logp(ys[-2:], t)[tok]
            if tok != 0:
                ys.append(tok)
        key = tuple(ys[2:])
        totals[key] = lp if key not in totals else math.log(math.exp(totals[key]) + math.exp(lp))
    return totals


def test_modified_beam_search_exhaustive_beam_is_exact():
    model = _ToyModel().eval()
    T = 4
    enc = torch.randn(1, T, 8, generator=torch.Generator().manual_seed(3)) * 2
    totals = _all_sequence_scores(model, enc, T)
    hyp = modified_beam_search(model, enc, torch.tensor([T]), beam=3**T, return_timestamps=True)[0]
    # icefall's choice: best log-prob normalised by the hypothesis length (2 context ids included)
    best = max(totals, key=lambda k: totals[k] / (len(k) + 2))
    assert hyp.tokens == list(best)
    assert hyp.score == pytest.approx(totals[best], abs=1e-4)


def test_greedy_max_sym_per_frame_and_timestamps():
    model = _ToyModel(seed=1).eval()
    enc = torch.randn(3, 7, 8, generator=torch.Generator().manual_seed(4)) * 2
    lens = torch.tensor([7, 5, 0])
    one = greedy_search_batch(model, enc, lens, return_timestamps=True)
    assert one[2].tokens == [] and one[2].timestamps == []
    for h, n in zip(one, lens.tolist()):
        assert len(h.tokens) == len(h.timestamps) <= n
        assert all(0 <= a < b < n for a, b in itertools.pairwise(h.timestamps))  # one symbol per frame
    many = greedy_search_batch(model, enc, lens, max_sym_per_frame=3, return_timestamps=True)
    for h, n in zip(many, lens.tolist()):
        assert all(0 <= a <= b < n for a, b in itertools.pairwise(h.timestamps))
        assert max((h.timestamps.count(t) for t in set(h.timestamps)), default=0) <= 3
    # batched == one at a time
    for i in range(2):
        solo = greedy_search_batch(model, enc[i : i + 1, : lens[i]], lens[i : i + 1], max_sym_per_frame=3)
        assert solo[0] == many[i].tokens
    # the beam search with timestamps, on the padded batch, agrees with solo runs
    beam = modified_beam_search(model, enc, lens, beam=4)
    for i in range(2):
        assert modified_beam_search(model, enc[i : i + 1, : lens[i]], lens[i : i + 1], beam=4)[0] == beam[i]
