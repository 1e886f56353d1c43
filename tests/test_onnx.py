"""ONNX export and the torch-free ONNX runtime.

Fast tests use a 2-stack mini Zipformer (one export, ~10 s) for dynamic batch/time axes, fp16/int8
conversion, metadata and the no-torch runtime.  Tests marked ``slow`` export the ZIPA tiny fixtures
(/work/shared/reference/zipa, ~30-60 s each on a busy 2-core machine) through the export CLI and check
parity with the reference outputs; run them with ``pytest -m slow tests/test_onnx.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from training_fixtures import ZIPA_REF

from anyphone.inference.onnx_runtime import (
    OnnxCtcRecognizer,
    OnnxTransducerRecognizer,
    TokenTable,
    ctc_greedy_ids,
    fbank_batch,
    make_session,
    num_frames,
    read_model_metadata,
)

REPO = Path(__file__).resolve().parents[1]
ZIPA = ZIPA_REF
needs_zipa = pytest.mark.skipif(not (ZIPA / "tiny_crctc.pt").is_file(),
                                reason=f"ZIPA reference fixtures not found in {ZIPA}")
slow = pytest.mark.slow

# Makes "import torch" (and torch.*) raise ImportError without putting a None into sys.modules, which
# would confuse libraries that merely look for an already imported torch (scipy's array-API helpers).
_BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None
sys.meta_path.insert(0, _NoTorch())
"""


def _mini_cfg():
    from anyphone.models.presets import ZipformerConfig

    return ZipformerConfig(
        num_encoder_layers=(1, 1), downsampling_factor=(1, 2), feedforward_dim=(32, 48), num_heads=(2, 2),
        encoder_dim=(16, 24), query_head_dim=(4,), value_head_dim=(4,), pos_head_dim=(2,), pos_dim=8,
        encoder_unmasked_dim=(16, 16), cnn_module_kernel=(7, 5), decoder_dim=16, joiner_dim=16, vocab_size=11,
    )


def _features(lens: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lens), max(lens), 80, generator=g)
    for i, n in enumerate(lens):
        x[i, n:] = 0.0
    return x, torch.tensor(lens, dtype=torch.int64)


def _edit_distance(a: list[int], b: list[int]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def _agreement(hyps: list[list[int]], refs: list[list[int]]) -> float:
    """1 - (token edit distance / reference tokens), over the batch."""
    errs = sum(_edit_distance(h, r) for h, r in zip(hyps, refs))
    return 1.0 - errs / max(1, sum(len(r) for r in refs))


def _ref_ids(padded: torch.Tensor) -> list[list[int]]:
    return [[int(t) for t in row if t >= 0] for row in padded]


# ---------------------------------------------------------------------------------------------
# Fast: runtime pieces that need no export
# ---------------------------------------------------------------------------------------------


@needs_zipa
def test_fbank_matches_zipa_batched_fbank():
    ref = torch.load(ZIPA / "fbank_reference.pt", weights_only=True)
    waves = [ref["wave_0"].numpy(), ref["wave_1"].numpy()]
    x, lens = fbank_batch(waves)
    assert lens.tolist() == ref["x_lens"].tolist() == [100, 64]
    assert x.shape == tuple(ref["x"].shape)
    diff = np.abs(x - ref["x"].numpy()).max()
    # kaldi-native-fbank vs lhotse's torch fbank: ~1.4e-4 in the log domain (float32 FFTs differ)
    assert diff < 5e-4, diff
    # padding frames are exactly 0.0, and the shorter item saw the zero-padded wave (as lhotse's batch)
    assert np.all(x[1, 64:] == 0.0)
    single = ref["fbank_1_single"].numpy()
    assert np.abs(x[1, :64] - single).max() > 0.1  # last frames differ from single extraction ...
    assert np.abs(x[1, :62] - single[:62]).max() < 5e-4  # ... but only those


def test_num_frames_rounds_half_up():
    assert [num_frames(n) for n in (0, 79, 80, 160, 10193, 16000)] == [0, 0, 1, 1, 64, 100]


@needs_zipa
def test_token_table_reads_zipa_tokens():
    t = TokenTable.from_file(ZIPA / "tokens.txt")
    assert len(t) == 127
    assert t.id2token[:4] == ["<blk>", "<sos/eos>", "<unk>", "▁"]
    packaged = TokenTable.from_file(REPO / "anyphone" / "text" / "tokens.txt")
    assert packaged.id2token == t.id2token
    assert t.decode([0, 1, 2, 3]) == ""
    assert t.decode([4, 3, 5]) == t.id2token[4] + t.id2token[5]
    with pytest.raises(ValueError, match="out of range"):
        t.decode([127])


def test_token_table_rejects_gaps(tmp_path):
    p = tmp_path / "tokens.txt"
    p.write_text("<blk> 0\na 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="without gaps"):
        TokenTable.from_file(p)


@needs_zipa
def test_numpy_ctc_greedy_matches_fixture():
    d = torch.load(ZIPA / "tiny_crctc.pt", weights_only=True)
    ids = ctc_greedy_ids(d["ctc_log_probs"].numpy(), d["encoder_out_lens"].tolist())
    assert ids == _ref_ids(d["greedy_token_ids"])


# ---------------------------------------------------------------------------------------------
# Fast: one export of a mini model
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mini_ctc(tmp_path_factory):
    from anyphone.export.onnx import export_ctc_model
    from anyphone.models.ctc import CtcModel

    torch.manual_seed(0)
    model = CtcModel(_mini_cfg()).eval()
    out = tmp_path_factory.mktemp("mini_ctc")
    paths = export_ctc_model(model, out / "model.onnx", fp16=True, int8=True)
    # a tokens.txt with the mini vocabulary (the first 11 ZIPA tokens)
    lines = [f"{t} {i}" for i, t in enumerate(["<blk>", "<sos/eos>", "<unk>", "▁", "a", "b", "d", "e", "f",
                                                 "h", "i"])]
    (out / "tokens.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return model, paths


@pytest.mark.parametrize("lens", [[150], [301, 250, 77], [23, 30, 25, 24]])
def test_mini_ctc_dynamic_batch_and_time(mini_ctc, lens):
    """Exported with batch 2 and T=200; run with other batch sizes and lengths."""
    model, paths = mini_ctc
    x, x_lens = _features(lens)
    with torch.no_grad():
        ref_lp, ref_lens = model(x, x_lens)
    sess = make_session(paths[0], "cpu")
    lp, out_lens = sess.run(None, {"x": x.numpy(), "x_lens": x_lens.numpy()})
    assert out_lens.tolist() == ref_lens.tolist() == [(n - 7) // 2 for n in lens]
    assert lp.shape == tuple(ref_lp.shape)
    assert np.abs(lp - ref_lp.numpy()).max() < 1e-3


def test_mini_ctc_metadata_and_io(mini_ctc):
    _, paths = mini_ctc
    assert [p.name for p in paths] == ["model.onnx", "model.fp16.onnx", "model.int8.onnx"]
    for p, precision in zip(paths, ["fp32", "fp16", "int8"]):
        sess = make_session(p, "cpu")
        meta = read_model_metadata(sess)
        assert meta["model_type"] == "ctc"
        assert meta["vocab_size"] == "11"
        assert meta["subsampling_factor"] == "2" and meta["output_frame_shift_ms"] == "20"
        assert meta["sample_rate"] == "16000" and meta["feature_dim"] == "80"
        assert meta["context_size"] == "0" and meta["precision"] == precision
        assert json.loads(meta["config"])["encoder_dim"] == "16,24"
        ins = {i.name: (i.type, i.shape) for i in sess.get_inputs()}
        # float32 I/O for every precision; symbolic batch and time axes
        assert ins["x"][0] == "tensor(float)" and isinstance(ins["x"][1][0], str) and isinstance(ins["x"][1][1], str)
        assert sess.get_outputs()[0].type == "tensor(float)"


def test_mini_ctc_fp16_int8_close(mini_ctc):
    model, paths = mini_ctc
    x, x_lens = _features([200, 120, 90], seed=3)
    with torch.no_grad():
        ref = model(x, x_lens)[0].numpy()
    for p, tol in zip(paths[1:], [0.05, 0.5]):
        lp = make_session(p, "cpu").run(None, {"x": x.numpy(), "x_lens": x_lens.numpy()})[0]
        assert np.isfinite(lp).all()
        assert np.abs(lp - ref).max() < tol, (p.name, np.abs(lp - ref).max())
        # probabilities still normalised
        assert np.allclose(np.exp(lp).sum(-1), 1.0, atol=2e-2)


def test_runtime_needs_no_torch(mini_ctc):
    """The whole recognition path (fbank, session, greedy, tokens) runs with torch made unimportable."""
    _, paths = mini_ctc
    code = _BLOCK_TORCH + f"""
import numpy as np
from anyphone.inference.onnx_runtime import OnnxCtcRecognizer
rec = OnnxCtcRecognizer({str(paths[2])!r}, provider="cpu", num_threads=1)
rng = np.random.default_rng(0)
waves = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (16000, 7000)]
texts, lps = rec.recognize(waves, return_log_probs=True)
assert len(texts) == 2 and all(isinstance(t, str) for t in texts), texts
assert lps[0].shape == ((100 - 7) // 2, 11) and lps[1].shape == ((44 - 7) // 2, 11), [a.shape for a in lps]
texts8k = rec.recognize([waves[0][::2]], sample_rate=8000)
assert isinstance(texts8k[0], str)
print("OK", [m for m in ("torch", "lhotse", "sentencepiece") if m in sys.modules])
"""
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "OK []"


def test_convert_to_fp16_keeps_float32_io(tmp_path):
    import onnx

    from anyphone.export.onnx_files import convert_to_fp16

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 4)
            self.conv = torch.nn.Conv1d(4, 4, 3, padding=1, groups=4)

        def forward(self, x):
            y = self.lin(x).transpose(1, 2)
            return torch.cat([self.conv(y), torch.zeros_like(y)], dim=1).log_softmax(1)

    m = Tiny().eval()
    x = torch.randn(2, 5, 8)
    src = tmp_path / "t.onnx"
    torch.onnx.export(m, (x,), str(src), dynamo=True, input_names=["x"], output_names=["y"]).save(str(src))
    dst = tmp_path / "t.fp16.onnx"
    convert_to_fp16(src, dst, keep_fp32_ops=("Conv",))
    g = onnx.load(str(dst)).graph
    assert g.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert g.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    kinds = {t.name: t.data_type for t in g.initializer}
    assert onnx.TensorProto.FLOAT16 in kinds.values()
    y = make_session(dst, "cpu").run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(y - m(x).numpy()).max() < 1e-2


# ---------------------------------------------------------------------------------------------
# Slow: the ZIPA tiny fixtures through the export CLI
# ---------------------------------------------------------------------------------------------


def _export_fixture(tmp_path_factory, kind: str):
    from anyphone.export.recipe import export_main, get_export_parser

    d = torch.load(ZIPA / f"tiny_{kind}.pt", weights_only=True)
    out = tmp_path_factory.mktemp(f"fixture_{kind}")
    ckpt = out / f"tiny_{kind}.pt"
    torch.save(d["state_dict"], ckpt)
    args = get_export_parser(kind).parse_args(
        ["--checkpoint", str(ckpt), "--exp-dir", str(out / "exp"), "--tokens", str(ZIPA / "tokens.txt"),
         "--fp16", "1", "--int8", "1"])  # no model flags: the tensors describe a published checkpoint
    written = export_main(args, kind)
    return d, out / "exp", written


@pytest.fixture(scope="module")
def fixture_ctc(tmp_path_factory):
    if not (ZIPA / "tiny_crctc.pt").is_file():
        pytest.skip(f"ZIPA reference fixtures not found in {ZIPA}")
    return _export_fixture(tmp_path_factory, "crctc")


@pytest.fixture(scope="module")
def fixture_transducer(tmp_path_factory):
    if not (ZIPA / "tiny_transducer.pt").is_file():
        pytest.skip(f"ZIPA reference fixtures not found in {ZIPA}")
    return _export_fixture(tmp_path_factory, "transducer")


@slow
def test_export_cli_writes_pretrained_and_tokens(fixture_ctc):
    d, exp, written = fixture_ctc
    sd = torch.load(exp / "pretrained.pt", weights_only=True)
    assert sd.keys() == d["state_dict"].keys()
    assert all(torch.equal(sd[k], d["state_dict"][k]) for k in sd)
    assert (exp / "tokens.txt").read_bytes() == (ZIPA / "tokens.txt").read_bytes()
    assert [p.name for p in written["model"]] == [
        "model-tiny_crctc.onnx", "model-tiny_crctc.fp16.onnx", "model-tiny_crctc.int8.onnx"]


@slow
def test_fixture_ctc_parity(fixture_ctc):
    d, exp, written = fixture_ctc
    ref_ids = _ref_ids(d["greedy_token_ids"])
    x, x_lens = d["x"].numpy(), d["x_lens"].numpy()
    report = {}
    for p in written["model"]:
        rec = OnnxCtcRecognizer(p, exp / "tokens.txt", provider="cpu")
        lp, lens = rec.log_probs(x, x_lens)
        assert lens.tolist() == d["encoder_out_lens"].tolist()
        ids = ctc_greedy_ids(lp, lens)
        diff = float(np.abs(lp - d["ctc_log_probs"].numpy()).max())
        valid = np.arange(lp.shape[1])[None, :] < lens[:, None]
        frames = float((lp.argmax(-1) == d["ctc_log_probs"].numpy().argmax(-1))[valid].mean())
        report[p.name] = (diff, frames, _agreement(ids, ref_ids))
        if ".fp16" not in p.name and ".int8" not in p.name:
            assert diff < 1e-3
            assert ids == ref_ids
            # batch of 1 / no padding: the solo reference ids
            for i in range(3):
                n = int(x_lens[i])
                lp1, l1 = rec.log_probs(x[i:i + 1, :n], x_lens[i:i + 1])
                assert ctc_greedy_ids(lp1, l1)[0] == d[f"solo{i}_greedy_token_ids"].tolist()
        elif ".fp16" in p.name:
            assert diff < 0.1 and frames > 0.95 and report[p.name][2] > 0.9
        else:
            assert frames > 0.8 and report[p.name][2] > 0.6
    print("\nCTC parity (max |dlogprob|, frame argmax agreement, token agreement):", report)


@slow
def test_fixture_transducer_parity(fixture_transducer):
    d, exp, _ = fixture_transducer
    model_ref = torch.load(exp / "pretrained.pt", weights_only=True)
    w_e, b_e = model_ref["joiner.encoder_proj.weight"], model_ref["joiner.encoder_proj.bias"]
    w_d, b_d = model_ref["joiner.decoder_proj.weight"], model_ref["joiner.decoder_proj.bias"]
    enc_proj = (d["encoder_out"] @ w_e.T + b_e).numpy()
    dec_proj = (d["decoder_out"][:, 0] @ w_d.T + b_d).numpy()
    ref_ids = _ref_ids(d["greedy_token_ids"])
    x, x_lens = d["x"].numpy(), d["x_lens"].numpy()
    report = {}
    for suffix in ("-tiny_transducer.onnx", "-tiny_transducer.fp16.onnx", "-tiny_transducer.int8.onnx"):
        rec = OnnxTransducerRecognizer(exp, suffix=suffix, provider="cpu")
        assert rec.context_size == 2
        enc, lens = rec.encode(x, x_lens)
        assert lens.tolist() == d["encoder_out_lens"].tolist()
        dec = rec.decoder.run(None, {"y": d["decoder_input"].numpy()})[0]
        n, t = enc_proj.shape[:2]
        logits = rec.joiner.run(None, {
            "encoder_out": enc_proj.reshape(n * t, -1),
            "decoder_out": np.repeat(dec_proj, t, axis=0),
        })[0].reshape(n, t, -1)
        ids = rec.greedy_search(enc, lens)
        diffs = (float(np.abs(enc - enc_proj).max()), float(np.abs(dec - dec_proj).max()),
                 float(np.abs(logits - d["joiner_logits"][:, :, 0].numpy()).max()))
        report[suffix] = (*diffs, _agreement(ids, ref_ids))
        if suffix == "-tiny_transducer.onnx":
            assert max(diffs) < 1e-3, diffs
            assert ids == ref_ids
            for i in range(3):
                n_i = int(x_lens[i])
                e1, l1 = rec.encode(x[i:i + 1, :n_i], x_lens[i:i + 1])
                assert np.abs(e1[0, : int(l1[0])] - (d[f"solo{i}_encoder_out"][0] @ w_e.T + b_e).numpy()).max() < 1e-3
                assert rec.greedy_search(e1, l1)[0] == d[f"solo{i}_greedy_token_ids"].tolist()
        elif "fp16" in suffix:
            assert max(diffs) < 0.1 and report[suffix][-1] > 0.9
        else:
            assert report[suffix][-1] > 0.6
    print("\ntransducer parity (max |d enc|, |d dec|, |d logits|, token agreement):", report)


@slow
def test_batch_decode_script_without_torch(fixture_ctc, tmp_path):
    import soundfile as sf

    _, _, written = fixture_ctc
    rng = np.random.default_rng(0)
    wav_dir = tmp_path / "wavs"
    wav_dir.mkdir()
    waves = {}
    for name, n in [("c", 16000), ("a", 9000), ("b", 12345)]:
        w = (0.1 * rng.standard_normal(n)).astype(np.float32)
        sf.write(wav_dir / f"{name}.wav", w, 16000, subtype="FLOAT")
        waves[name] = w
    code = _BLOCK_TORCH + (
        "import runpy; "
        f"sys.argv = ['onnx_batch_decode.py', {str(wav_dir)!r}, '--model-type', 'ctc', "
        f"'--model-path', {str(written['model'][0])!r}, '--batch-size', '2', '--provider', 'cpu']; "
        "runpy.run_path('local/onnx_batch_decode.py', run_name='__main__')"
    )
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=REPO,
                       timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().split("\n")
    assert [ln.split("\t")[0] for ln in lines] == ["a", "b", "c"]
    rec = OnnxCtcRecognizer(written["model"][0], provider="cpu")
    expect = rec.recognize([waves["a"], waves["b"]]) + rec.recognize([waves["c"]])
    assert [ln.split("\t")[1] for ln in lines] == expect
