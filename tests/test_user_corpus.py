"""User corpora -> Shar: good items converted (16 kHz mono, normalised IPA), bad ones reported."""

import gzip
import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

from anyphone.data.shar import CorpusReport, kaldi_dir_to_shar, lhotse_manifests_to_shar, write_shar

REPO = Path(__file__).resolve().parents[1]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "local" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tone(sr: int, seconds: float, freq: float = 220.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


@pytest.fixture
def kaldi_dir(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    (d / "audio").mkdir(parents=True)
    sf.write(d / "audio" / "good1.wav", _tone(16000, 1.0), 16000)
    sf.write(d / "audio" / "good2.flac", _tone(22050, 0.5, channels=2), 22050)  # resampled + mixed
    sf.write(d / "audio" / "unk.wav", _tone(16000, 0.5), 16000)
    (d / "audio" / "empty.wav").write_bytes(b"")
    (d / "audio" / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00this is not audio at all")
    (d / "wave").write_text(
        "good1 audio/good1.wav\n"
        f"good2 {d / 'audio' / 'good2.flac'}\n"
        "missing audio/nope.wav\n"
        "empty audio/empty.wav\n"
        "corrupt audio/corrupt.wav\n"
        "unk audio/unk.wav\n"
        "notext audio/good1.wav\n"
    )
    (d / "text").write_text(
        "good1 h ə ˈl oʊ\n"
        "good2 k ʰ æ t\n"
        "missing a b\n"
        "empty a b\n"
        "corrupt a b\n"
        "unk k a Q t\n"
        "noaudio m a\n"
    )
    (d / "lang").write_text("good1 eng\ngood2 deu\n")
    return d


def test_kaldi_dir_good_and_bad(kaldi_dir: Path, tmp_path: Path, caplog):
    out = tmp_path / "shar"
    with caplog.at_level(logging.WARNING):
        report = kaldi_dir_to_shar(kaldi_dir, out, shard_size=2, language="und")
    assert isinstance(report, CorpusReport)
    assert report.written == 2
    counts = report.counts()
    assert counts == {
        "missing_audio": 1,
        "empty_audio": 1,
        "corrupt_audio": 1,
        "no_audio_entry": 1,
        "no_transcript": 1,
        "unknown_symbols": 1,
        "empty_transcript": 0,
    }
    assert report.skipped == 6
    assert report.unknown_symbols == {"Q": 1}
    # one warning line per problem, naming the utterance
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for utt, word in [("missing", "does not exist"), ("empty", "empty"), ("corrupt", "cannot be decoded"),
                      ("noaudio", "no audio entry"), ("notext", "no transcript"), ("unk", "'Q'")]:
        hits = [m for m in lines if m.startswith(f"{utt}:")]
        assert len(hits) == 1 and word in hits[0] and "\n" not in hits[0], (utt, hits)
    assert "missing=" not in report.summary() and "missing_audio=1" in report.summary()

    cuts = {c.id: c for c in CutSet.from_shar(in_dir=out)}
    assert set(cuts) == {"good1", "good2"}
    c1, c2 = cuts["good1"], cuts["good2"]
    assert c1.supervisions[0].text == "həloʊ"  # spaces and stress removed
    assert c2.supervisions[0].text == "kʰæt"
    assert c1.supervisions[0].language == "eng" and c1.custom["language"] == "eng"
    assert c2.custom["language"] == "deu"
    a2 = c2.load_audio()
    assert c2.sampling_rate == 16000 and a2.shape == (1, 8000)  # 0.5 s at 16 kHz, mono
    # the mix of channels (1 and 0.5) keeps the 220 Hz tone at 0.75 * 0.3 amplitude
    assert abs(np.abs(a2).max() - 0.225) < 0.01
    assert c1.load_audio().shape == (1, 16000)


def test_on_unknown_drop_keeps_utterance(kaldi_dir: Path, tmp_path: Path):
    report = kaldi_dir_to_shar(kaldi_dir, tmp_path / "shar", on_unknown="drop")
    assert report.written == 3 and report.counts()["unknown_symbols"] == 1
    texts = {c.id: c.supervisions[0].text for c in CutSet.from_shar(in_dir=tmp_path / "shar")}
    assert texts["unk"] == "kat"


def test_empty_and_missing_dir_are_errors(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="is empty"):
        kaldi_dir_to_shar(empty, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        kaldi_dir_to_shar(tmp_path / "nope", tmp_path / "out")
    (empty / "text").write_text("a b\n")
    with pytest.raises(FileNotFoundError, match="no 'wave' or 'wav.scp'"):
        kaldi_dir_to_shar(empty, tmp_path / "out")


def test_wav_scp_and_cli(kaldi_dir: Path, tmp_path: Path, capsys):
    (kaldi_dir / "wave").rename(kaldi_dir / "wav.scp")
    cli = _load_script("prepare_user_corpus")
    rep = tmp_path / "rep.json"
    rc = cli.main(["--data-dir", str(kaldi_dir), "--out-dir", str(tmp_path / "shar"), "--report", str(rep)])
    assert rc == 0
    assert "wrote 2 utterances" in capsys.readouterr().out
    data = json.loads(rep.read_text())
    assert data["written"] == 2 and data["problems"]["corrupt_audio"] == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["--data-dir", str(empty), "--out-dir", str(tmp_path / "o")]) == 2
    assert "is empty" in capsys.readouterr().err


def test_lhotse_manifests(tmp_path: Path):
    sf.write(tmp_path / "long.wav", _tone(8000, 2.0, channels=2), 8000)
    rec = Recording.from_file(tmp_path / "long.wav")
    sf.write(tmp_path / "gone.wav", _tone(16000, 0.5), 16000)
    gone = Recording.from_file(tmp_path / "gone.wav")
    (tmp_path / "gone.wav").unlink()
    recs = RecordingSet.from_recordings([rec, gone])
    sups = SupervisionSet.from_segments([
        SupervisionSegment("s1", rec.id, start=0.0, duration=1.0, text="a b", language="eng"),
        SupervisionSegment("s2", rec.id, start=1.0, duration=0.5, text="ʃ i"),
        SupervisionSegment("s3", "no-such-rec", start=0.0, duration=0.5, text="a"),
        SupervisionSegment("s4", gone.id, start=0.0, duration=0.5, text="a"),
    ])
    recs.to_file(tmp_path / "recordings.jsonl.gz")
    sups.to_file(tmp_path / "supervisions.jsonl.gz")
    report = lhotse_manifests_to_shar(tmp_path / "recordings.jsonl.gz", tmp_path / "supervisions.jsonl.gz",
                                      tmp_path / "shar", language="xx")
    assert report.written == 2
    assert report.counts()["no_audio_entry"] == 1 and report.counts()["missing_audio"] == 1
    cuts = {c.id: c for c in CutSet.from_shar(in_dir=tmp_path / "shar")}
    assert cuts["s1"].supervisions[0].text == "ab" and cuts["s1"].custom["language"] == "eng"
    assert cuts["s2"].custom["language"] == "xx"
    assert cuts["s2"].load_audio().shape == (1, 8000)  # 0.5 s of the 8 kHz recording, at 16 kHz


def test_write_shar_round_trip(tmp_path: Path):
    from anyphone.data.shar import make_cut, shar_fields

    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(1600 * (i + 1)).astype(np.float32) for i in range(5)]
    cuts = [make_cut(f"u{i}", w, "abc", "eng", custom={"voice": "en", "speed": 1.0}) for i, w in enumerate(waves)]
    assert write_shar(iter(cuts), tmp_path / "s", shard_size=2) == 5
    fields = shar_fields(tmp_path / "s")
    assert len(fields["cuts"]) == len(fields["recording"]) == 3
    back = list(CutSet.from_shar(in_dir=tmp_path / "s"))
    assert [c.id for c in back] == [f"u{i}" for i in range(5)]
    for c, w in zip(back, waves):
        assert c.custom["voice"] == "en" and c.custom["speed"] == 1.0
        a = c.load_audio()[0]
        assert a.shape == w.shape
        assert np.abs(a - w).max() < 1.0 / 32768 + 1e-6  # 16-bit FLAC is lossless up to quantisation
    with gzip.open(fields["cuts"][0], "rt") as f:
        assert json.loads(f.readline())["supervisions"][0]["text"] == "abc"


def test_download_fails_fast_offline(tmp_path: Path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "local" / "download_ipapack.py"), "--repo-id", "anyspeech/some-shards",
         "--out-dir", str(tmp_path / "dl")],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "HF_HUB_OFFLINE" in err[0] and "anyspeech/some-shards" in err[0]
    assert not list((tmp_path / "dl").rglob("*.tar"))


def test_download_fails_fast_when_hub_unreachable(tmp_path: Path):
    # port 9 (discard) on localhost is closed: the connection is refused at once
    env = dict(os.environ, HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9")
    proc = subprocess.run(
        [sys.executable, str(REPO / "local" / "download_ipapack.py"), "--repo-id", "anyspeech/x",
         "--out-dir", str(tmp_path / "dl")],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "cannot reach the Hugging Face hub at http://127.0.0.1:9" in err[0]
