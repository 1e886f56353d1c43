"""Tests for the ``anyphone`` command line (anyphone/cli.py).

A few runs go through ``python -m anyphone.cli`` in a subprocess (the real entry point, exit codes, stderr);
the rest call ``main()`` in-process, which is much faster. The model is ZIPA's tiny random-weight CR-CTC fixture.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hub_cache import make_hub_repo
from training_fixtures import ZIPA_REF

from anyphone.cli import main

REF = ZIPA_REF
SR = 16000


def _speechy(seconds: float = 2.0, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = SR // 4
    t = np.arange(n) / SR
    blocks = []
    for k in range(round(seconds * 4)):
        if k % 3 == 0:
            blocks.append(rng.standard_normal(n) * 0.2)
        elif k % 3 == 1:
            blocks.append(0.4 * np.sin(2 * np.pi * (150 + 100 * (k % 12)) * t))
        else:
            blocks.append(0.01 * rng.standard_normal(n))
    return np.concatenate(blocks).astype(np.float32)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    if not (REF / "tiny_crctc.pt").is_file():
        pytest.skip(f"ZIPA reference fixtures not found at {REF}")
    folder = tmp_path_factory.mktemp("model")
    path = folder / "tiny.pth"
    torch.save(torch.load(REF / "tiny_crctc.pt", weights_only=True)["state_dict"], path)
    (folder / "tokens.txt").write_bytes((REF / "tokens.txt").read_bytes())
    return path


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    """Good files in several formats/rates plus one of each bad kind."""
    import scipy.signal

    d = tmp_path_factory.mktemp("audio")
    w = _speechy()
    sf.write(d / "a.wav", w, SR)
    sf.write(d / "b_8k.flac", scipy.signal.resample_poly(w, 1, 2), 8000)
    w44 = scipy.signal.resample_poly(w, 441, 160)
    sf.write(d / "c_44k_stereo.wav", np.stack([w44, 0.5 * w44], 1), 44100)
    sf.write(d / "d.ogg", _speechy(1.5, 3), SR)
    sf.write(d / "e_silent.wav", np.zeros(SR), SR)
    (d / "f_empty.wav").write_bytes(b"")
    (d / "g_text.wav").write_text("not audio at all")
    nan = _speechy(1.0)
    nan[123] = np.nan
    sf.write(d / "h_nan.wav", nan, SR, subtype="FLOAT")
    return d


def _cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "anyphone.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, check=False)


_RECOGNIZERS: dict[Path, object] = {}


def _api_text(model: Path, path: Path, **kw) -> str:
    from anyphone.inference.api import load_model

    if model not in _RECOGNIZERS:
        _RECOGNIZERS[model] = load_model(model, batch_size=1)
    return _RECOGNIZERS[model].recognize(path, **kw)


# ---------------------------------------------------------------------------------------------- subprocess


def test_single_file_subprocess(model, audio_dir):
    out = _cli("recognize", "-i", str(audio_dir / "a.wav"), "--model", str(model), "--batch-size", "1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip("\n") == _api_text(model, audio_dir / "a.wav")
    assert out.stdout.count("\n") == 1 and out.stderr == ""


def test_directory_with_bad_files_subprocess(model, audio_dir):
    out = _cli("recognize", "-i", str(audio_dir), "--model", str(model))
    assert out.returncode == 1
    lines = out.stdout.rstrip("\n").split("\n")
    names = [ln.split("\t")[0] for ln in lines]
    assert names == ["a.wav", "b_8k.flac", "c_44k_stereo.wav", "d.ogg", "e_silent.wav"]  # sorted, good ones
    assert all(ln.split("\t")[1] for ln in lines if not ln.startswith("e_silent"))
    assert lines[4] == "e_silent.wav\t"  # silence: empty phones, not a failure
    err = out.stderr
    for name, problem in [("f_empty.wav", "empty file"), ("g_text.wav", "not a readable audio file"),
                          ("h_nan.wav", "NaN sample")]:
        hits = [ln for ln in err.splitlines() if ln.startswith("anyphone: error:") and name in ln]
        assert len(hits) == 1 and problem in hits[0], err
    assert "3 of 8 file(s) failed" in err
    summary = err[err.index("3 of 8 file(s) failed"):].splitlines()[1:]
    assert len(summary) == 3 and all(ln.startswith("  ") for ln in summary)
    assert "c_44k_stereo.wav: 2 channels mixed down to mono" in err
    assert "e_silent.wav: silent audio" in err


def test_offline_default_model_fails_fast(audio_dir, tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"), "HF_HUB_OFFLINE": "1"}
    t0 = time.monotonic()
    out = _cli("recognize", "-i", str(audio_dir / "a.wav"), env=env)
    assert out.returncode == 2
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("anyphone: error:")
    assert "zipa-cr-small-500k" in err[0] and "anyphone download zipa-cr-small-500k" in err[0]
    assert time.monotonic() - t0 < 60  # no network retries (the bound only guards against hanging)


# ---------------------------------------------------------------------------------------------- in-process


def test_timestamp_topk_and_output_file(model, audio_dir, tmp_path, capsys):
    wav = audio_dir / "a.wav"
    assert main(["recognize", "-i", str(wav), "-m", str(model), "--timestamp", "--batch-size", "1"]) == 0
    ts = capsys.readouterr().out.rstrip("\n")
    assert ts == _api_text(model, wav, timestamp=True)
    assert all(re.fullmatch(r"\d+\.\d{3} \d+\.\d{3} \S+", ln) for ln in ts.split("\n"))
    out = tmp_path / "res" / "topk.txt"
    assert main(["recognize", "-i", str(wav), "-m", str(model), "--topk", "3", "--timestamp=false",
                 "--batch-size", "1", "-o", str(out)]) == 0
    assert capsys.readouterr().out == ""
    text = out.read_text(encoding="utf-8").rstrip("\n")
    assert text == _api_text(model, wav, topk=3)
    assert all(len(re.findall(r"\S+ \(\d\.\d{3}\)", f)) == 3 for f in text.split(" | "))
    # several files with timestamps: every line carries the file name
    assert main(["recognize", "-i", str(wav), "-i", str(audio_dir / "d.ogg"), "-m", str(model), "--timestamp",
                 "-q"]) == 0
    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    assert {ln.split("\t")[0] for ln in lines} == {str(wav), str(audio_dir / "d.ogg")}


def test_emit_prior_lang_options(model, audio_dir, tmp_path, capsys):
    wav = str(audio_dir / "a.wav")
    base = ["recognize", "-i", wav, "-m", str(model), "--batch-size", "1"]
    assert main(base) == 0
    plain = capsys.readouterr().out.split()
    assert main([*base, "--emit", "0.01"]) == 0
    assert len(capsys.readouterr().out.split()) < len(plain)
    prior = tmp_path / "prior.txt"
    common = max(set(plain), key=plain.count)
    prior.write_text(f"{common} -30\n", encoding="utf-8")
    assert main([*base, "--prior", str(prior)]) == 0
    assert common not in capsys.readouterr().out.split()
    assert main([*base, "--lang", "eng"]) == 0
    from anyphone.inventory import get_inventory

    eng = set(get_inventory("eng"))
    got = capsys.readouterr().out.split()
    assert got and set(got) <= eng | {p for ph in eng for p in ph}
    # bad option values: one-line errors, exit 2
    prior.write_text("a b c\n", encoding="utf-8")
    assert main([*base, "--prior", str(prior)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prior.txt:1" in err[0]
    assert main([*base, "--lang", "xx1"]) == 2
    assert "xx1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--emit", "-1"])


def test_missing_input_and_list_file(model, audio_dir, tmp_path, capsys):
    assert main(["recognize", "-i", str(tmp_path / "nope.wav"), "-m", str(model)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.wav" in err[0] and "no such file" in err[0]
    lst = tmp_path / "files.txt"
    lst.write_text(f"{audio_dir / 'd.ogg'}\n# comment\n{audio_dir / 'a.wav'}\n", encoding="utf-8")
    assert main(["recognize", "-i", str(lst), "-m", str(model), "-q"]) == 0
    names = [ln.split("\t")[0] for ln in capsys.readouterr().out.strip().split("\n")]
    assert names == [str(audio_dir / "d.ogg"), str(audio_dir / "a.wav")]  # list order is kept
    assert main(["recognize", "-i", str(audio_dir / "a.wav"), "-m", str(tmp_path / "none.pth")]) == 2
    assert "none.pth" in capsys.readouterr().err


def test_plot_writes_png(model, audio_dir, tmp_path, capsys):
    png = tmp_path / "post.png"
    assert main(["recognize", "-i", str(audio_dir / "a.wav"), "-m", str(model), "--plot", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["recognize", "-i", str(audio_dir / "a.wav"), "-i", str(audio_dir / "d.ogg"), "-m", str(model),
                 "--plot", str(tmp_path / "many.png"), "-q"]) == 0
    assert sorted(p.name for p in tmp_path.glob("many-*.png")) == ["many-a.png", "many-d.png"]


def test_exp_dir_flags(model, audio_dir, tmp_path, capsys):
    sd = torch.load(model, weights_only=True)
    exp = tmp_path / "exp"
    exp.mkdir()
    for step in (5, 10):
        torch.save({"model": sd, "model_avg": sd, "batch_idx_train": step}, exp / f"checkpoint-{step}.pt")
    (exp / "tokens.txt").write_bytes((model.parent / "tokens.txt").read_bytes())
    wav = str(audio_dir / "a.wav")
    assert main(["recognize", "-i", wav, "-m", str(exp), "--iter", "10", "--avg", "1", "--batch-size", "1"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == _api_text(model, audio_dir / "a.wav")
    assert main(["recognize", "-i", wav, "-m", str(exp), "--iter", "7"]) == 2
    assert "checkpoint-7.pt" in capsys.readouterr().err


def test_exp_dir_decode_options_are_the_default_emit(model, audio_dir, tmp_path, capsys):
    """decode.py --save-decode-options records the blank penalty in config.json; recognize -m EXP decodes with
    it (emit = exp(blank_penalty)) unless --emit overrides it."""
    import math

    from anyphone.families import config_from_state_dict
    from anyphone.weights.expdir import record_decode_options, write_config

    sd = torch.load(model, weights_only=True)
    exp = tmp_path / "exp"
    exp.mkdir()
    torch.save({"model": sd, "batch_idx_train": 10}, exp / "checkpoint-10.pt")
    (exp / "tokens.txt").write_bytes((model.parent / "tokens.txt").read_bytes())
    family, cfg, _ = config_from_state_dict(sd)
    write_config(exp, model=cfg.to_dict(), family=family, tokens="tokens.txt")
    record_decode_options(exp, {"method": "ctc-greedy-search", "beam_size": 4, "blank_penalty": math.log(0.01),
                                "max_sym_per_frame": 1})
    wav = str(audio_dir / "a.wav")
    base = ["recognize", "-i", wav, "--batch-size", "1"]
    assert main([*base, "-m", str(model)]) == 0
    plain = capsys.readouterr().out.rstrip("\n")
    assert main([*base, "-m", str(model), "--emit", "0.01"]) == 0
    fewer = capsys.readouterr().out.rstrip("\n")
    assert len(fewer.split()) < len(plain.split())
    assert main([*base, "-m", str(exp)]) == 0
    assert capsys.readouterr().out.rstrip("\n") == fewer  # the recorded penalty
    assert main([*base, "-m", str(exp), "--emit", "1"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == plain  # --emit overrides it
    # a config.json whose decode entry is not decode options: one line naming the file
    (exp / "config.json").write_text('{"model": {}, "decode": {"blank_penalty": 1, "beam": 3}}', encoding="utf-8")
    assert main([*base, "-m", str(exp)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{exp / 'config.json'}: decode: unknown decode option(s) ['beam']" in err[0]


# ---------------------------------------------------------------------------------------------- models


def test_models_commands_offline(model, audio_dir, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["list-models"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 13 and all(ln.split()[4] == "-" for ln in rows[1:])
    assert main(["download", "zipa-cr-small-500k"]) == 1
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    repo = make_hub_repo(cache, "anyspeech/zipa-small-crctc-500k",
                         {"zipa_small_crctc_500000_avg10.pth": model.read_bytes(),
                          "tokens.txt": (model.parent / "tokens.txt").read_bytes()})
    assert main(["download", "zipa-cr-small-500k"]) == 0  # already cached: no network needed
    assert "zipa_small_crctc_500000_avg10.pth" in capsys.readouterr().out
    # the default model now comes from the cache
    assert main(["recognize", "-i", str(audio_dir / "a.wav"), "--batch-size", "1"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == _api_text(model, audio_dir / "a.wav")
    assert main(["list-models"]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("zipa-cr-small-500k "))
    assert row.split()[4] != "-"
    assert main(["remove-model", "zipa-cr-small-500k"]) == 0
    assert "removed zipa-cr-small-500k" in capsys.readouterr().out
    assert not repo.exists()
    assert main(["remove-model", "zipa-cr-small-500k"]) == 1


# ---------------------------------------------------------------------------------------------- inventories


def test_inventory_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ANYPHONE_HOME", str(tmp_path / "home"))
    assert main(["list-lang"]) == 0
    langs = capsys.readouterr().out.splitlines()
    assert len(langs) >= 100 and any(ln.startswith("eng\t") for ln in langs)
    assert main(["list-phone", "--lang", "eng"]) == 0
    eng = capsys.readouterr().out.split()
    assert "æ" in eng and len(eng) > 20
    assert main(["list-phone"]) == 0
    assert len(capsys.readouterr().out.split()) == 123  # every IPA token of the model
    inv = tmp_path / "eng.txt"
    assert main(["write-phone", "--lang", "eng", "--output", str(inv)]) == 0
    assert inv.read_text(encoding="utf-8").split() == eng
    inv.write_text("a\nb\nt\n", encoding="utf-8")
    assert main(["update-phone", "--lang", "eng", "--input", str(inv)]) == 0
    capsys.readouterr()
    assert main(["list-phone", "--lang", "eng"]) == 0
    assert capsys.readouterr().out.split() == ["a", "b", "t"]
    assert main(["restore-phone", "--lang", "eng"]) == 0
    assert "restored" in capsys.readouterr().out
    assert main(["list-phone", "--lang", "eng"]) == 0
    assert capsys.readouterr().out.split() == eng
    assert main(["list-phone", "--lang", "xx1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "xx1" in err[0]
