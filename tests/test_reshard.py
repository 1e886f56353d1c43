"""Readers and shards (issue 12 item 2): every shard read once per epoch across the ranks, a shard order that
changes per epoch, exact resume of each rank's reader, and local/reshard.py (K balanced shards, streaming,
resumable)."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lhotse import CutSet
from training_fixtures import tone_cuts

from anyphone.data.module import PhoneDataModule
from anyphone.data.shar import shar_fields, write_shar
from anyphone.text.tokenizer import IpaTokenizer

ROOT = Path(__file__).resolve().parents[1]


def _reshard_module():
    spec = importlib.util.spec_from_file_location("reshard", ROOT / "local" / "reshard.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _args(*extra: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    PhoneDataModule.add_arguments(p)
    plain = ["--speed-perturb", "false", "--noise-prob", "0", "--volume-perturb-prob", "0",
             "--silence-pad-prob", "0", "--empty-prob", "0", "--num-workers", "0", "--num-buckets", "2",
             "--min-duration", "0", "--drop-last", "false", "--max-duration", "3"]
    return p.parse_args(plain + list(extra))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readers")
    write_shar(tone_cuts(n=24, durations=(0.5, 0.8)), root / "train", shard_size=4)  # 6 shards of 4 cuts
    return root / "train"


@pytest.fixture(scope="module")
def tok():
    return IpaTokenizer.default()


def _epoch_ids(corpus: Path, tok, rank: int, world_size: int, epoch: int) -> list[str]:
    dl = PhoneDataModule(_args("--train-shar", str(corpus)), world_size=world_size, rank=rank).train_dataloader(tok)
    dl.sampler.set_epoch(epoch)
    return [cid for b in dl for cid in b["cut_ids"]]


def test_each_shard_read_once_per_epoch_across_readers(corpus, tok):
    everything = {c.id for c in CutSet.from_shar(in_dir=str(corpus))}
    shard_of = {c.id: c.shard_origin for c in CutSet.from_shar(in_dir=str(corpus))}
    assignments = []
    for epoch in (0, 1):
        per_rank = [_epoch_ids(corpus, tok, r, 3, epoch) for r in range(3)]
        # every cut once: no rank repeats one, no two ranks share one, none is missing (no drop-last here)
        flat = [cid for ids in per_rank for cid in ids]
        assert len(flat) == len(set(flat)) and set(flat) == everything
        # whole shards per rank: 6 shards over 3 readers, two each
        shards = [{shard_of[cid] for cid in ids} for ids in per_rank]
        assert [len(s) for s in shards] == [2, 2, 2]
        assignments.append(shards)
    # the shard order (and so which rank reads which shard) changes from one epoch to the next
    assert assignments[0] != assignments[1]
    # and is a function of the seed: a second run deals the same shards
    assert {shard_of[c] for c in _epoch_ids(corpus, tok, 1, 3, 1)} == assignments[1][1]


def test_each_reader_resumes_where_it_stopped(corpus, tok):
    for rank in (0, 1):
        args = _args("--train-shar", str(corpus), "--max-duration", "1.7")
        dl = PhoneDataModule(args, world_size=2, rank=rank).train_dataloader(tok)
        dl.sampler.set_epoch(1)
        it = iter(dl)
        first = [next(it)["cut_ids"] for _ in range(2)]
        state = dl.sampler.state_dict()
        rest = [b["cut_ids"] for b in it]
        assert first and rest
        again = PhoneDataModule(args, world_size=2, rank=rank).train_dataloader(tok, sampler_state_dict=state)
        # not from the first shard: exactly the batches this rank had not yet received
        assert [b["cut_ids"] for b in again] == rest


def test_fewer_shards_than_readers_warns(corpus, tok, caplog):
    with caplog.at_level(logging.WARNING, logger="anyphone.data.module"):
        dl = PhoneDataModule(_args("--train-shar", str(corpus)), world_size=8, rank=0).train_dataloader(tok)
    assert any("local/reshard.py" in r.getMessage() and "8 readers" in r.getMessage() for r in caplog.records)
    assert [cid for b in dl for cid in b["cut_ids"]]  # still trains: the sampler splits the batches


def _tar_bytes(folder: Path) -> dict[str, bytes]:
    import tarfile

    out = {}
    for tar_path in shar_fields(folder)["recording"]:
        with tarfile.open(tar_path) as tf:
            for m in tf.getmembers():
                out[m.name] = tf.extractfile(m).read()
    return out


def test_reshard_balanced_exact_and_resumable(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_shar(tone_cuts(n=23, durations=(0.3, 0.5)), src, shard_size=10)  # 10, 10, 3
    rs = _reshard_module()
    out = tmp_path / "out"

    # a run killed while writing the third shard
    real = rs._write_shard

    def dies_on_third(stream, folder, j, *a, **k):
        if j == 2:
            (folder / f"{rs.TMP_PREFIX}cuts.000002.jsonl.gz").write_bytes(b"half")
            raise KeyboardInterrupt
        return real(stream, folder, j, *a, **k)

    monkeypatch.setattr(rs, "_write_shard", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        rs.reshard(src, out, 5, log=lambda m: None)
    monkeypatch.setattr(rs, "_write_shard", real)
    assert len(shar_fields(out)["cuts"]) == 2
    kept = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name.endswith("000000.tar")}

    done = rs.reshard(src, out, 5, log=lambda m: None)
    assert done["written"] == [2, 3, 4]  # the complete shards were kept, the rest written
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name.endswith("000000.tar")} == kept
    assert not [p for p in out.iterdir() if p.name.startswith(rs.TMP_PREFIX)]

    sizes = [sum(1 for _ in CutSet.from_jsonl_lazy(p)) for p in shar_fields(out)["cuts"]]
    assert sorted(sizes) == [4, 4, 5, 5, 5] and sum(sizes) == 23
    before, after = CutSet.from_shar(in_dir=str(src)), CutSet.from_shar(in_dir=str(out))
    assert [c.id for c in before] == [c.id for c in after]  # the same cuts in the same order
    assert _tar_bytes(src) == _tar_bytes(out)  # audio bytes copied, not re-encoded
    a, b = next(iter(before)), next(iter(after))
    assert np.array_equal(a.load_audio(), b.load_audio()) and a.supervisions[0].text == b.supervisions[0].text


def test_reshard_refuses_in_one_line(tmp_path):
    src = tmp_path / "src"
    write_shar(tone_cuts(n=3, durations=(0.3, 0.4)), src, shard_size=2)
    script = [sys.executable, str(ROOT / "local" / "reshard.py")]
    cases = [
        ([str(src), str(tmp_path / "o1"), "-k", "4"], "3 cuts cannot fill 4 shards"),
        ([str(src), str(src), "-k", "2"], "is the input folder"),
        ([str(tmp_path / "nope"), str(tmp_path / "o2"), "-k", "2"], "does not exist"),
    ]
    for argv, why in cases:
        r = subprocess.run(script + argv, capture_output=True, text=True, cwd=ROOT, check=False)
        assert r.returncode == 2, r.stderr
        assert why in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    ok = subprocess.run(script + [str(src), str(tmp_path / "o3"), "-k", "2"], capture_output=True, text=True, cwd=ROOT,
                        check=False)
    assert ok.returncode == 0, ok.stderr
    other = subprocess.run(script + [str(src), str(tmp_path / "o3"), "-k", "3"], capture_output=True, text=True,
                           cwd=ROOT, check=False)
    assert other.returncode == 2 and "another resharding" in other.stderr
