"""Tests for anyphone.inference.api (load_model, PhoneRecognizer) and anyphone.inference.plot.

The model is ZIPA's tiny CR-CTC / transducer reference fixture (random weights) saved as a .pth with tokens.txt,
so outputs are arbitrary phones; the tests check formats, option effects, chunking, loading paths and errors.
"""

from __future__ import annotations

import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hub_cache import make_hub_repo
from training_fixtures import ZIPA_REF

from anyphone.families import get_family
from anyphone.inference.api import PhoneRecognizer, config_from_state_dict, load_model, read_prior
from anyphone.inference.audio import AudioError
from anyphone.models.presets import get_preset
from anyphone.weights.config import derive_config, shapes_match

REF = ZIPA_REF
SR = 16000


def _need_ref() -> None:
    if not (REF / "tiny_crctc.pt").is_file():
        pytest.skip(f"ZIPA reference fixtures not found at {REF}")


def make_model_dir(folder: Path, which: str = "crctc") -> Path:
    """tiny_<which>.pt's state_dict as folder/tiny_<which>.pth with ZIPA's tokens.txt beside it."""
    _need_ref()
    folder.mkdir(parents=True, exist_ok=True)
    d = torch.load(REF / f"tiny_{which}.pt", weights_only=True)
    path = folder / f"tiny_{which}.pth"
    torch.save(d["state_dict"], path)
    (folder / "tokens.txt").write_bytes((REF / "tokens.txt").read_bytes())
    return path


def speechy(seconds: float = 3.0, seed: int = 1) -> np.ndarray:
    """Alternating noise bursts, tones and near-silence in 0.25 s blocks: varied enough for the random model
    to emit a dozen or so different phones."""
    rng = np.random.default_rng(seed)
    blocks = []
    n = SR // 4
    t = np.arange(n) / SR
    for k in range(round(seconds * 4)):
        if k % 3 == 0:
            blocks.append(rng.standard_normal(n) * 0.2)
        elif k % 3 == 1:
            blocks.append(0.4 * np.sin(2 * np.pi * (150 + 100 * (k % 12)) * t))
        else:
            blocks.append(0.01 * rng.standard_normal(n))
    return np.concatenate(blocks).astype(np.float32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny_ctc"), "crctc")


@pytest.fixture(scope="module")
def rec(model_dir) -> PhoneRecognizer:
    torch.set_num_threads(1)
    return load_model(model_dir, batch_size=1)


@pytest.fixture(scope="module")
def rec_t(tmp_path_factory) -> PhoneRecognizer:
    return load_model(make_model_dir(tmp_path_factory.mktemp("tiny_t"), "transducer"), batch_size=1)


@pytest.fixture(scope="module")
def wave() -> np.ndarray:
    return speechy()


# ---------------------------------------------------------------------------------------------- config


def _meta_state_dict(family: str, preset: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        model = get_family(family).build(get_preset(preset))
    return model.state_dict()


@pytest.mark.parametrize("family", ["crctc", "transducer"])
@pytest.mark.parametrize("preset", ["small", "large"])
def test_config_inferred_for_published_sizes(family, preset):
    fam, cfg, use_ctc = config_from_state_dict(_meta_state_dict(family, preset))
    assert (fam, cfg.name, use_ctc) == (family, preset, False)
    assert cfg.encoder_dim == get_preset(preset).encoder_dim


def test_config_fixture_and_derived_shapes():
    _need_ref()
    sd = torch.load(REF / "tiny_crctc.pt", weights_only=True)["state_dict"]
    fam, cfg, _ = config_from_state_dict(sd)
    assert (fam, cfg.name) == ("crctc", "fixture_tiny")
    # without the preset table the shapes alone still give a loadable configuration
    derived = derive_config(sd, {"vocab_size": 127})
    ref = get_preset("fixture_tiny")
    for f in ("num_encoder_layers", "downsampling_factor", "feedforward_dim", "encoder_dim", "cnn_module_kernel"):
        assert getattr(derived, f) == getattr(ref, f), f
    assert shapes_match(lambda: get_family("crctc").build(derived), sd) is None
    with pytest.raises(ValueError, match="no model of a known family"):
        config_from_state_dict({"encoder_embed.out.weight": torch.zeros(4, 4)})
    with pytest.raises(ValueError, match="does not fit"):
        config_from_state_dict(sd, config="small")


def test_greedy_matches_reference_ids(rec, rec_t):
    """The recogniser's decoders reproduce ZIPA's batched greedy ids on the fixture features."""
    for r, name in ((rec, "crctc"), (rec_t, "transducer")):
        d = torch.load(REF / f"tiny_{name}.pt", weights_only=True)
        opts = r._options(None, 1, 1.0, None, False)
        with torch.no_grad():
            if name == "crctc":
                _, items = r._ctc(*r._ctc_log_probs(d["x"], d["x_lens"]), opts)
            else:
                proj, lens, joiner, decoder = r._transducer_parts(d["x"], d["x_lens"])
                _, items = r._transducer(proj, lens, joiner, decoder, opts)
        for n, it in enumerate(items):
            ref = d["greedy_token_ids"][n, : int(d["greedy_token_lens"][n])].tolist()
            assert [tok for tok, _, _ in it] == ref, name


def test_recognition_fbank_equals_compute_fbank():
    from anyphone.data.fbank import compute_fbank
    from anyphone.inference.features import fbank

    waves = [speechy(1.0, s)[: 16000 - 977 * s] for s in range(3)]
    a, al = fbank(waves, torch.device("cpu"))
    b, bl = compute_fbank(waves)
    assert torch.equal(al, bl) and torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- recognise


def test_recognize_array_and_files(rec, wave, tmp_path):
    text = rec.recognize(wave)
    phones = text.split(" ")
    assert len(phones) >= 8 and all(phones)
    assert len(set(phones)) >= 4
    # the same audio as 16 kHz WAV and FLAC files gives the same phones
    sf.write(tmp_path / "a.wav", wave, SR, subtype="FLOAT")
    sf.write(tmp_path / "a.flac", wave, SR)
    assert rec.recognize(tmp_path / "a.wav") == text
    flac = rec.recognize(str(tmp_path / "a.flac")).split(" ")
    assert abs(len(flac) - len(phones)) <= 2  # 16-bit rounding may move a decision or two
    # resampled copies (8 kHz OGG, 44.1 kHz stereo WAV) are recognised too
    sf.write(tmp_path / "b.ogg", wave[::2], 8000)
    stereo = np.stack([wave, wave * 0.5], 1)
    import scipy.signal

    sf.write(tmp_path / "c.wav", scipy.signal.resample_poly(stereo, 441, 160, axis=0), 44100)
    names = ["b.ogg", "c.wav"]
    if "MP3" in sf.available_formats():  # libsndfile >= 1.1 reads and writes MP3
        sf.write(tmp_path / "d.mp3", wave, SR, format="MP3")
        names.append("d.mp3")
    for name in names:
        res = rec.recognize(tmp_path / name, return_result=True)
        assert res.phones and abs(res.duration - 3.0) < 0.01


def test_array_sample_rate_and_dtype(rec, wave):
    import scipy.signal

    w44 = scipy.signal.resample_poly(wave, 441, 160).astype(np.float32)
    assert rec.recognize(w44, sample_rate=44100)
    ints = (wave * 32767).astype(np.int16)
    assert rec.recognize(ints) == rec.recognize(ints.astype(np.float32) / 32767)
    assert rec.recognize(torch.from_numpy(wave)) == rec.recognize(wave)


def test_inference_batches_like_recognize(rec, wave):
    waves = [wave, wave[: SR * 2], speechy(1.5, 7)]
    single = [rec.recognize(w) for w in waves]
    assert rec.inference(waves) == single  # batch_size 1: independent of the others
    batched = rec.inference(waves, batch_size=3)
    assert len(batched) == 3 and batched[0] == single[0]  # the longest item has no padding
    assert rec.batch_size == 1


def test_timestamp_format(rec, wave):
    res = rec.recognize(wave, timestamp=True, return_result=True)
    text = res.format()
    lines = text.split("\n")
    assert len(lines) == len(res.phones)
    starts, prev_end = [], 0.0
    for line, ph in zip(lines, res.phones):
        m = re.fullmatch(r"(\d+\.\d{3}) (\d+\.\d{3}) (\S+)", line)  # start end phone
        assert m, line
        assert m.group(3) == ph
        start, end = float(m.group(1)), float(m.group(2))
        assert end >= start + 0.02 - 1e-9 and end <= 3.0 + 1e-6  # at least the phone's own 20 ms frame
        assert start >= prev_end - 1e-9  # aligned phones never overlap
        starts.append(start)
        prev_end = end
    assert starts == sorted(starts)
    assert rec.recognize(wave, timestamp=True) == text


def test_topk_format(rec, wave):
    res = rec.recognize(wave, topk=3, return_result=True)
    text = res.format()
    frames = text.split(" | ")
    assert len(frames) == len(res.tokens) >= len(res.phones)
    for frame, tok in zip(frames, res.tokens):
        pairs = re.findall(r"(\S+) \((\d\.\d{3})\)", frame)
        assert len(pairs) == 3 and " ".join(f"{a} ({b})" for a, b in pairs) == frame
        probs = [float(p) for _, p in pairs]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-3
        assert pairs[0][0] == tok.token  # the best candidate is the emitted token
    both = rec.recognize(wave, topk=2, timestamp=True).split("\n")
    assert len(both) == len(res.tokens)
    assert all(re.fullmatch(r"\d+\.\d{3} \d+\.\d{3} \S+ \(\d\.\d{3}\) \S+ \(\d\.\d{3}\)", ln) for ln in both)
    with pytest.raises(ValueError, match="topk"):
        rec.recognize(wave, topk=0)


def test_emit_changes_number_of_phones(rec, wave):
    base = rec.recognize(wave).split()
    fewer = rec.recognize(wave, emit=0.01).split()
    assert len(fewer) < len(base)
    assert rec.recognize(wave, emit=1.0).split() == base
    with pytest.raises(ValueError, match="emit"):
        rec.recognize(wave, emit=0)


def test_prior_file_parsing(rec, tmp_path):
    t2i = rec.tokenizer.token2id
    p = tmp_path / "prior.txt"
    p.write_text("# my prior\n<blk> 1.0\n\nɭ -10\nʰ 0.5\n", encoding="utf-8")
    assert read_prior(p, t2i) == {0: 1.0, t2i["ɭ"]: -10.0, t2i["ʰ"]: 0.5}
    assert read_prior({"a": -2}, t2i) == {t2i["a"]: -2.0}
    assert read_prior(None, t2i) == {}
    bad = tmp_path / "bad.txt"
    for content, pattern in [("a\n", r"bad.txt:1: .*two fields"), ("a x\n", r"bad.txt:1: 'x' is not a number"),
                             ("a 1\ntʰ 2\n", r"bad.txt:2: 'tʰ' is not a token"), ("a nan\n", "finite")]:
        bad.write_text(content, encoding="utf-8")
        with pytest.raises(ValueError, match=pattern):
            read_prior(bad, t2i)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_prior(tmp_path / "missing.txt", t2i)


def test_prior_suppresses_a_phone(rec, wave, tmp_path):
    base = rec.recognize(wave).split()
    common = max(set(base), key=base.count)
    assert len(common) == 1
    p = tmp_path / "prior.txt"
    p.write_text(f"{common} -30.0\n", encoding="utf-8")
    after = rec.recognize(wave, prior=p).split()
    assert common not in after
    # a blank prior works like emit: a large positive blank score gives fewer phones
    assert len(rec.recognize(wave, prior={"<blk>": 5.0}).split()) < len(base)


def test_lang_restricts_tokens(rec, wave, tmp_path, monkeypatch, caplog):
    from anyphone.inventory import inventory_token_mask, update_inventory

    allowed, _ = inventory_token_mask("eng", rec.tokenizer.id2token)
    res = rec.recognize(wave, lang="eng", topk=5, return_result=True)
    assert res.phones
    for t in res.tokens:
        assert rec.tokenizer.token2id[t.token] in allowed
        assert all(rec.tokenizer.token2id[c] in allowed for c, _ in t.candidates)
    # a custom inventory of three phones, one of which the model cannot produce (warned about once)
    monkeypatch.setenv("ANYPHONE_HOME", str(tmp_path / "home"))
    inv = tmp_path / "inv.txt"
    inv.write_text("a\nt\nꜛ\n", encoding="utf-8")
    update_inventory("zzx", inv)
    caplog.set_level(logging.WARNING, logger="anyphone.recognize")
    r1 = rec.recognize(wave, lang="zzx").split()
    r2 = rec.recognize(wave, lang="zzx").split()
    assert r1 == r2 and r1 and set(r1) <= {"a", "t"}
    warns = [r.getMessage() for r in caplog.records if "cannot produce" in r.getMessage()]
    assert len(warns) == 1 and "ꜛ" in warns[0]


def test_long_audio_is_chunked(model_dir, tmp_path):
    long = np.concatenate([speechy(3.0, s) for s in range(3)])  # 9 s
    r = load_model(model_dir, chunk_seconds=2.0, overlap_seconds=0.5, batch_size=2)
    res = r.recognize(long, timestamp=True, return_result=True, keep_posteriors=True)
    starts = [s.start for s in res.segments]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert starts[-1] > 7.0 and starts[0] < 1.0  # phones from every part, offset by the chunk start
    # the kept frames tile the audio without gaps or overlaps
    assert abs(res.posteriors.shape[0] - 9.0 / 0.02) <= 5
    assert np.allclose(res.posteriors.sum(1), 1.0, atol=1e-4)
    # a file is cut into the same windows (streamed, not loaded whole)
    sf.write(tmp_path / "long.wav", long, SR, subtype="FLOAT")
    assert r.recognize(tmp_path / "long.wav") == res.text


def test_silence_and_bad_arrays(rec):
    res = rec.recognize(np.zeros(SR, dtype=np.float32), return_result=True, timestamp=True)
    assert res.silent and res.phones == [] and res.format() == "" and "silent" in res.notes[0]
    assert rec.recognize(np.zeros(SR, dtype=np.float32)) == ""
    bad = speechy(1.0)
    bad[100] = np.nan
    with pytest.raises(AudioError, match="NaN sample at index 100"):
        rec.recognize(bad)
    with pytest.raises(AudioError, match="no audio samples"):
        rec.recognize(np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioError, match="shape"):
        rec.recognize(np.zeros((2, 3, 4), dtype=np.float32))
    # very short input (0.05 s) is zero-padded for the front end; only the frames of the real audio are kept
    res = rec.recognize(speechy(0.25)[:800], return_result=True, keep_posteriors=True)
    assert res.duration == pytest.approx(0.05)
    assert res.posteriors.shape == (math.ceil(0.05 / res.frame_shift), rec.tokenizer.vocab_size)
    assert res.segments and all(seg.end <= res.duration + 1e-6 for seg in res.segments)


def test_bad_files_one_line_errors(rec, tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("hello")
    y = speechy(1.0)
    y[50] = np.inf
    sf.write(tmp_path / "inf.wav", y, SR, subtype="FLOAT")
    cases = {"missing.wav": "no such file", "empty.wav": "empty file", "text.wav": "not a readable audio file",
             "inf.wav": "inf sample"}
    for name, pattern in cases.items():
        with pytest.raises(AudioError, match=pattern) as ei:
            rec.recognize(tmp_path / name)
        assert "\n" not in str(ei.value) and name in str(ei.value)
    # in a batch the good inputs still come back, in order
    sf.write(tmp_path / "good.wav", speechy(1.0), SR)
    out = list(rec.recognize_many([tmp_path / "empty.wav", tmp_path / "good.wav", tmp_path / "inf.wav"]))
    assert [type(r).__name__ for _, r in out] == ["AudioError", "RecognitionResult", "AudioError"]
    assert out[1][1].phones


def test_transducer_recognize_and_timestamps(rec_t, wave):
    res = rec_t.recognize(wave, timestamp=True, return_result=True)
    assert res.phones and res.frame_shift == pytest.approx(0.04)
    for s, nxt in zip(res.segments, res.segments[1:]):
        assert s.start < s.end <= nxt.start + 1e-9  # aligned intervals (transducer frames are 40 ms)
    assert res.format().count("\n") == len(res.phones) - 1
    assert len(rec_t.recognize(wave, topk=2).split(" | ")) == len(res.tokens)
    assert rec_t.recognize(wave, emit=0.05).count(" ") < rec_t.recognize(wave).count(" ")


def test_device_choice(model_dir):
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_model(model_dir, device="cuda")
    assert load_model(model_dir, device="auto").device.type in ("cpu", "cuda")


# ---------------------------------------------------------------------------------------------- loading paths


def test_tokens_fallbacks(model_dir, tmp_path, wave, rec):
    lone = tmp_path / "lone.pth"
    lone.write_bytes(model_dir.read_bytes())  # no tokens.txt beside it: the built-in ZIPA tokens (127)
    assert load_model(lone, batch_size=1).recognize(wave) == rec.recognize(wave)
    assert load_model(lone, tokens=model_dir.parent / "tokens.txt").tokenizer.vocab_size == 127
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_model(lone, tokens=tmp_path / "nope.txt")


def test_config_json_beside_checkpoint(model_dir, tmp_path):
    import json

    d = tmp_path / "m"
    d.mkdir()
    (d / "model.pth").write_bytes(model_dir.read_bytes())
    (d / "config.json").write_text(json.dumps(get_preset("fixture_tiny").to_dict()), encoding="utf-8")
    assert load_model(d / "model.pth").family == "crctc"
    (d / "config.json").write_text(json.dumps(get_preset("tiny").to_dict()), encoding="utf-8")
    with pytest.raises(ValueError, match="does not fit"):
        load_model(d / "model.pth")
    (d / "config.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load_model(d / "model.pth")


def test_exp_dir_with_iter_and_avg(model_dir, tmp_path, wave, rec):
    sd = torch.load(model_dir, weights_only=True)
    exp = tmp_path / "exp"
    exp.mkdir()
    for step in (10, 20):
        torch.save({"model": sd, "model_avg": sd, "batch_idx_train": step}, exp / f"checkpoint-{step}.pt")
    (exp / "tokens.txt").write_bytes((model_dir.parent / "tokens.txt").read_bytes())
    ref = rec.recognize(wave)
    assert load_model(exp, iter=20, batch_size=1).recognize(wave) == ref
    assert load_model(exp, iter=20, avg=1, batch_size=1).recognize(wave) == ref
    assert load_model(exp, batch_size=1).recognize(wave) == ref  # newest checkpoint
    r2 = load_model(exp, iter=20, avg=1, use_averaged_model=False, batch_size=1)
    assert r2.name.endswith("iter-20-avg-1")
    with pytest.raises(FileNotFoundError, match="checkpoint-30.pt"):
        load_model(exp, iter=30)
    # --avg 2 with the running averages: (A_30 * 30 - A_10 * 10) / 20 of identical weights is the same model
    torch.save({"model": sd, "model_avg": sd, "batch_idx_train": 30}, exp / "checkpoint-30.pt")
    r3 = load_model(exp, iter=30, avg=2, batch_size=1)
    assert r3.name.endswith("iter-30-avg-2-use-averaged-model") and r3.recognize(wave) == ref
    with pytest.raises(ValueError, match="exp dir"):
        load_model(model_dir, iter=10)


def make_hub_cache(cache: Path, model_dir: Path, repo_id: str = "anyspeech/zipa-small-crctc-500k",
                   ckpt: str = "zipa_small_crctc_500000_avg10.pth") -> None:
    """The tiny model stored the way huggingface_hub caches a published one."""
    make_hub_repo(cache, repo_id, {ckpt: model_dir.read_bytes(),
                                   "tokens.txt": (model_dir.parent / "tokens.txt").read_bytes()})


def test_published_name_from_offline_cache(model_dir, tmp_path, monkeypatch, wave, rec):
    from anyphone.inference.hub import ModelNotAvailableError

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    make_hub_cache(cache, model_dir)
    r = load_model("zipa-cr-small-500k", batch_size=1)
    assert r.name == "zipa-cr-small-500k" and r.family == "crctc"
    assert r.recognize(wave) == rec.recognize(wave)
    with pytest.raises(ModelNotAvailableError, match="anyphone download zipa-cr-large-500k"):
        load_model("zipa-cr-large-500k")


class _Session:
    """Stands in for an onnxruntime session: ``run(None, feed)`` -> [array]."""

    def __init__(self, fn):
        self.fn = fn

    def run(self, _names, feed):
        with torch.no_grad():
            return [self.fn(**{k: torch.from_numpy(v) for k, v in feed.items()}).numpy()]


def _fake_onnx_runtime(ctc_pth: Path, t_pth: Path):
    """A stand-in for anyphone.inference.onnx_runtime whose 'sessions' run the torch models (exporting the
    tiny models to real ONNX takes minutes), so the test checks the adapter's plumbing and file selection."""
    import types

    calls = []

    class OnnxCtcRecognizer:
        def __init__(self, path, tokens_path=None, provider="auto"):
            calls.append(("ctc", Path(path).name, Path(tokens_path).name, provider))
            self.model = load_model(ctc_pth).model

        def log_probs(self, x, x_lens):
            with torch.no_grad():
                lp, lens = self.model(torch.from_numpy(x), torch.from_numpy(x_lens))
            return lp.numpy(), lens.numpy()

    class OnnxTransducerRecognizer:
        def __init__(self, model_dir, tokens_path=None, suffix=".onnx", provider="auto"):
            calls.append(("transducer", suffix, Path(tokens_path).name, provider))
            m = self.model = load_model(t_pth).model
            self.context_size = m.decoder.context_size
            self.joiner = _Session(lambda encoder_out, decoder_out: m.joiner(encoder_out, decoder_out,
                                                                             project_input=False))
            self.decoder = _Session(lambda y: m.joiner.decoder_proj(m.decoder(y, need_pad=False)).squeeze(1))

        def encode(self, x, x_lens):
            with torch.no_grad():
                enc, lens = self.model.forward_encoder(torch.from_numpy(x), torch.from_numpy(x_lens))
                return self.model.joiner.encoder_proj(enc).numpy(), lens.numpy()

    fake = types.ModuleType("anyphone.inference.onnx_runtime")
    fake.OnnxCtcRecognizer = OnnxCtcRecognizer
    fake.OnnxTransducerRecognizer = OnnxTransducerRecognizer
    return fake, calls


def test_onnx_models_are_delegated(model_dir, rec, rec_t, tmp_path, monkeypatch, wave):
    fake, calls = _fake_onnx_runtime(model_dir, make_model_dir(tmp_path / "t", "transducer"))
    monkeypatch.setitem(sys.modules, "anyphone.inference.onnx_runtime", fake)
    import anyphone.inference as pkg

    monkeypatch.setattr(pkg, "onnx_runtime", fake, raising=False)
    ctc_file = tmp_path / "model.onnx"
    ctc_file.write_bytes(b"")
    r = load_model(ctc_file, batch_size=1)  # no tokens.txt beside it: the built-in ones
    for kw in ({}, {"timestamp": True}, {"topk": 3}, {"lang": "eng"}, {"emit": 0.1}):
        assert r.recognize(wave, **kw) == rec.recognize(wave, **kw), kw
    d = tmp_path / "t_onnx"
    d.mkdir()
    for name in ("encoder.int8.onnx", "decoder.int8.onnx", "joiner.int8.onnx"):
        (d / name).write_bytes(b"")
    (d / "tokens.txt").write_bytes((model_dir.parent / "tokens.txt").read_bytes())
    rt = load_model(d, batch_size=1)
    assert rt.family == "transducer"
    for kw in ({}, {"timestamp": True}, {"topk": 2}):
        assert rt.recognize(wave, **kw) == rec_t.recognize(wave, **kw), kw
    assert calls == [("ctc", "model.onnx", "tokens.txt", "cpu"), ("transducer", ".int8.onnx", "tokens.txt", "cpu")]


def test_recognising_imports_no_training_stack(model_dir, tmp_path):
    sf.write(tmp_path / "a.wav", speechy(1.0), SR)
    code = (
        "import sys\n"
        "from anyphone.inference.api import load_model\n"
        f"r = load_model({str(model_dir)!r})\n"
        f"print(r.recognize({str(tmp_path / 'a.wav')!r}))\n"
        # the features come from anyphone.data.fbank (lhotse's filterbank, imported the ordinary way: lhotse's
        # package import costs about 0.3 s here); nothing of anyphone's data pipeline or training is loaded
        "bad = sorted(m for m in sys.modules if m.startswith(('anyphone.training', 'anyphone.optim', "
        "'anyphone.data.module', 'anyphone.data.shar', 'anyphone.data.augment', 'anyphone.losses', "
        "'anyphone.tuning', 'tensorboard')))\n"
        "print('BAD', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("BAD []"), out.stdout


# ---------------------------------------------------------------------------------------------- plot


def test_plot_posteriorgram(rec, wave, tmp_path):
    from anyphone.inference.plot import plot_posteriorgram

    res = rec.recognize(wave, return_result=True, keep_posteriors=True)
    assert res.posteriors.shape == (math.floor(((3 * SR + 80) // 160 - 7) / 2), 127)
    png = plot_posteriorgram(res, tmp_path / "sub" / "p.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with pytest.raises(ValueError, match="keep_posteriors"):
        plot_posteriorgram(rec.recognize(wave, return_result=True), tmp_path / "q.png")
    silent = rec.recognize(np.zeros(SR, dtype=np.float32), return_result=True, keep_posteriors=True)
    assert plot_posteriorgram(silent, tmp_path / "s.png").is_file()


def test_exp_dir_selection_is_decode_pys(model_dir, tmp_path):
    """load_model(exp, iter, avg) takes the weights decode.py scores with the same flags, --avg 1 included (the
    running averages of the checkpoint and the one before), and the raw weights with use_averaged_model=False."""
    from anyphone.weights.expdir import select_state_dict

    sd = torch.load(model_dir, weights_only=True)
    exp = tmp_path / "exp"
    exp.mkdir()
    g = torch.Generator().manual_seed(0)
    for step in (10, 20):
        noisy = {k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in sd.items()}
        avg = {k: v + 0.02 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in sd.items()}
        torch.save({"model": noisy, "model_avg": avg, "batch_idx_train": step}, exp / f"checkpoint-{step}.pt")
    (exp / "tokens.txt").write_bytes((model_dir.parent / "tokens.txt").read_bytes())
    for use_avg in (True, False):
        want, _ = select_state_dict(exp, iter=20, avg=1, use_averaged_model=use_avg)
        got = load_model(exp, iter=20, avg=1, use_averaged_model=use_avg, batch_size=1).model.state_dict()
        assert all(torch.equal(got[k].cpu(), want[k].to(got[k].dtype)) for k in want)
        raw = torch.load(exp / "checkpoint-20.pt", weights_only=True)["model"]
        assert any(not torch.equal(got[k].cpu(), raw[k]) for k in raw if raw[k].is_floating_point()) == use_avg
    with pytest.raises(FileNotFoundError, match="--use-averaged-model 0 takes the raw weights"):
        load_model(exp, iter=10, avg=1)
