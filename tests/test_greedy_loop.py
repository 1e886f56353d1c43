"""The one greedy transducer loop (anyphone.decoding.greedy_loop): its rules on hand-made steps, and the PyTorch,
ONNX Runtime and recogniser paths decoding the same ids through it on a tiny transducer."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from anyphone.decoding.greedy_loop import greedy_transducer_search
from anyphone.decoding.transducer import greedy_search_batch, torch_steps

V = 4  # blank 0, tokens 1..3


def _steps(no_repeat: float = 0.0):
    """Hand-made steps: logits = encoder frame + decoder output, where the decoder output is ``-no_repeat`` at
    the newest context token (so a token is not chosen twice in a row when ``no_repeat`` is large) and 0 else.
    Records the contexts it was given."""
    seen: list[list[int]] = []

    def decoder(ctx: np.ndarray) -> np.ndarray:
        assert ctx.dtype == np.int64 and ctx.ndim == 2
        seen.extend(ctx.tolist())
        out = np.zeros((ctx.shape[0], V), dtype=np.float32)
        for row, last in enumerate(ctx[:, -1]):
            if last > 0:
                out[row, last] = -no_repeat
        return out

    def joiner(enc: np.ndarray, dec: np.ndarray) -> np.ndarray:
        return enc + dec

    return decoder, joiner, seen


def _frames(n: int, t: int, row: list[float]) -> np.ndarray:
    return np.tile(np.asarray(row, dtype=np.float32), (n, t, 1))


def _search(enc, lens, no_repeat=0.0, **kw):
    decoder, joiner, _ = _steps(no_repeat)
    return greedy_transducer_search(decoder, joiner, enc, lens, blank_id=0, context_size=2, **kw)


def test_blank_penalty_decides_against_blank_exactly_where_it_should():
    enc = _frames(2, 5, [1.0, 0.5, 0.2, 0.1])  # blank leads token 1 by 0.5 on every frame
    lens = [5, 3]
    assert [h.tokens for h in _search(enc, lens).hyps] == [[], []]
    assert [h.tokens for h in _search(enc, lens, blank_penalty=0.4).hyps] == [[], []]
    out = _search(enc, lens, blank_penalty=0.6).hyps  # blank now 0.4 < 0.5: token 1 on every valid frame
    assert [h.tokens for h in out] == [[1] * 5, [1] * 3]
    assert [h.timestamps for h in out] == [[0, 1, 2, 3, 4], [0, 1, 2]]
    # the score sums the chosen token's log-probability under the penalised logits
    lp = np.log(np.exp([0.4, 0.5, 0.2, 0.1]) / np.exp([0.4, 0.5, 0.2, 0.1]).sum())
    assert out[0].score == pytest.approx(5 * lp[1], rel=1e-5)
    assert out[1].score == pytest.approx(3 * lp[1], rel=1e-5)
    # a negative penalty (a bonus) keeps blank ahead where the logits alone would emit
    enc2 = _frames(1, 4, [0.0, 0.3, 0.0, 0.0])
    assert _search(enc2, [4]).hyps[0].tokens == [1, 1, 1, 1]
    assert _search(enc2, [4], blank_penalty=-0.5).hyps[0].tokens == []


def test_context_update_and_max_sym_per_frame():
    enc = _frames(1, 3, [0.5, 0.9, 0.8, 0.0])
    # token 1, then (1 is now the newest context and loses 5) token 2, then 1 again ...
    decoder, joiner, seen = _steps(no_repeat=5.0)
    one = greedy_transducer_search(decoder, joiner, enc, [3], blank_id=0, context_size=2).hyps[0]
    assert one.tokens == [1, 2, 1] and one.timestamps == [0, 1, 2]
    assert seen == [[-1, 0], [0, 1], [1, 2], [2, 1]]  # the first context, then the two newest ids
    two = _search(enc, [3], no_repeat=5.0, max_sym_per_frame=2).hyps[0]
    assert two.tokens == [1, 2, 1, 2, 1, 2] and two.timestamps == [0, 0, 1, 1, 2, 2]
    # re-scoring stops at blank: after token 1, token 2 (0.8) trails blank (0.85), at this frame and the next
    enc3 = _frames(1, 3, [0.85, 0.9, 0.8, 0.0])
    stop = _search(enc3, [3], no_repeat=5.0, max_sym_per_frame=3).hyps[0]
    assert stop.tokens == [1] and stop.timestamps == [0]
    # ... and never goes past the limit when the decoder output does not change
    full = _search(_frames(1, 2, [0.0, 1.0, 0.0, 0.0]), [2], max_sym_per_frame=3).hyps[0]
    assert full.tokens == [1] * 6 and full.timestamps == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="max_sym_per_frame=0"):
        _search(enc, [3], max_sym_per_frame=0)
    with pytest.raises(ValueError, match="do not fit"):
        _search(enc, [4])


def test_unk_adjust_and_automaton():
    enc = _frames(1, 3, [0.0, 0.2, 0.5, 0.1])  # token 2 leads
    assert _search(enc, [3]).hyps[0].tokens == [2, 2, 2]
    # an unk_id is never emitted (nor put into the context): the frame counts as blank
    assert _search(enc, [3], unk_id=2).hyps[0].tokens == []
    # adjust: -inf forbids token 2, so token 1 is the best non-blank
    adjust = np.array([0.0, 0.0, -np.inf, 0.0], dtype=np.float32)
    out = _search(enc, [3], adjust=adjust, keep_log_probs=True)
    assert out.hyps[0].tokens == [1, 1, 1]
    assert np.all(out.log_probs[0, :, 2] == -np.inf)
    # an automaton: state 0 allows only 3, state 1 only 1, then back to state 0
    nxt = np.full((2, V), -1, dtype=np.int32)
    nxt[0, 3] = 1
    nxt[1, 1] = 0
    assert _search(enc, [3], next_state=nxt).hyps[0].tokens == [3, 1, 3]


def test_log_probs_and_batch_equals_one_at_a_time():
    rng = np.random.default_rng(0)
    enc = rng.normal(size=(3, 6, V)).astype(np.float32) * 2
    lens = [6, 4, 0]
    out = _search(enc, lens, no_repeat=1.0, blank_penalty=0.3, keep_log_probs=True)
    lp = out.log_probs
    assert lp.shape == (3, 6, V) and lp.dtype == np.float32
    for n, length in enumerate(lens):
        assert np.allclose(np.exp(lp[n, :length]).sum(-1), 1.0, atol=1e-5)
        assert np.all(lp[n, length:] == -np.inf)
        solo = _search(enc[n:n + 1, :length], [length], no_repeat=1.0, blank_penalty=0.3).hyps[0]
        assert (solo.tokens, solo.timestamps) == (out.hyps[n].tokens, out.hyps[n].timestamps)
        assert solo.score == pytest.approx(out.hyps[n].score, abs=1e-6)
    assert out.hyps[2].tokens == [] and out.hyps[2].score == 0.0


# ---------------------------------------------------------------------------------------- PyTorch and ONNX


def _tiny_transducer():
    from anyphone.models.presets import ZipformerConfig
    from anyphone.models.transducer import TransducerModel

    cfg = ZipformerConfig(
        num_encoder_layers=(1, 1), downsampling_factor=(1, 2), feedforward_dim=(32, 48), num_heads=(2, 2),
        encoder_dim=(16, 24), query_head_dim=(4,), value_head_dim=(4,), pos_head_dim=(2,), pos_dim=8,
        encoder_unmasked_dim=(16, 16), cnn_module_kernel=(7, 5), decoder_dim=16, joiner_dim=16, vocab_size=11,
    )
    torch.manual_seed(0)
    return TransducerModel(cfg).eval()


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """The tiny transducer's decoder and joiner as ONNX sessions (the wrappers the exporter uses; the encoder is
    not needed to compare the searches and is the slow part of an export)."""
    pytest.importorskip("onnxruntime")
    from anyphone.families.transducer import DecoderExportWrapper, JoinerExportWrapper
    from anyphone.inference.onnx_runtime import make_session

    model = _tiny_transducer()
    out = tmp_path_factory.mktemp("tiny_t_onnx")
    y = torch.tensor([[-1, 0], [3, 7], [9, 4]])
    e, d = torch.randn(3, 16), torch.randn(3, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(DecoderExportWrapper(model).eval(), (y,), str(out / "decoder.onnx"), dynamo=False,
                          input_names=["y"], output_names=["decoder_out"], dynamic_axes={"y": {0: "N"}})
        torch.onnx.export(JoinerExportWrapper(model).eval(), (e, d), str(out / "joiner.onnx"), dynamo=False,
                          input_names=["encoder_out", "decoder_out"], output_names=["logit"],
                          dynamic_axes={"encoder_out": {0: "N"}, "decoder_out": {0: "N"}})
    return model, make_session(out / "decoder.onnx", "cpu"), make_session(out / "joiner.onnx", "cpu")


def test_pytorch_and_onnx_paths_decode_the_same_ids(tiny_onnx):
    from anyphone.inference.onnx_runtime import onnx_steps

    model, dec_sess, join_sess = tiny_onnx
    g = torch.Generator().manual_seed(5)
    enc = torch.randn(3, 12, 24, generator=g) * 3  # raw encoder output (N, T, encoder_dim)
    lens = [12, 9, 5]
    with torch.no_grad():
        proj = model.joiner.encoder_proj(enc)
    kw = {"blank_id": 0, "context_size": model.decoder.context_size}
    counts = []
    for penalty in (-1e4, -1.0, -0.5, 0.0, 1e4):
        ref = greedy_search_batch(model, enc, torch.tensor(lens), blank_penalty=penalty, return_timestamps=True)
        via_torch = greedy_transducer_search(*torch_steps(model, "cpu"), proj, lens, blank_penalty=penalty, **kw)
        via_onnx = greedy_transducer_search(*onnx_steps(dec_sess, join_sess), proj.numpy(), lens,
                                            blank_penalty=penalty, **kw)
        assert [h.tokens for h in via_torch.hyps] == [h.tokens for h in ref]
        assert [h.tokens for h in via_onnx.hyps] == [h.tokens for h in ref], penalty
        assert [h.timestamps for h in via_onnx.hyps] == [h.timestamps for h in ref]
        assert [h.score for h in via_onnx.hyps] == pytest.approx([h.score for h in ref], abs=1e-3)
        counts.append(sum(len(h.tokens) for h in ref))
    # a large bonus for blank emits nothing, a large penalty a token on every valid frame (this random model does
    # that already at 0); in between, the larger the penalty the more tokens
    assert counts[0] == 0 and counts[-1] == sum(lens)
    assert counts == sorted(counts) and 0 < counts[1] < counts[2] < counts[3], counts


def test_recognizer_loop_equals_greedy_search(tiny_onnx):
    """The recogniser's emit (a blank penalty of log(emit)) gives greedy_search_batch's ids for that penalty."""
    from anyphone.inference.recognizer import PhoneRecognizer
    from anyphone.text.tokenizer import IpaTokenizer

    model = tiny_onnx[0]
    tok = IpaTokenizer(["<blk>", "<sos/eos>", "<unk>", "▁", "a", "b", "d", "e", "f", "h", "i"])
    rec = PhoneRecognizer(model, tok, "transducer", batch_size=1)
    x = torch.randn(2, 120, 80, generator=torch.Generator().manual_seed(2)) * 2
    x_lens = torch.tensor([120, 90])
    with torch.no_grad():  # as the recogniser's _decode runs it
        proj, enc_lens, joiner, decoder = rec._transducer_parts(x, x_lens)
        enc, _ = model.forward_encoder(x, x_lens)
        for emit in (1.0, 20.0):
            opts = rec._options(None, 1, emit, None, False)
            lp, items = rec._transducer(proj, enc_lens, joiner, decoder, opts)
            ref = greedy_search_batch(model, enc, enc_lens, blank_penalty=math.log(emit), return_timestamps=True)
            assert [[(tok, t) for tok, t, _ in it] for it in items] == [list(zip(h.tokens, h.timestamps))
                                                                        for h in ref]
            assert lp.shape == (2, proj.shape[1], 11)
    assert sum(len(it) for it in items) > 0  # emit 20 makes the random model emit
