"""Issue 11, data files and corpus preparation: hostile or damaged data is refused or skipped, never run.

Each test builds a tiny corpus or Shar folder in a tmp dir, asserts the stable part of the one-line
message, and checks that nothing was executed (a command ``touch MARKER`` leaves no file) or lost.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import logging
import os
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import AudioSource, CutSet, MonoCut, Recording, RecordingSet, SupervisionSegment, SupervisionSet

from anyphone.data import espeak
from anyphone.data.module import PhoneDataModule
from anyphone.data.shar import (
    DataError,
    TooManyBadShardsError,
    UnsafeDataError,
    cut_refusal,
    kaldi_dir_to_shar,
    make_cut,
    open_shar,
    open_train_shars,
    write_shar,
)
from anyphone.text.tokenizer import IpaTokenizer

REPO = Path(__file__).resolve().parents[2]
TEXTS = ["aba", "kʰæt", "ʃiː", "mama", "tʃɛk", "nɪŋ"]  # all inside the inventory


@pytest.fixture(scope="module")
def tok() -> IpaTokenizer:
    return IpaTokenizer.default()


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "local" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tone(seconds: float = 0.5, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _wav(path: Path, seconds: float = 0.5) -> Path:
    sf.write(path, _tone(seconds), 16000)
    return path


def _marker(tmp_path: Path) -> Path:
    return tmp_path / f"ran-{uuid.uuid4().hex}"


def _args(*extra: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    PhoneDataModule.add_arguments(p)
    plain = ["--speed-perturb", "false", "--noise-prob", "0", "--volume-perturb-prob", "0",
             "--silence-pad-prob", "0", "--empty-prob", "0", "--num-workers", "0", "--num-buckets", "2",
             "--min-duration", "0", "--max-duration", "3", "--drop-last", "false", "--shuffle", "false"]
    return p.parse_args(plain + list(extra))


def _batch_ids(dl) -> list[str]:
    return [cid for b in dl for cid in b["cut_ids"]]


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def _command_cut(cut_id: str, command: str, text: str = "aba") -> MonoCut:
    rec = Recording(id=cut_id, sources=[AudioSource(type="command", channels=[0], source=command)],
                    sampling_rate=16000, num_samples=8000, duration=0.5)
    sup = SupervisionSegment(id=cut_id, recording_id=cut_id, start=0.0, duration=0.5, text=text, language="eng")
    return MonoCut(id=cut_id, start=0.0, duration=0.5, channel=0, recording=rec, supervisions=[sup])


def _cuts_only_shar(folder: Path, cut_dicts: list[dict]) -> Path:
    """A Shar folder with a cuts manifest and no recording tar: lhotse then loads each cut's own source."""
    folder.mkdir(parents=True)
    with gzip.open(folder / "cuts.000000.jsonl.gz", "wt", encoding="utf-8") as f:
        for d in cut_dicts:
            f.write(json.dumps(d) + "\n")
    return folder


def _shar(folder: Path, texts: list[str], shard_size: int = 2, prefix: str = "c") -> list[str]:
    cuts = [make_cut(f"{prefix}{i}", _tone(0.5, 150 + 20 * i), t, "eng") for i, t in enumerate(texts)]
    write_shar(cuts, folder, shard_size=shard_size)
    return [c.id for c in cuts]


# ---------------------------------------------------------------------------------------------------
# 7. data files never run commands


def test_shar_command_source_refused_in_training_unless_trusted(tmp_path: Path, tok):
    wav = _wav(tmp_path / "a.wav")
    marker = _marker(tmp_path)
    cmd = f"touch {marker} && cat {wav}"
    shar = _cuts_only_shar(tmp_path / "shar", [_command_cut(f"c{i}", cmd).to_dict() for i in range(3)])

    # start-up scan of the training set: refused before any audio is read
    with pytest.raises(UnsafeDataError) as e:
        open_train_shars([str(shar)], tokenizer=tok, repeat=False)
    msg = _one_line(e)
    assert "cuts.000000.jsonl.gz: cut 'c0': its audio source is a shell command" in msg
    assert "refused (pass --trust-data-commands 1 if you trust this data)" in msg
    # the training data module, and a dev set (read without the scan: refused while iterating)
    with pytest.raises(UnsafeDataError, match="cut 'c0': its audio source is a shell command"):
        _batch_ids(PhoneDataModule(_args("--train-shar", str(shar))).train_dataloader(tok))
    with pytest.raises(UnsafeDataError, match="cut 'c0': its audio source is a shell command"):
        _batch_ids(PhoneDataModule(_args("--dev-shar", str(shar))).dev_dataloader(tok))
    assert not marker.exists()

    # the flag really enables them
    dm = PhoneDataModule(_args("--train-shar", str(shar), "--trust-data-commands", "1"))
    assert sorted(_batch_ids(dm.train_dataloader(tok))) == ["c0", "c1", "c2"]
    assert marker.exists()


def test_command_inside_mixed_cut_or_pipe_url_is_seen():
    mixed = _command_cut("m", "touch x && cat y").pad(duration=1.0)  # a MixedCut whose track holds it
    assert "shell command" in cut_refusal(mixed)
    assert cut_refusal(mixed, trust_commands=True) is None
    rec = Recording(id="u", sources=[AudioSource(type="url", channels=[0], source="pipe:touch x")],
                    sampling_rate=16000, num_samples=8000, duration=0.5)
    assert "pipe command" in cut_refusal(MonoCut(id="u", start=0, duration=0.5, channel=0, recording=rec))
    assert cut_refusal(make_cut("ok", _tone(), "aba")) is None


def test_lhotse_manifest_commands_refused_in_preparation_unless_trusted(tmp_path: Path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a command hidden in a file name can only touch relative paths
    wav = _wav(tmp_path / "ok.wav")
    marker = _marker(tmp_path)
    sph_marker = tmp_path / f"sph-{uuid.uuid4().hex}"
    # a file name lhotse would paste into `sph2pipe ... NAME` and run through a shell
    sph = tmp_path / f"x;touch {sph_marker.name};y.sph"
    sph.write_bytes(b"NIST_1A\n   1024\nnot really sphere" + b"\0" * 1000)
    recs = [
        Recording.from_file(wav, recording_id="r_ok"),
        Recording(id="r_cmd", sources=[AudioSource(type="command", channels=[0], source=f"touch {marker} && cat {wav}")],
                  sampling_rate=16000, num_samples=8000, duration=0.5),
        Recording(id="r_sph", sources=[AudioSource(type="file", channels=[0], source=str(sph))],
                  sampling_rate=16000, num_samples=8000, duration=0.5),
    ]
    sups = [SupervisionSegment(f"s{r.id[1:]}", r.id, start=0.0, duration=0.5, text="a b a") for r in recs]
    RecordingSet.from_recordings(recs).to_file(tmp_path / "recordings.jsonl.gz")
    SupervisionSet.from_segments(sups).to_file(tmp_path / "supervisions.jsonl.gz")
    cli = _script("prepare_user_corpus")
    base = ["--recordings", str(tmp_path / "recordings.jsonl.gz"), "--supervisions",
            str(tmp_path / "supervisions.jsonl.gz"), "--out-dir", str(tmp_path / "out")]

    with caplog.at_level(logging.WARNING):
        assert cli.main(base) == 0
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    cmd_line = [m for m in lines if m.startswith("s_cmd:")]
    assert len(cmd_line) == 1 and "audio would be loaded by running a command" in cmd_line[0]
    assert "its audio source is a shell command" in cmd_line[0] and "--trust-data-commands 1" in cmd_line[0]
    sph_line = [m for m in lines if m.startswith("s_sph:")]
    assert len(sph_line) == 1 and "which lhotse decodes by running sph2pipe in a shell" in sph_line[0]
    assert [c.id for c in CutSet.from_shar(in_dir=tmp_path / "out")] == ["s_ok"]
    assert not marker.exists() and not sph_marker.exists()

    assert cli.main([*base, "--trust-data-commands", "1"]) == 0
    assert marker.exists()  # the flag really runs them
    assert sorted(c.id for c in CutSet.from_shar(in_dir=tmp_path / "out")) == ["s_cmd", "s_ok"]


def test_kaldi_pipe_and_sph_name_refused(tmp_path: Path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "corpus"
    d.mkdir()
    _wav(d / "good.wav")
    marker, sph_marker = _marker(tmp_path), tmp_path / f"sph-{uuid.uuid4().hex}"
    (d / f"x;touch {sph_marker.name};y.sph").write_bytes(b"garbage, not audio" * 50)
    (d / "wav.scp").write_text(f"good good.wav\npipe touch {marker} |\n"
                               f"sph x;touch {sph_marker.name};y.sph\n")
    (d / "text").write_text("good a b a\npipe a b a\nsph a b a\n")
    with caplog.at_level(logging.WARNING):
        report = kaldi_dir_to_shar(d, tmp_path / "out")
    lines = {m.split(":")[0]: m for m in (r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)}
    assert "audio would be loaded by running a command" in lines["pipe"]
    assert "Kaldi pipe commands are never run" in lines["pipe"]
    # a .sph name libsndfile cannot read is not handed to lhotse's sph2pipe shell
    assert "which lhotse decodes by running sph2pipe in a shell" in lines["sph"]
    assert report.written == 1 and sorted(report.problems["command_audio"]) == ["pipe", "sph"]
    assert not marker.exists() and not sph_marker.exists()
    # trusted: lhotse may decode the .sph (and runs what its name says); Kaldi pipes stay refused
    report = kaldi_dir_to_shar(d, tmp_path / "out2", trust_commands=True)
    assert report.problems["command_audio"] == ["pipe"]
    assert sph_marker.exists() and not marker.exists()


def test_pickled_array_refused_even_when_trusted(tmp_path: Path, tok):
    marker = _marker(tmp_path)
    cut = make_cut("p0", _tone(), "aba", "eng").to_dict()
    cut.pop("recording")
    cut["features"] = {"type": "fbank", "num_frames": 50, "num_features": 80, "frame_shift": 0.01,
                       "sampling_rate": 16000, "start": 0.0, "duration": 0.5, "storage_type": "memory_raw",
                       "storage_path": "", "storage_key": f"cos\nsystem\n(S'touch {marker}'\ntR.",
                       "recording_id": "p0", "channels": 0}
    shar = _cuts_only_shar(tmp_path / "shar", [cut])
    for trust in (False, True):
        with pytest.raises(UnsafeDataError) as e:
            open_train_shars([str(shar)], tokenizer=tok, trust_commands=trust, repeat=False)
        msg = _one_line(e)
        assert "cut 'p0': it carries a pickled array (storage_type 'memory_raw')" in msg
        assert "--trust-data-commands" not in msg  # no flag lets a pickle in
        with pytest.raises(UnsafeDataError, match="pickled array"):
            list(open_shar(shar, trust_commands=trust))
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------
# 8. corpus preparation


def test_duplicate_ids_are_listed_and_skipped(tmp_path: Path, caplog):
    d = tmp_path / "corpus"
    d.mkdir()
    long_wav, short_wav = _wav(d / "long.wav", 6.0), _wav(d / "short.wav", 0.5)
    (d / "wave").write_text(f"dup {long_wav}\nok {short_wav}\ntwice {short_wav}\ntwice {long_wav}\n")
    (d / "text").write_text("dup a b a\nok m a m a\ndup k a t\ntwice a\n")
    with caplog.at_level(logging.WARNING):
        report = kaldi_dir_to_shar(d, tmp_path / "out")
    lines = {r.getMessage().split(":")[0]: r.getMessage() for r in caplog.records if r.levelno == logging.WARNING}
    assert "utterance id is given more than once (text lines 1, 3;" in lines["dup"]
    assert "utterance id is given more than once (wave lines 3, 4;" in lines["twice"]
    assert sorted(report.problems["duplicate_id"]) == ["dup", "twice"]
    assert [c.id for c in CutSet.from_shar(in_dir=tmp_path / "out")] == ["ok"]  # never last-one-wins


def test_rerun_replaces_output_folder_whole(tmp_path: Path, capsys, monkeypatch):
    def corpus(name: str, n: int) -> Path:
        d = tmp_path / name
        d.mkdir()
        for i in range(n):
            _wav(d / f"u{i}.wav", 0.3)
        (d / "wave").write_text("".join(f"{name}{i} u{i}.wav\n" for i in range(n)))
        (d / "text").write_text("".join(f"{name}{i} {TEXTS[i % len(TEXTS)]}\n" for i in range(n)))
        return d

    cli = _script("prepare_user_corpus")
    out = tmp_path / "out"
    assert cli.main(["--data-dir", str(corpus("big", 10)), "--out-dir", str(out), "--shard-size", "2"]) == 0
    assert cli.main(["--data-dir", str(corpus("small", 2)), "--out-dir", str(out), "--shard-size", "2",
                     "--report", str(tmp_path / "rep.json")]) == 0
    assert "wrote 2 utterances" in capsys.readouterr().out
    assert sorted(c.id for c in CutSet.from_shar(in_dir=out)) == ["small0", "small1"]  # not 10
    assert sorted(p.name for p in out.iterdir()) == ["cuts.000000.jsonl.gz", "recording.000000.tar"]
    assert json.loads((tmp_path / "rep.json").read_text())["written"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # no temporaries left

    # a run that dies half-way leaves the previous folder whole
    import anyphone.data.shar as shar_mod

    calls = {"n": 0}
    real = shar_mod.make_cut

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(shar_mod, "make_cut", dying)
    with pytest.raises(KeyboardInterrupt):
        kaldi_dir_to_shar(tmp_path / "big", out, shard_size=2)
    monkeypatch.undo()
    assert sorted(c.id for c in CutSet.from_shar(in_dir=out)) == ["small0", "small1"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]

    # an --out-dir holding anything but shards (here: the corpus itself) is refused, one line, nothing touched
    before = sorted(p.name for p in (tmp_path / "small").iterdir())
    assert cli.main(["--data-dir", str(tmp_path / "small"), "--out-dir", str(tmp_path / "small")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "which is not a Shar shard; refusing to replace it" in err
    assert sorted(p.name for p in (tmp_path / "small").iterdir()) == before


def test_utterance_id_with_space_reported_as_such(tmp_path: Path, caplog):
    d = tmp_path / "corpus"
    d.mkdir()
    wav = _wav(d / "a.wav")
    _wav(d / "b.wav")
    (d / "wave").write_text(f"spk 1 {wav}\nok b.wav\n")
    (d / "text").write_text("spk 1 a b a\nok m a m a\n")
    with caplog.at_level(logging.WARNING):
        report = kaldi_dir_to_shar(d, tmp_path / "out")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and lines[0].startswith("spk 1: utterance id contains a space")
    assert "reads it as id 'spk'" in lines[0]
    assert report.problems["id_with_space"] == ["spk 1"] and report.problems["missing_audio"] == []
    assert report.written == 1


def test_non_utf8_table_is_one_line(tmp_path: Path, capsys):
    d = tmp_path / "corpus"
    d.mkdir()
    _wav(d / "a.wav")
    (d / "wave").write_text("a a.wav\n")
    (d / "text").write_bytes(b"a a b a\nb \xff\xfe\n")
    cli = _script("prepare_user_corpus")
    assert cli.main(["--data-dir", str(d), "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{d / 'text'}:2: not UTF-8 text" in err


# ---------------------------------------------------------------------------------------------------
# 10. damaged shards and empty folders in training


def test_corrupt_tar_shard_named_skipped_counted(tmp_path: Path, tok, caplog):
    ids = _shar(tmp_path / "shar", TEXTS, shard_size=2)  # 3 shards
    import tarfile

    tar = tmp_path / "shar" / "recording.000001.tar"
    with tarfile.open(tar) as tf:
        last = tf.getmembers()[-1]  # the metadata of the shard's second cut
    tar.write_bytes(tar.read_bytes()[: last.offset_data + 5])  # cut off in the middle of a member

    with caplog.at_level(logging.WARNING):
        got = _batch_ids(PhoneDataModule(_args("--train-shar", str(tmp_path / "shar"))).train_dataloader(tok))
    assert set(ids[:2] + ids[4:]) <= set(got) and ids[3] not in got
    bad = [r.getMessage() for r in caplog.records if "bad shard" in r.getMessage()]
    # the source, the file that failed and why: the same format as a remote shard's (tests/test_remote_shards.py)
    assert len(bad) == 1 and bad[0].startswith(f"bad shard, skipped: {tmp_path / 'shar'}: recording.000001.tar: "
                                               "ReadError")
    assert bad[0].endswith("(1 bad shard(s) so far, --max-bad-shards 10)")

    # a shard cut short at a member boundary raises nothing in tarfile; it is caught by the count
    with tarfile.open(tmp_path / "shar" / "recording.000002.tar") as tf:
        third_member = tf.getmembers()[2].offset
    t2 = tmp_path / "shar" / "recording.000002.tar"
    t2.write_bytes(t2.read_bytes()[:third_member])
    with pytest.raises(TooManyBadShardsError) as e:
        _batch_ids(PhoneDataModule(_args("--train-shar", str(tmp_path / "shar"), "--max-bad-shards", "1"))
                   .train_dataloader(tok))
    msg = _one_line(e)
    shar = tmp_path / "shar"
    assert msg == (f"2 shards cannot be read, more than --max-bad-shards 1: {shar}: cuts.000001.jsonl.gz, "
                   f"cuts.000002.jsonl.gz (the last: {shar}: {t2.name}: holds 1 of the 2 cuts of "
                   "cuts.000002.jsonl.gz (truncated))")


def test_a_source_with_no_readable_shard_stops_instead_of_looping(tmp_path: Path):
    """A repeated stream over a folder whose every shard is damaged would loop forever without a cut: it stops
    in one line naming the folder and its last bad shard, as a remote source does (tests/test_remote_shards.py)."""
    shar = tmp_path / "shar"
    _shar(shar, TEXTS[:4], shard_size=2)  # 2 shards
    for k in (0, 1):
        (shar / f"recording.{k:06d}.tar").write_bytes(b"\x00not a tar header" * 64)
    with pytest.raises(TooManyBadShardsError) as e:
        next(iter(open_shar(shar, repeat=True)))
    assert _one_line(e).startswith(f"{shar}: no cut could be read from its 2 shard(s) (2 bad); the last: "
                                   "recording.000001.tar: ReadError")


def test_empty_train_shar_folder_is_one_line(tmp_path: Path, tok):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as e:
        PhoneDataModule(_args("--train-shar", str(empty))).train_dataloader(tok)
    assert _one_line(e).startswith(f"Shar directory {empty} is empty: expected cuts.NNNNNN.jsonl.gz")
    hollow = _cuts_only_shar(tmp_path / "hollow", [])  # a manifest without a single cut
    with pytest.raises(DataError) as e:
        PhoneDataModule(_args("--train-shar", str(hollow))).train_dataloader(tok)
    assert _one_line(e) == f"Shar directory {hollow}: its 1 cuts manifest(s) hold no cut"


# ---------------------------------------------------------------------------------------------------
# 11. labels outside the inventory


def test_unknown_labels_counted_per_shard_and_dropped(tmp_path: Path, tok, caplog):
    texts = ["aba", "kaQt", "mama", "ʃiː", "Qa", "nɪŋ"]  # 'Q' is no IPA token
    ids = _shar(tmp_path / "shar", texts, shard_size=4)
    with caplog.at_level(logging.WARNING):
        got = _batch_ids(PhoneDataModule(_args("--train-shar", str(tmp_path / "shar"))).train_dataloader(tok))
    assert sorted(got) == sorted(i for i, t in zip(ids, texts) if "Q" not in t)
    lines = [r.getMessage() for r in caplog.records if "outside the inventory" in r.getMessage()]
    fate = "labels outside the inventory ('Q' x1); dropped (--keep-unk-cuts 1 keeps them)"
    assert lines == [f"{tmp_path / 'shar' / 'cuts.000000.jsonl.gz'}: 1 of 4 cuts have {fate}",
                     f"{tmp_path / 'shar' / 'cuts.000001.jsonl.gz'}: 1 of 2 cuts have {fate}"]
    dm = PhoneDataModule(_args("--train-shar", str(tmp_path / "shar"), "--keep-unk-cuts", "1"))
    batches = list(dm.train_dataloader(tok))
    assert sorted(c for b in batches for c in b["cut_ids"]) == sorted(ids)
    assert any(tok.unk_id in t for b in batches for t in b["token_ids"])  # kept, as <unk>


# ---------------------------------------------------------------------------------------------------
# 12. eSpeak's private library copy


def test_espeak_copy_ignores_planted_folder_and_symlinks(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    lib = tmp_path / "libsrc.so"
    lib.write_bytes(b"\x7fELF pretend library")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    attacker = tmp_path / "attacker"
    attacker.mkdir()
    for k in range(64):  # every name the old predictable scheme could pick next
        (attacker / f"libespeak-ng-{k}.so").symlink_to(victim)
    (tmp_path / f"anyphone-espeak-{os.getpid()}").symlink_to(attacker, target_is_directory=True)

    dst = Path(espeak._private_library_copy(str(lib)))
    try:
        assert victim.read_text() == "precious"
        assert dst.read_bytes() == lib.read_bytes() and not dst.is_symlink()
        assert dst.parent.parent == tmp_path and dst.parent.name != f"anyphone-espeak-{os.getpid()}"
        assert (dst.parent.stat().st_mode & 0o777) == 0o700
    finally:
        dst.unlink()
        dst.parent.rmdir()


def test_finetune_split_skips_duplicate_ids(tmp_path: Path, caplog):
    """The fine-tuning train/dev split reads the tables the same way: a duplicated id is listed and skipped,
    never paired with the other line's transcript."""
    from anyphone.training.finetune import split_kaldi_dir

    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(4):
        sf.write(d / f"a{i}.wav", np.zeros(16000, dtype="float32"), 16000)
    (d / "wave").write_text("".join(f"u{i} a{i}.wav\n" for i in range(4)), encoding="utf-8")
    (d / "text").write_text("u0 aba\nu1 mama\nu2 aba\nu3 mama\nu1 ʃiː\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        train, dev = split_kaldi_dir(d, tmp_path / "split")
    assert "1 utterance id(s) appear more than once and are skipped: u1 (text lines 2 5)" in caplog.text
    ids = [line.split()[0] for part in (train, dev) for line in (part / "text").read_text().splitlines()]
    assert sorted(ids) == ["u0", "u2", "u3"]
