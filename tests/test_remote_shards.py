"""Shar shards streamed from remote storage (anyphone/data/remote.py, local/index_shards.py).

Every source runs on loopback: http:// and the Hugging Face Hub against tests/hub_server.py (real
huggingface_hub code, pointed at it with HF_ENDPOINT), s3:// against moto's S3 server, pipe: through `cat`.
Retries wait milliseconds here (ANYPHONE_REMOTE_BACKOFF).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import tarfile
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants  # loaded now, at collection: see _online
import numpy as np
import pytest
import torch
from hub_server import LoopbackServer, folder_files
from lhotse import CutSet
from training_fixtures import ZIPA_REF

from anyphone.data import remote
from anyphone.data.module import PhoneDataModule
from anyphone.data.shar import TooManyBadShardsError, make_cut, open_shar, write_shar
from anyphone.text.tokenizer import IpaTokenizer

ROOT = Path(__file__).resolve().parents[1]
REF = ZIPA_REF
TEXTS = ["aba", "kʰæt", "ʃiː", "mama", "doʊ", "tʃɛk", "nɪŋ", "pɑt"]
N_CUTS, SHARD = 16, 4


def _write_corpus(out: Path, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    cuts = []
    for i in range(N_CUTS):
        n = int(16000 * rng.uniform(0.4, 1.4))
        t = np.arange(n) / 16000
        wave = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.02 * rng.standard_normal(n)
        cuts.append(make_cut(f"u{i:03d}", wave.astype(np.float32), TEXTS[i % len(TEXTS)], "eng"))
    write_shar(cuts, out, shard_size=SHARD)
    remote.write_index(out)
    return [c.id for c in cuts]


@pytest.fixture(scope="module")
def shar(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("shar") / "train"
    _write_corpus(d)
    return d


@pytest.fixture(scope="module")
def server():
    with LoopbackServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("ANYPHONE_REMOTE_BACKOFF", "0.005")
    monkeypatch.setenv("ANYPHONE_REMOTE_BACKOFF_MAX", "0.02")
    monkeypatch.setenv("ANYPHONE_REMOTE_TIMEOUT", "20")
    for k in ("ANYPHONE_REMOTE_RETRIES", "ANYPHONE_REMOTE_MAX_FAILED_SHARDS"):
        monkeypatch.delenv(k, raising=False)


def _read(cuts: CutSet) -> list[tuple[str, np.ndarray]]:
    return [(c.id, c.load_audio()) for c in cuts]


def _same(a: list[tuple[str, np.ndarray]], b: list[tuple[str, np.ndarray]]) -> bool:
    return [i for i, _ in a] == [i for i, _ in b] and all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b))


def _shard_ids(folder: Path, k: int) -> list[str]:
    return [c.id for c in CutSet.from_jsonl(folder / f"cuts.{k:06d}.jsonl.gz")]


# ---------------------------------------------------------------------------------------------- index


def test_index_file_and_script(shar, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("index_shards", ROOT / "local" / "index_shards.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    main = script.main
    index = json.loads((shar / remote.INDEX_NAME).read_text())
    assert index["format"] == remote.INDEX_FORMAT and index["num_shards"] == N_CUTS // SHARD
    assert sorted(index["fields"]) == ["cuts", "recording"]
    for fld, rows in index["fields"].items():
        assert [r["name"] for r in rows] == [f"{fld}.{k:06d}.{'jsonl.gz' if fld == 'cuts' else 'tar'}"
                                             for k in range(4)]
        assert all(r["bytes"] == (shar / r["name"]).stat().st_size for r in rows)
    assert sum(r["num_cuts"] for r in index["fields"]["cuts"]) == N_CUTS
    # lhotse's own folder reader still reads the folder with the index in it
    assert len(list(CutSet.from_shar(in_dir=shar))) == N_CUTS
    # the script: writes the index; a folder that is not Shar is one line and exit status 2
    copy = tmp_path / "copy"
    shutil.copytree(shar, copy)
    (copy / remote.INDEX_NAME).unlink()
    assert main([str(copy), "--no-count"]) == 0
    assert "4 shards (cuts, recording)" in capsys.readouterr().out
    assert "num_cuts" not in (copy / remote.INDEX_NAME).read_text()
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty" in err[0] and "cuts.NNNNNN.jsonl.gz" in err[0]
    (copy / "recording.000003.tar").unlink()
    assert main([str(copy)]) == 2
    assert "'recording' has shards 3" in capsys.readouterr().err


def test_index_is_data_only():
    good = {"format": remote.INDEX_FORMAT, "version": 1,
            "fields": {"cuts": [{"name": "cuts.000000.jsonl.gz", "bytes": 10}],
                       "recording": [{"name": "recording.000000.tar", "bytes": 20}]}}
    assert remote.parse_index(json.dumps(good).encode(), "x") == {
        "cuts": [("cuts.000000.jsonl.gz", 10)], "recording": [("recording.000000.tar", 20)]}
    for name in ("cuts.000000.jsonl.gz; rm -rf ~", "../cuts.000000.jsonl.gz", "cuts.000000.jsonl.gz $(id)",
                 "recording.000000.tar"):
        bad = json.loads(json.dumps(good))
        bad["fields"]["cuts"][0]["name"] = name
        with pytest.raises(ValueError, match="not a Shar shard file name"):
            remote.parse_index(json.dumps(bad).encode(), "idx.json")
    with pytest.raises(ValueError, match="idx.json: not a shard index"):
        remote.parse_index(b"<html>", "idx.json")
    with pytest.raises(ValueError, match="version 2"):
        remote.parse_index(json.dumps({**good, "version": 2}).encode(), "idx.json")


def test_hf_spec_and_backoff():
    p = remote.parse_hf_spec
    assert p("hf://datasets/anyspeech/ipapack/train@v1") == remote.HfSpec("anyspeech/ipapack", "train", "v1")
    assert p("hf://datasets/anyspeech/ipapack@v1/a/b") == remote.HfSpec("anyspeech/ipapack", "a/b", "v1")
    assert p("hf://datasets/o/n") == remote.HfSpec("o/n", "", "main")
    assert p("hf://datasets/o/n/x@refs%2Fpr%2F1").revision == "refs/pr/1"
    for bad in ("hf://models/o/n", "hf://datasets/o", "hf://datasets/o/n/../x", "hf://datasets/o/n@"):
        with pytest.raises(ValueError, match="hf://datasets/OWNER/NAME"):
            p(bad)
    cfg = remote.RemoteConfig(backoff=1.0, backoff_max=10.0)
    for attempt, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 10.0)]:
        waits = [cfg.delay(attempt) for _ in range(50)]
        assert all(cap * 0.5 <= w <= cap for w in waits) and len(set(waits)) > 1  # jittered
    assert cfg.delay(1, retry_after=5.0) >= 5.0 and cfg.delay(1, retry_after=500.0) <= 10.0


# ---------------------------------------------------------------------------------------------- http


def _module_args(spec_train: str, spec_dev: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    PhoneDataModule.add_arguments(p)
    return p.parse_args(["--train-shar", spec_train, "--dev-shar", spec_dev, "--num-workers", "0",
                         "--num-buckets", "2", "--max-duration", "3", "--min-duration", "0", "--seed", "7"])


def _batches(dl, n: int) -> list[dict]:
    out = []
    for b in dl:
        out.append(b)
        if len(out) == n:
            break
    return out


def test_http_batches_equal_local(shar, server):
    """The data module over http://127.0.0.1:PORT/... yields the same batches as over the folder: same cut
    ids in the same order and equal feature tensors (augmentation included: same seeds, same cuts)."""
    url = server.serve_folder("same", shar)
    tok = IpaTokenizer.default()
    got = {}
    for name, spec in (("local", str(shar)), ("http", url)):
        dm = PhoneDataModule(_module_args(spec, spec), world_size=1, rank=0)
        got[name] = (_batches(dm.train_dataloader(tok), 3), _batches(dm.dev_dataloader(tok), 2))
    for a, b in zip(got["local"][0] + got["local"][1], got["http"][0] + got["http"][1]):
        assert a["cut_ids"] == b["cut_ids"] and a["texts"] == b["texts"]
        assert torch.equal(a["features"], b["features"]) and torch.equal(a["feature_lens"], b["feature_lens"])
    assert sum(len(b["cut_ids"]) for b in got["http"][0]) >= 3
    assert server.hits["/files/same/recording.000000.tar"] >= 1  # really read over HTTP


def test_missing_index_is_one_clear_line(shar, server, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(shar, bare)
    (bare / remote.INDEX_NAME).unlink()
    url = server.serve_folder("bare", bare)
    with pytest.raises(FileNotFoundError) as ei:
        open_shar(url)
    msg = str(ei.value)
    assert "\n" not in msg and url in msg and "index_shards.py" in msg


def test_streams_are_bounded_and_ranks_split(shar, server, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    payload = np.random.default_rng(0).bytes(8 << 20)
    (big / "blob.bin").write_bytes(payload)
    url = server.serve_folder("big", big)
    with remote.open_stream(f"{url}/blob.bin") as f:
        assert f.read(65536) == payload[:65536]
        assert f.raw.pos <= 2 << 20  # read ahead by the 1 MiB buffer, not the whole 8 MiB file
        assert f.read() == payload[65536:]
    # DDP: with as many shards as ranks, each rank streams its own shards (rank::world_size)
    url = server.serve_folder("ranks", shar)
    for rank in (0, 1):
        got = [c.id for c in open_shar(url, rank=rank, world_size=2)]
        assert got == _shard_ids(shar, rank) + _shard_ids(shar, rank + 2)


# ---------------------------------------------------------------------------------------------- failures


def test_429_500_and_dropped_connections_are_survived(shar, server):
    url = server.serve_folder("flaky", shar)
    server.add_fault("/files/flaky/recording.000001.tar", 429, 500, "drop", 503, "drop")
    server.add_fault("/files/flaky/cuts.000002.jsonl.gz", "drop", 502)
    server.add_fault("/files/flaky/" + remote.INDEX_NAME, 500)
    local = _read(open_shar(shar, shuffle_shards=True, seed=3))
    assert _same(_read(open_shar(url, shuffle_shards=True, seed=3)), local)
    assert server.hits["/files/flaky/recording.000001.tar"] == 6  # 5 failures, then the rest of the file
    assert server.hits["/files/flaky/cuts.000002.jsonl.gz"] == 3
    assert url not in remote.shard_failures()


def _bad_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("bad shard, skipped: ")]


def test_shard_that_keeps_failing_is_skipped_and_counted(shar, server, monkeypatch, caplog):
    monkeypatch.setenv("ANYPHONE_REMOTE_RETRIES", "2")
    url = server.serve_folder("bad1", shar)
    server.add_fault("/files/bad1/recording.000001.tar", "always500")
    with caplog.at_level(logging.WARNING):
        got = [c.id for c in open_shar(url)]
    want = [i for k in (0, 2, 3) for i in _shard_ids(shar, k)]
    assert got == want
    assert server.hits["/files/bad1/recording.000001.tar"] == 3  # first try + 2 retries
    failures = remote.shard_failures()[url]
    assert list(failures) == [f"{url}/cuts.000001.jsonl.gz"] and "HTTP 500" in failures[f"{url}/cuts.000001.jsonl.gz"]
    # the same line as a damaged local shard: source, the file that failed, why, and the one count
    lines = _bad_lines(caplog)
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith(f"bad shard, skipped: {url}: recording.000001.tar: HTTP 500")
    assert "(gave up after 2 retries" in lines[0] and lines[0].endswith(" (1 bad shard(s) so far, --max-bad-shards 10)")


def test_too_many_failures_stop_the_run(shar, server, monkeypatch, caplog):
    monkeypatch.setenv("ANYPHONE_REMOTE_RETRIES", "0")
    url = server.serve_folder("bad2", shar)
    for k in (1, 2, 3):
        server.add_fault(f"/files/bad2/recording.{k:06d}.tar", "always500")
    with pytest.raises(TooManyBadShardsError) as ei:
        list(open_shar(url, max_bad_shards=1))
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(f"2 shards cannot be read, more than --max-bad-shards 1: {url}: cuts.000001.jsonl.gz, "
                          f"cuts.000002.jsonl.gz (the last: {url}: recording.000002.tar: HTTP 500")
    # the old per-source environment limit is not read any more (a warning says so): the default 10 holds
    monkeypatch.setenv("ANYPHONE_REMOTE_MAX_FAILED_SHARDS", "0")
    monkeypatch.setattr(remote, "_RETIRED_WARNED", [])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        got = [c.id for c in open_shar(url)]
    assert got == _shard_ids(shar, 0) and len(_bad_lines(caplog)) == 3
    assert any("ANYPHONE_REMOTE_MAX_FAILED_SHARDS is no longer read" in r.getMessage() for r in caplog.records)
    # a repeated source whose every shard fails stops instead of looping forever
    url3 = server.serve_folder("bad3", shar)
    for k in range(4):
        server.add_fault(f"/files/bad3/cuts.{k:06d}.jsonl.gz", 404)
    with pytest.raises(TooManyBadShardsError, match=rf"^{url3}: no cut could be read from its 4 shard\(s\) \(4 bad\)"):
        next(iter(open_shar(url3, repeat=True, max_bad_shards=100)))


def test_local_and_remote_bad_shards_share_one_limit(shar, server, tmp_path, monkeypatch):
    """One corrupt local shard and one remote shard that keeps failing add up against --max-bad-shards: with 1
    the run stops (one line naming both sources and their shards), with 2 it reads every other shard."""
    monkeypatch.setenv("ANYPHONE_REMOTE_RETRIES", "0")
    local = tmp_path / "local"
    shutil.copytree(shar, local)
    tar = local / "recording.000002.tar"
    tar.write_bytes(b"\x00not a tar header" * 64)
    url = server.serve_folder("one-bad", shar)
    server.add_fault("/files/one-bad/recording.000001.tar", "always500")
    tok = IpaTokenizer.default()

    def read(limit: int) -> list[str]:
        p = argparse.ArgumentParser()
        PhoneDataModule.add_arguments(p)
        args = p.parse_args(["--train-shar", str(local), "--train-shar", url, "--max-bad-shards", str(limit),
                             "--min-duration", "0"])
        cuts, _ = PhoneDataModule(args).train_cuts(tok)  # the training stream, before batching and features
        return [c.id for c in cuts]

    with pytest.raises(TooManyBadShardsError) as ei:
        read(1)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("2 shards cannot be read, more than --max-bad-shards 1: ")
    assert f"{local}: cuts.000002.jsonl.gz" in msg and f"{url}: cuts.000001.jsonl.gz" in msg
    got = read(2)
    good_local = [i for k in (0, 1, 3) for i in _shard_ids(shar, k)]
    good_remote = [i for k in (0, 2, 3) for i in _shard_ids(shar, k)]
    # both sources hold the same cut ids: every good shard's cuts arrive, from the one source or the other
    assert sorted(got) == sorted(good_local + good_remote)


def test_corrupt_remote_shards_are_reported_and_skipped(shar, server, tmp_path, caplog):
    bad = tmp_path / "corrupt"
    shutil.copytree(shar, bad)
    tar = bad / "recording.000002.tar"
    data = bytearray(tar.read_bytes())
    data[0:512] = b"\x00not a tar header" * 32  # the first member's header is garbage
    tar.write_bytes(bytes(data))
    (bad / "cuts.000003.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00garbage that is not deflate")
    remote.write_index(bad, count_cuts=False)
    url = server.serve_folder("corrupt", bad)
    with caplog.at_level(logging.WARNING):
        got = [c.id for c in open_shar(url)]
    assert got == _shard_ids(shar, 0) + _shard_ids(shar, 1)
    lines = _bad_lines(caplog)
    assert len(lines) == 2 and all("\n" not in ln for ln in lines)
    assert lines[0].startswith(f"bad shard, skipped: {url}: recording.000002.tar: ")
    assert lines[1].startswith(f"bad shard, skipped: {url}: cuts.000003.jsonl.gz: ")
    assert "(2 bad shard(s) so far, --max-bad-shards 10)" in lines[1]
    assert len(remote.shard_failures()[url]) == 2
    with pytest.raises(tarfile.ReadError):  # it really is corrupt
        list(CutSet.from_shar(fields={"cuts": [str(bad / "cuts.000002.jsonl.gz")], "recording": [str(tar)]}))


# ---------------------------------------------------------------------------------------------- pipe, s3


def test_pipe_template(shar, tmp_path):
    local = _read(open_shar(shar))
    assert _same(_read(open_shar(f"pipe:cat {shar}/{{}}")), local)
    with pytest.raises(ValueError, match=r"needs \{\}"):
        open_shar(f"pipe:cat {shar}/cuts.000000.jsonl.gz")
    # a file name from an index never reaches the shell unchecked
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "PWNED"
    (evil / remote.INDEX_NAME).write_text(json.dumps({"format": remote.INDEX_FORMAT, "version": 1, "fields": {
        "cuts": [{"name": f"cuts.000000.jsonl.gz;touch {marker}", "bytes": 1}]}}))
    with pytest.raises(ValueError, match="not a Shar shard file name"):
        open_shar(f"pipe:cat {evil}/{{}}")
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match="command exited with status 1"):
        open_shar(f"pipe:cat {tmp_path}/nowhere/{{}}")


def test_s3_via_moto_server(shar, monkeypatch):
    pytest.importorskip("moto.server", reason="moto[server] is in the dev extra")
    import boto3
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        for k, v in {"AWS_ENDPOINT_URL_S3": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                     "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
        s3.create_bucket(Bucket="corpus")
        for p in shar.iterdir():
            if p.name != remote.INDEX_NAME:  # S3 is listed: no index needed
                s3.upload_file(str(p), "corpus", f"ipapack/train/{p.name}")
        s3.put_object(Bucket="corpus", Key="ipapack/train/README.md", Body=b"not a shard")
        s3.put_object(Bucket="corpus", Key="ipapack/train/old/cuts.000009.jsonl.gz", Body=b"elsewhere")
        local = _read(open_shar(shar, shuffle_shards=True, seed=5))
        assert _same(_read(open_shar("s3://corpus/ipapack/train", shuffle_shards=True, seed=5)), local)
        with pytest.raises(FileNotFoundError, match="s3://corpus/nothing has no cuts"):
            open_shar("s3://corpus/nothing")
    finally:
        moto.stop()


# ---------------------------------------------------------------------------------------------- the hub


def _online(monkeypatch, server: LoopbackServer, tmp_path: Path) -> None:
    """Point huggingface_hub at the loopback hub. It reads HF_HUB_OFFLINE once, at import (this module imports
    it at collection, before any test sets the variable); HF_ENDPOINT is read by anyphone at call time."""
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        pytest.skip("huggingface_hub was imported with HF_HUB_OFFLINE=1")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)


def test_hf_dataset_via_loopback_hub(shar, server, monkeypatch, tmp_path):
    _online(monkeypatch, server, tmp_path)
    files = {**folder_files(shar, "train"), "README.md": b"# IPAPack mini", "dev/cuts.000000.jsonl.gz": b"x"}
    files.pop(f"train/{remote.INDEX_NAME}")  # the hub lists its files itself
    repo = server.add_repo("dataset", "anyspeech/ipapack-mini", files, token="hf_secret")
    server.tree_page_size = 3  # several pages of listing
    spec = "hf://datasets/anyspeech/ipapack-mini/train@main"
    if huggingface_hub.get_token() is None:  # (a token saved by `hf auth login` would be found)
        with pytest.raises(FileNotFoundError) as ei:
            open_shar(spec)  # private repo, no token
        assert "HF_TOKEN" in str(ei.value) and "\n" not in str(ei.value)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    server.add_fault(f"/datasets/anyspeech/ipapack-mini/resolve/{repo.commit}/train/cuts.000001.jsonl.gz", 429)
    local = _read(open_shar(shar, shuffle_shards=True, seed=1))
    cdn_before = len(server.cdn_auth)
    assert _same(_read(open_shar(spec, shuffle_shards=True, seed=1)), local)
    assert len(server.cdn_auth) - cdn_before == 4  # the tars went through the CDN redirect...
    assert not any(server.cdn_auth[cdn_before:])  # ...without the token
    pinned = remote.remote_shar_fields(f"hf://datasets/anyspeech/ipapack-mini@{repo.commit}/train")
    assert all(f"/resolve/{repo.commit}/train/" in u for u in pinned["recording"])
    with pytest.raises(FileNotFoundError, match="RevisionNotFoundError"):
        open_shar("hf://datasets/anyspeech/ipapack-mini/train@v9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set"):
        open_shar("hf://datasets/anyspeech/ipapack-mini/dev")
    server.tree_page_size = 1000


def test_model_download_and_recognize_via_loopback_hub(server, tmp_path, monkeypatch, capsys):
    """`anyphone download` and `anyphone recognize -i x.wav` with a published name, through huggingface_hub's
    own code (nothing of it patched) against the loopback hub."""
    if not (REF / "tiny_crctc.pt").is_file():
        pytest.skip(f"ZIPA reference fixtures not found at {REF}")
    import soundfile as sf

    from anyphone.cli import main
    from anyphone.inference.api import load_model

    _online(monkeypatch, server, tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    ckpt = tmp_path / "tiny.pth"
    torch.save(torch.load(REF / "tiny_crctc.pt", weights_only=True)["state_dict"], ckpt)
    tokens = (REF / "tokens.txt").read_bytes()
    (tmp_path / "tokens.txt").write_bytes(tokens)
    server.add_repo("model", "anyspeech/zipa-small-crctc-500k",
                    {"zipa_small_crctc_500000_avg10.pth": ckpt.read_bytes(), "tokens.txt": tokens,
                     "README.md": b"ZIPA"})
    rng = np.random.default_rng(0)
    wav = tmp_path / "x.wav"
    sf.write(wav, (0.3 * np.sin(np.arange(24000) / 7.0) + 0.05 * rng.standard_normal(24000)).astype(np.float32),
             16000)
    assert main(["download", "zipa-cr-small-500k"]) == 0
    assert "zipa_small_crctc_500000_avg10.pth" in capsys.readouterr().out
    assert server.hits["/api/models/anyspeech/zipa-small-crctc-500k"] == 1
    repo_dir = tmp_path / "hf" / "hub" / "models--anyspeech--zipa-small-crctc-500k"
    snaps = list((repo_dir / "snapshots").iterdir())
    assert len(snaps) == 1 and (snaps[0] / "tokens.txt").read_bytes() == tokens
    assert main(["recognize", "-i", str(wav), "--batch-size", "1"]) == 0
    phones = capsys.readouterr().out.rstrip("\n")
    assert phones and phones == load_model(ckpt, batch_size=1).recognize(wav)
