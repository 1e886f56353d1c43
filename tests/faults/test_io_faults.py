"""Issue 11, outputs / audio input / the CLI: hostile inputs and outputs give one line, lose nothing, run nothing.

Each test is one case of the hostile-user trial (or a related case that already passed, kept passing). The CLI is
called in-process through ``anyphone.cli.main`` (as tests/test_cli.py does) except where two real processes are
needed. The model is ZIPA's tiny random-weight CR-CTC fixture; an ONNX model is a hand-built graph with the CTC
export's inputs and outputs, so no test here runs an exporter.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from training_fixtures import ZIPA_REF

from anyphone.cli import main

REPO = Path(__file__).resolve().parents[2]
REF = ZIPA_REF
SR = 16000


def _speechy(seconds: float = 1.0, seed: int = 1) -> np.ndarray:
    """Noise bursts and tones in 0.25 s blocks: enough for the random model to emit phones."""
    rng = np.random.default_rng(seed)
    n = SR // 4
    t = np.arange(n) / SR
    blocks = [rng.standard_normal(n) * 0.2 if k % 2 == 0 else 0.4 * np.sin(2 * np.pi * (150 + 90 * k) * t)
              for k in range(round(seconds * 4))]
    return np.concatenate(blocks).astype(np.float32)


def _wav(path: Path, seconds: float = 1.0, seed: int = 1) -> Path:
    sf.write(path, _speechy(seconds, seed), SR)
    return path


def _with_rate(src: Path, dst: Path, rate: int) -> Path:
    """A copy of the 16-bit mono WAV ``src`` whose header claims ``rate`` Hz (sample rate and byte rate)."""
    b = bytearray(src.read_bytes())
    assert b[:4] == b"RIFF" and b[12:16] == b"fmt "
    b[24:28] = struct.pack("<I", rate)
    b[28:32] = struct.pack("<I", min(rate * 2, 0xFFFFFFFF))
    dst.write_bytes(bytes(b))
    return dst


def _err_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip()]


def _no_temporaries(folder: Path) -> bool:
    return not any(p.name.startswith(".tmp-") for p in folder.iterdir())


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    if not (REF / "tiny_crctc.pt").is_file():
        pytest.skip(f"ZIPA reference fixtures not found at {REF}")
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("model")
    path = folder / "tiny.pth"
    torch.save(torch.load(REF / "tiny_crctc.pt", weights_only=True)["state_dict"], path)
    (folder / "tokens.txt").write_bytes((REF / "tokens.txt").read_bytes())
    return path


@pytest.fixture(scope="module")
def exp_dir(model, tmp_path_factory) -> Path:
    """checkpoint-5.pt fine, checkpoint-10.pt pickles a call to os.system, checkpoint-15.pt cut in half."""
    exp = tmp_path_factory.mktemp("exp")
    sd = torch.load(model, weights_only=True)
    torch.save({"model": sd, "model_avg": sd, "batch_idx_train": 5}, exp / "checkpoint-5.pt")
    torch.save({"model": sd, "model_avg": sd, "batch_idx_train": 10, "evil": _Evil(exp / "PWNED")},
               exp / "checkpoint-10.pt")
    whole = (exp / "checkpoint-5.pt").read_bytes()
    (exp / "checkpoint-15.pt").write_bytes(whole[: len(whole) // 2])
    (exp / "tokens.txt").write_bytes((model.parent / "tokens.txt").read_bytes())
    return exp


class _Evil:
    """Unpickling this runs ``touch <marker>``; a safe loader must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------------------------------------------ case 1


def test_output_that_is_an_input_is_refused_before_anything_is_opened(model, tmp_path, capsys):
    wav = _wav(tmp_path / "x.wav")
    before = wav.read_bytes()
    # the model does not exist: the refusal must come first, before the model (or any input) is opened
    assert main(["recognize", "-i", str(wav), "-o", str(wav), "-m", str(tmp_path / "none.pth")]) == 2
    err = _err_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0] == f"anyphone: error: {wav}: is also an input; writing it would destroy that input"
    assert wav.read_bytes() == before
    # the same file under another name, the model and a list file are inputs too
    link = tmp_path / "link.wav"
    link.symlink_to(wav)
    lst = tmp_path / "files.txt"
    lst.write_text(f"{wav}\n", encoding="utf-8")
    model_bytes = model.read_bytes()
    for args in (["-i", str(link), "-o", str(wav)], ["-i", str(wav), "-o", str(model)],
                 ["-i", str(lst), "-o", str(lst)]):
        assert main(["recognize", *args, "-m", str(model)]) == 2
        err = _err_lines(capsys.readouterr().err)
        assert len(err) == 1 and "is also an input; writing it would destroy that input" in err[0]
    assert wav.read_bytes() == before and model.read_bytes() == model_bytes
    assert lst.read_text(encoding="utf-8") == f"{wav}\n"


def test_output_naming_a_folder_is_one_line(model, tmp_path, capsys):
    wav = _wav(tmp_path / "x.wav")
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    assert main(["recognize", "-i", str(wav), "-o", str(out_dir), "-m", str(model)]) == 2
    err = _err_lines(capsys.readouterr().err)
    assert err == [f"anyphone: error: {out_dir}: is a folder; -o takes a file name, e.g. {out_dir / 'phones.tsv'}"]
    assert list(out_dir.iterdir()) == []


def test_output_written_whole_or_not_at_all(model, tmp_path, capsys, monkeypatch):
    """An interrupted folder run leaves -o as it was and keeps the results it had in <output>.partial."""
    from anyphone.inference.api import PhoneRecognizer

    d = tmp_path / "in"
    d.mkdir()
    for k in range(3):
        _wav(d / f"{k}.wav", seed=k)
    out = tmp_path / "phones.tsv"
    assert main(["recognize", "-i", str(d), "-o", str(out), "-m", str(model), "-q"]) == 0
    whole = out.read_text(encoding="utf-8")
    assert [ln.split("\t")[0] for ln in whole.splitlines()] == ["0.wav", "1.wav", "2.wav"]
    assert _no_temporaries(tmp_path)

    real = PhoneRecognizer.recognize_many

    def interrupted(self, inputs, **kw):
        for k, item in enumerate(real(self, inputs, **kw)):
            if k == 2:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(PhoneRecognizer, "recognize_many", interrupted)
    capsys.readouterr()
    assert main(["recognize", "-i", str(d), "-o", str(out), "-m", str(model), "-q"]) == 130
    err = capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == whole  # the previous complete result, untouched
    partial = tmp_path / "phones.tsv.partial"
    assert partial.read_text(encoding="utf-8") == "".join(whole.splitlines(keepends=True)[:2])
    assert f"2 result(s) decoded before the run stopped are in {partial}" in err
    assert _no_temporaries(tmp_path)


def test_decode_result_files_are_atomic(tmp_path):
    """recogs/errs/per-language/summary files: a writer that fails part-way leaves the previous file whole."""
    from anyphone.decoding import scoring

    results = [("u1", "abc", "abd", "eng"), ("u2", "ba", "ba", "deu")]
    paths = {name: tmp_path / f"{name}.txt" for name in ("recogs", "errs", "lang", "summary")}
    scoring.write_recogs(paths["recogs"], results)
    report = scoring.write_errs(paths["errs"], "test", results, pfer=False)
    scoring.write_language_table(paths["lang"], report)
    scoring.write_summary(paths["summary"], {"test": {"PER": report.overall.per}})
    assert "u1:\tref=['a', 'b', 'c']" in paths["recogs"].read_text(encoding="utf-8")
    assert "%PER = 20.00" in paths["errs"].read_text(encoding="utf-8")  # 1 substitution in 5 phones
    assert paths["summary"].read_text(encoding="utf-8") == "test_set\tPER\ntest\t20.00\n"
    old = paths["recogs"].read_bytes()
    # the second hypothesis is not text: the writer fails after writing the first cut's lines
    with pytest.raises((TypeError, AttributeError)):
        scoring.write_recogs(paths["recogs"], [("a", "ab", "ab", ""), ("b", "ab", None, "")])
    assert paths["recogs"].read_bytes() == old
    assert _no_temporaries(tmp_path)


def _tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((80, 5)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"]),
         helper.make_node("LogSoftmax", ["logits"], ["log_probs"], axis=-1),
         helper.make_node("Identity", ["x_lens"], ["log_prob_lens"])],
        "fake_ctc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 80]),
         helper.make_tensor_value_info("x_lens", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, ["N", "T", 5]),
         helper.make_tensor_value_info("log_prob_lens", TensorProto.INT64, ["N"])],
        [w])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    onnx.save(m, str(path))
    (path.parent / "tokens.txt").write_text("<blk> 0\n<unk> 1\na 2\nb 3\nd 4\n", encoding="utf-8")
    return path


def test_exported_models_are_written_atomically(tmp_path, monkeypatch):
    """An export or metadata write that fails part-way (here: a full disk) leaves the previous model as it was
    and no temporary file; a successful one replaces it whole, metadata included."""
    import onnx

    from anyphone.export import onnx as export_onnx
    from anyphone.export import onnx_files
    from anyphone.families import crctc as crctc_family

    path = _tiny_onnx(tmp_path / "model.onnx")
    onnx_files.add_meta_data(path, {"model_type": "ctc", "vocab_size": 5})
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta == {"model_type": "ctc", "vocab_size": "5"}
    before = path.read_bytes()

    def disk_full(m, f, *a, **kw):
        Path(f).write_bytes(before[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        onnx_files.add_meta_data(path, {"precision": "fp32"})
    assert path.read_bytes() == before

    # a whole export whose exporter dies half-way: model.onnx keeps the previous model
    def dying_export(module, args, out, *rest):
        Path(out).write_bytes(b"half a model")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(onnx_files, "_torch_export", dying_export)
    monkeypatch.setattr(crctc_family, "CtcExportWrapper", lambda model: torch.nn.Identity())

    class _Ctc(torch.nn.Module):
        cfg = type("Cfg", (), {"feature_dim": 80, "to_dict": lambda self: {}, "name": "fake"})()
        ctc_output = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(4, 5))

    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_onnx.export_ctc_model(_Ctc(), path)
    assert path.read_bytes() == before
    assert _no_temporaries(tmp_path)


# ------------------------------------------------------------------------------------------------ case 2


def test_two_concurrent_runs_each_write_a_whole_output(model, tmp_path):
    """Two processes writing one -o at the same time: the file is one run's whole result, never a mix."""
    d = tmp_path / "in"
    d.mkdir()
    for k in range(4):
        _wav(d / f"{k}.wav", seed=k)
    expect = {}
    for kind, extra in (("plain", []), ("timestamp", ["--timestamp"])):
        ref = tmp_path / f"{kind}.tsv"
        assert main(["recognize", "-i", str(d), "-o", str(ref), "-m", str(model), "-q", *extra]) == 0
        expect[kind] = ref.read_text(encoding="utf-8")
    assert expect["plain"] != expect["timestamp"] and expect["timestamp"].count("\n") > 4
    out = tmp_path / "shared.tsv"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "anyphone.cli", "recognize", "-i", str(d), "-o", str(out),
                               "-m", str(model), "-q", "--num-threads", "1", *extra], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for extra in ([], ["--timestamp"])]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert out.read_text(encoding="utf-8") in (expect["plain"], expect["timestamp"])
    assert _no_temporaries(tmp_path)


# ------------------------------------------------------------------------------------------------ case 9


def test_bad_audio_fails_per_file_and_the_rest_is_decoded(model, tmp_path, capsys):
    """Implausible sample rates (2**31-1 Hz would allocate hundreds of GiB, 1 Hz decode for minutes) are refused
    per file; so are empty, non-audio and NaN files; the good file is still decoded."""
    d = tmp_path / "in"
    d.mkdir()
    good = _wav(d / "a_good.wav")
    _with_rate(good, d / "b_huge_rate.wav", 2**31 - 1)
    _with_rate(good, d / "c_one_hz.wav", 1)
    (d / "d_empty.wav").write_bytes(b"")
    (d / "e_text.wav").write_text("not audio", encoding="utf-8")
    nan = _speechy()
    nan[100] = np.nan
    sf.write(d / "f_nan.wav", nan, SR, subtype="FLOAT")
    assert main(["recognize", "-i", str(d), "-m", str(model), "-q"]) == 1
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("a_good.wav\t") and lines[0].split("\t")[1]
    err = _err_lines(cap.err)
    expected = {
        "b_huge_rate.wav": "sample rate 2147483647 Hz in the header is implausible (expected 1000..384000 Hz)",
        "c_one_hz.wav": "sample rate 1 Hz in the header is implausible (expected 1000..384000 Hz)",
        "d_empty.wav": "empty file (0 bytes)",
        "e_text.wav": "not a readable audio file",
        "f_nan.wav": "NaN sample at 0.006 s",
    }
    for name, problem in expected.items():
        hits = [ln for ln in err if ln.startswith(f"anyphone: error: {d / name}: ")]
        assert len(hits) == 1 and problem in hits[0], (name, err)
    assert "anyphone: 5 of 6 file(s) failed:" in err
    # and through the API
    from anyphone.inference.audio import AudioError, load_audio

    with pytest.raises(AudioError, match=r"sample rate 1 Hz in the header is implausible"):
        load_audio(d / "c_one_hz.wav")


def test_truncated_files_are_decoded_as_far_as_they_go_with_a_note(model, tmp_path, capsys, caplog):
    from anyphone.inference.audio import load_audio

    whole = _wav(tmp_path / "whole.wav", seconds=2.0)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[: 44 + 2 * SR])  # header + 1 s of the 2 s of 16-bit samples
    with caplog.at_level(logging.WARNING, logger="anyphone.audio"):
        assert main(["recognize", "-i", str(cut), "-m", str(model), "-q"]) == 0
    assert capsys.readouterr().out.strip()  # phones from the second that is there
    notes = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(notes) == 1 and notes[0] == (
        f"{cut}: truncated file (the header promises 64000 bytes of audio data, the file holds 32000); "
        "decoding the 1.00 s that are there")
    # a FLAC file cut short loses decoder sync part-way: what decoded before that is kept
    flac = tmp_path / "whole.flac"
    sf.write(flac, _speechy(4.0), SR)
    cut_flac = tmp_path / "cut.flac"
    cut_flac.write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="anyphone.audio"):
        y, _ = load_audio(cut_flac)
    assert SR <= len(y) < 4 * SR
    assert any(f"{cut_flac}: truncated file (decoding stopped after" in r.getMessage() for r in caplog.records)


def _make_odd_names(d: Path) -> list[str]:
    names = [os.fsdecode(b"caf\xe9.wav"), "tab\there.wav", "new\nline.wav"]
    try:
        for k, n in enumerate(names):
            os.replace(_wav(d / "plain.wav", seed=k), d / n)  # soundfile itself cannot write such a name
    except (OSError, UnicodeEncodeError) as e:
        pytest.skip(f"this file system does not take such names ({e})")
    return names


def test_odd_file_names_work_and_are_printed_escaped(model, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    _make_odd_names(d)
    out = tmp_path / "phones.tsv"
    assert main(["recognize", "-i", str(d), "-m", str(model), "-q", "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["caf\\xe9.wav", "new\\nline.wav", "tab\\there.wav"]
    assert all(len(ln.split("\t")) == 2 and ln.split("\t")[1] for ln in lines)
    # a single odd file: stderr notes name it escaped too, on one line
    assert main(["recognize", "-i", str(d / "new\nline.wav"), "-i", str(tmp_path / "gone\n.wav"),
                 "-m", str(model), "-q"]) == 1
    err = _err_lines(capsys.readouterr().err)
    assert err[0] == f"anyphone: error: {tmp_path}/gone\\n.wav: no such file or folder"


def test_dangling_symlinks_are_listed_among_the_failures(model, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    _wav(d / "a.wav")
    (d / "b.wav").symlink_to(tmp_path / "moved_away.wav")
    assert main(["recognize", "-i", str(d), "-m", str(model), "-q"]) == 1
    cap = capsys.readouterr()
    assert [ln.split("\t")[0] for ln in cap.out.splitlines()] == ["a.wav"]
    err = _err_lines(cap.err)
    problem = f"{d / 'b.wav'}: dangling symbolic link (its target {tmp_path / 'moved_away.wav'} does not exist)"
    assert err == [f"anyphone: error: {problem}", "anyphone: 1 of 2 file(s) failed:", f"  {problem}"]


def test_list_file_with_a_missing_line_reports_it_and_processes_the_rest(model, tmp_path, capsys):
    a, b = _wav(tmp_path / "a.wav", seed=1), _wav(tmp_path / "b.wav", seed=2)
    lst = tmp_path / "files.txt"
    lst.write_text(f"{a}\nmissing.wav\n{b}\n", encoding="utf-8")
    assert main(["recognize", "-i", str(lst), "-m", str(model), "-q"]) == 1
    cap = capsys.readouterr()
    assert [ln.split("\t")[0] for ln in cap.out.splitlines()] == [str(a), str(b)]
    err = _err_lines(cap.err)
    assert err[0] == (f"anyphone: error: {lst}: line 2: missing.wav not found (relative paths are taken from "
                      f"{tmp_path})")
    assert err[1] == "anyphone: 1 of 3 file(s) failed:"


def test_non_utf8_list_file_is_one_line(model, tmp_path, capsys):
    lst = tmp_path / "files.txt"
    lst.write_bytes(b"a.wav\ncaf\xe9.wav\n")
    assert main(["recognize", "-i", str(lst), "-m", str(model)]) == 1
    err = _err_lines(capsys.readouterr().err)
    assert err == [(f"anyphone: error: {lst}: line 2: not UTF-8 text (byte 0xe9); a list file holds one path "
                    "per line in UTF-8")]


def test_kaldi_pipes_in_a_list_are_refused_and_never_run(model, tmp_path, capsys):
    good = _wav(tmp_path / "a.wav")
    marker = tmp_path / "RAN"
    scp = tmp_path / "wav.scp"
    scp.write_text(f"utt1 touch {marker} |\nutt2 {good}\n", encoding="utf-8")
    assert main(["recognize", "-i", str(scp), "-m", str(model), "-q"]) == 1
    cap = capsys.readouterr()
    assert [ln.split("\t")[0] for ln in cap.out.splitlines()] == [str(good)]
    assert f"{scp}: line 1: utt1 touch {marker} |: Kaldi pipe commands are not supported" in cap.err
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ case 10


def test_corrupt_onnx_model_is_one_line_exit_2(tmp_path, capsys):
    wav = _wav(tmp_path / "a.wav")
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf" * 10)
    (tmp_path / "tokens.txt").write_text("<blk> 0\na 1\n", encoding="utf-8")
    assert main(["recognize", "-i", str(wav), "-m", str(bad)]) == 2
    err = _err_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"anyphone: error: {bad}: not a readable ONNX model (")


def test_pickled_or_corrupt_checkpoint_named_by_iter_is_one_line(model, exp_dir, tmp_path, capsys):
    wav = _wav(tmp_path / "a.wav")
    base = ["recognize", "-i", str(wav), "-m", str(exp_dir), "--avg", "1", "--use-averaged-model", "0",
            "--batch-size", "1"]
    assert main([*base, "--iter", "10"]) == 2
    err = _err_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"anyphone: error: {exp_dir / 'checkpoint-10.pt'}: refused to load")
    assert not (exp_dir / "PWNED").exists()
    assert main([*base, "--iter", "15"]) == 2
    err = _err_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(
        f"anyphone: error: {exp_dir / 'checkpoint-15.pt'}: not a readable PyTorch checkpoint")
    assert main([*base, "--iter", "5"]) == 0  # the good one still works
    assert capsys.readouterr().out.strip()
    # the pickled file named directly (this already gave one line; it must keep doing so)
    assert main(["recognize", "-i", str(wav), "-m", str(exp_dir / "checkpoint-10.pt")]) == 2
    err = _err_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"anyphone: error: {exp_dir / 'checkpoint-10.pt'}: refused to load")
    assert not (exp_dir / "PWNED").exists()


def _decode_args(exp: Path, **kw):
    from anyphone.evaluation.config import WeightChoice

    return WeightChoice(exp_dir=exp, use_averaged_model=False, **kw)


def _fixture_model():
    from anyphone.models.ctc import CtcModel
    from anyphone.models.presets import PRESETS

    return CtcModel(PRESETS["fixture_tiny"].replace(vocab_size=127))


def test_decode_iter_pickled_or_corrupt_checkpoint_is_one_line(exp_dir):
    from anyphone.evaluation.run import load_decoding_weights

    model = _fixture_model()
    with pytest.raises(SystemExit) as e:
        load_decoding_weights(_decode_args(exp_dir, iter=10), model)
    assert str(e.value).startswith(f"{exp_dir / 'checkpoint-10.pt'}: refused to load") and "\n" not in str(e.value)
    assert not (exp_dir / "PWNED").exists()
    with pytest.raises(SystemExit) as e:
        load_decoding_weights(_decode_args(exp_dir, iter=15), model)
    assert str(e.value).startswith(f"{exp_dir / 'checkpoint-15.pt'}: not a readable PyTorch checkpoint")
    assert load_decoding_weights(_decode_args(exp_dir, iter=5), model) == "iter-5-avg-1"


def test_wrong_shape_weights_name_the_file_the_tensor_and_the_flag(model, tmp_path, capsys):
    wav = _wav(tmp_path / "a.wav")
    sd = torch.load(model, weights_only=True)
    key = "encoder.encoders.0.layers.0.feed_forward1.out_proj.weight"
    sd[key] = sd[key][:, :-1].clone()
    bad = tmp_path / "odd.pth"
    torch.save(sd, bad)
    (tmp_path / "tokens.txt").write_bytes((model.parent / "tokens.txt").read_bytes())
    assert main(["recognize", "-i", str(wav), "-m", str(bad)]) == 2
    err = _err_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"anyphone: error: {bad}: ")
    assert f"{key} has shape (48, 71), expected (48, 72)" in err[0]
    assert "--model-size" in err[0] and "config=" not in err[0]
    # a size that is not the one it was trained with
    assert main(["recognize", "-i", str(wav), "-m", str(model), "--model-size", "tiny"]) == 2
    err = _err_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"anyphone: error: {model}: the given config (tiny) does not fit")
    assert "--model-size tiny is not the size it was trained with" in err[0]
    # decode.py / export.py: the model comes from the flags, the weights from --checkpoint
    from anyphone.evaluation.run import load_decoding_weights

    with pytest.raises(SystemExit) as e:
        load_decoding_weights(_decode_args(tmp_path, checkpoint=bad), _fixture_model())
    msg = str(e.value)
    assert msg.startswith(f"{bad}: this checkpoint does not fit the model ({key} has shape (48, 71), expected "
                          "(48, 72))") and "--model-size" in msg and "\n" not in msg


# ------------------------------------------------------------------------------------------------ ONNX script


def test_onnx_batch_decode_script_fails_per_file(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("onnx_batch_decode", REPO / "local" / "onnx_batch_decode.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (tmp_path / "m").mkdir()
    onnx_model = _tiny_onnx(tmp_path / "m" / "model.onnx")
    d = tmp_path / "in"
    d.mkdir()
    good = _wav(d / "a.wav")
    _wav(d / "tab\there.wav", seed=3)
    _with_rate(good, d / "b_huge.wav", 2**31 - 1)
    (d / "c.wav").symlink_to(tmp_path / "nowhere.wav")
    base = ["--model-type", "ctc", "--provider", "cpu", "--batch-size", "2"]
    assert script.main([str(d), "--model-path", str(onnx_model), *base]) == 1
    cap = capsys.readouterr()
    assert [ln.split("\t")[0] for ln in cap.out.splitlines()] == ["a", "tab\\there"]
    err = _err_lines(cap.err)
    assert "onnx_batch_decode: 2 of 4 file(s) failed:" in err
    assert any("b_huge.wav: sample rate 2147483647 Hz in the header is implausible" in ln for ln in err)
    assert any("c.wav: dangling symbolic link" in ln for ln in err)
    corrupt = tmp_path / "m" / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 20)
    assert script.main([str(d), "--model-path", str(corrupt), *base]) == 2
    err = _err_lines(capsys.readouterr().err)
    assert err == [(f"onnx_batch_decode: error: {corrupt}: not a readable ONNX model (Protobuf parsing "
                    "failed.); export it again with export.py --onnx 1")]
