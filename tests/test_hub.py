"""Tests for anyphone.inference.hub: registry, offline cache resolution, listing/removal, safe loading."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hub_cache import COMMIT, add_hub_blob, make_hub_repo
from training_fixtures import ZIPA_REF

from anyphone.inference import hub

TOKENS = "<blk> 0\n<sos/eos> 1\n<unk> 2\n▁ 3\na 4\nb 5\n"


def _tiny_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "encoder_embed.out.weight": torch.randn(192, 8, generator=g),
        "encoder.encoders.0.bypass_scale": torch.full((192,), 0.5),
        "ctc_output.1.weight": torch.randn(6, 192, generator=g),
        "ctc_output.1.bias": torch.zeros(6),
    }


def make_cached_model(cache: Path, repo_id: str, ckpt_name: str, wrap: bool = False,
                      extra: tuple[str, ...] = ()) -> Path:
    """A tiny model in hub cache layout: models--org--name/{blobs,refs/main,snapshots/<sha>/...}."""
    buf = io.BytesIO()
    sd = _tiny_state_dict()
    torch.save({"model": sd} if wrap else sd, buf)
    files = {ckpt_name: buf.getvalue(), "tokens.txt": TOKENS.encode(), **{name: b"x" * 10 for name in extra}}
    return make_hub_repo(cache, repo_id, files)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_registry_covers_readme_table():
    assert len(hub.MODELS) == 12
    s = hub.MODELS["zipa-cr-small-300k"]
    assert (s.repo_id, s.family, s.size, s.checkpoint) == ("anyspeech/zipa-small-crctc-300k", "crctc", "small", None)
    t = hub.MODELS["zipa-t-large-500k"]
    assert (t.family, t.size, t.checkpoint) == ("transducer", "large", "zipa_large_noncausal_500000_avg10.pth")
    assert {m.family for m in hub.MODELS.values()} == {"crctc", "transducer"}
    from anyphone.families import REGISTRY

    assert {m.family for m in hub.MODELS.values()} <= set(REGISTRY)  # the catalogue names registered families
    assert all(m.repo_id.startswith("anyspeech/") for m in hub.MODELS.values())


def test_registry_matches_reference_json():
    ref = ZIPA_REF / "pretrained_checkpoints.json"
    if not ref.is_file():
        pytest.skip(f"reference fixtures not found at {ref}")
    import json

    entries = json.loads(ref.read_text())["models"]
    by_repo = {m.repo_id: m for m in hub.MODELS.values()}
    for e in entries:
        spec = by_repo[e["averaged_checkpoint_repo"]]
        assert (spec.family, spec.size, spec.checkpoint) == (e["family"], e["size"], e["checkpoint_file"])


def test_resolve_registry_name_offline_with_avg_rule(offline_cache):
    make_cached_model(offline_cache, "anyspeech/zipa-small-crctc-300k", "zipa_small_crctc_300000_avg10.pth",
                      extra=("model.int8.onnx", "zipa_small_crctc_300000.pth"))
    mf = hub.resolve_model("zipa-cr-small-300k")
    assert mf.checkpoint.name == "zipa_small_crctc_300000_avg10.pth"
    assert mf.tokens is not None and mf.tokens.read_text(encoding="utf-8") == TOKENS
    assert (mf.family, mf.size, mf.revision) == ("crctc", "small", COMMIT)
    sd = hub.load_state_dict(mf.checkpoint)
    assert set(sd) == set(_tiny_state_dict())
    assert hub.infer_family_size(sd) == ("crctc", "small")
    # the repo id resolves to the same files
    assert hub.resolve_model("anyspeech/zipa-small-crctc-300k").checkpoint == mf.checkpoint


def test_resolve_pinned_name_and_fallback(offline_cache):
    # known file name present
    make_cached_model(offline_cache, "anyspeech/zipa-large-noncausal-500k", "zipa_large_noncausal_500000_avg10.pth")
    mf = hub.resolve_model("zipa-t-large-500k")
    assert mf.checkpoint.name == "zipa_large_noncausal_500000_avg10.pth"
    assert (mf.family, mf.size) == ("transducer", "large")
    # unverified name absent: fall back to the avg rule
    make_cached_model(offline_cache, "anyspeech/zipa-small-crctc-500k", "other_avg5.pth", wrap=True)
    mf2 = hub.resolve_model("zipa-cr-small-500k")
    assert mf2.checkpoint.name == "other_avg5.pth"
    assert set(hub.load_state_dict(mf2.checkpoint)) == set(_tiny_state_dict())  # {'model': sd} accepted


def test_resolve_revision_offline(offline_cache):
    make_cached_model(offline_cache, "anyspeech/zipa-small-crctc-300k", "a_avg.pth")
    assert hub.resolve_model("zipa-cr-small-300k", revision=COMMIT).revision == COMMIT
    with pytest.raises(hub.ModelNotAvailableError, match="v2"):
        hub.resolve_model("zipa-cr-small-300k", revision="v2")


def test_offline_empty_cache_fails_fast_with_hint(offline_cache):
    t0 = time.monotonic()
    with pytest.raises(hub.ModelNotAvailableError) as ei:
        hub.resolve_model("zipa-cr-large-500k")
    elapsed = time.monotonic() - t0
    msg = str(ei.value)
    assert "zipa-cr-large-500k" in msg and "HF_HUB_OFFLINE" in msg and "download" in msg
    assert "\n" not in msg
    assert elapsed < 5.0
    with pytest.raises(hub.ModelNotAvailableError, match="zipa-cr-large-500k"):
        hub.download_model("zipa-cr-large-500k")


def test_unknown_name_is_clear(offline_cache):
    with pytest.raises(hub.ModelNotAvailableError, match="known model"):
        hub.resolve_model("not-a-model")
    with pytest.raises(hub.ModelNotAvailableError, match="no such checkpoint"):
        hub.resolve_model("./missing.pth")


def test_resolve_local_file_and_dir(tmp_path):
    d = tmp_path / "exp"
    d.mkdir()
    torch.save(_tiny_state_dict(), d / "epoch-3-avg-2.pth")
    torch.save(_tiny_state_dict(), d / "epoch-3.pt")
    (d / "tokens.txt").write_text(TOKENS, encoding="utf-8")
    mf = hub.resolve_model(d)
    assert mf.checkpoint == d / "epoch-3-avg-2.pth" and mf.tokens == d / "tokens.txt"
    mf2 = hub.resolve_model(str(d / "epoch-3.pt"))
    assert mf2.checkpoint == d / "epoch-3.pt" and mf2.tokens == d / "tokens.txt"
    e = tmp_path / "ambiguous"
    e.mkdir()
    torch.save({}, e / "a.pt")
    torch.save({}, e / "b.pt")
    with pytest.raises(hub.ModelNotAvailableError, match="exactly one"):
        hub.resolve_model(e)


def test_list_and_remove(offline_cache):
    make_cached_model(offline_cache, "anyspeech/zipa-small-crctc-300k", "x_avg10.pth")
    make_cached_model(offline_cache, "someone/zipa-custom", "y_avg.pth")
    rows = {r.name: r for r in hub.list_models()}
    assert rows["zipa-cr-small-300k"].cached and rows["zipa-cr-small-300k"].size_on_disk > 1000
    assert rows["zipa-cr-small-300k"].revisions == [COMMIT]
    assert not rows["zipa-t-large-500k"].cached and rows["zipa-t-large-500k"].size_on_disk == 0
    assert rows["someone/zipa-custom"].cached
    freed = hub.remove_model("zipa-cr-small-300k")
    assert freed > 1000
    assert not (offline_cache / "models--anyspeech--zipa-small-crctc-300k").exists()
    # the other repo shares the commit hash but must survive
    assert (offline_cache / "models--someone--zipa-custom" / "snapshots" / COMMIT / "y_avg.pth").is_file()
    assert not {r.name: r for r in hub.list_models()}["zipa-cr-small-300k"].cached
    with pytest.raises(hub.ModelNotAvailableError, match="not in the Hub cache"):
        hub.remove_model("zipa-cr-small-300k")


def test_list_models_without_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "nothing"))
    rows = hub.list_models()
    assert len(rows) == 12 and not any(r.cached for r in rows)


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_safe_loader_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    p = _Payload()
    p.marker = marker
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"model": {"w": p}}, f)
    # torch.save-style zip archive with the payload too
    evil_zip = tmp_path / "evil_zip.pth"
    torch.save({"w": torch.zeros(2), "x": p}, evil_zip)
    for path in (evil, evil_zip):
        with pytest.raises(hub.UnsafeCheckpointError) as ei:
            hub.load_state_dict(path)
        msg = str(ei.value)
        assert str(path) in msg and "\n" not in msg and "refused" in msg
    assert not marker.exists()


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        hub.load_state_dict(tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises((ValueError, hub.UnsafeCheckpointError), match="junk.pth"):
        hub.load_state_dict(junk)
    lst = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], lst)
    with pytest.raises(ValueError, match="state_dict"):
        hub.load_state_dict(lst)
    ddp = tmp_path / "ddp.pth"
    torch.save({"module.a": torch.ones(1)}, ddp)
    assert list(hub.load_state_dict(ddp)) == ["a"]


def test_reference_fixture_family(tmp_path):
    ref = ZIPA_REF / "tiny_transducer.pt"
    if not ref.is_file():
        pytest.skip(f"reference fixtures not found at {ref}")
    obj = torch.load(ref, weights_only=True)
    fam, size = hub.infer_family_size(obj["state_dict"])
    assert fam == "transducer" and size is None  # tiny config: neither small nor large


def test_offline_env_read_at_call_time_in_fresh_process(tmp_path):
    """HF_HUB_OFFLINE set before import in a clean interpreter: still fails fast with the hint."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path), HF_HUB_CACHE=str(tmp_path / "hub"))
    code = ("from anyphone.inference.hub import resolve_model\n"
            "try:\n resolve_model('zipa-t-small-300k')\nexcept Exception as e:\n print(type(e).__name__, e)")
    out = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True,
                         timeout=60)
    assert "ModelNotAvailableError" in out.stdout and "zipa-t-small-300k" in out.stdout, out.stderr


def test_download_model_with_fake_hub(tmp_path, monkeypatch):
    """download_model against a stand-in for the Hub API: file choice, revision refs, then offline reuse."""
    import huggingface_hub

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    files = ["README.md", "model.int8.onnx", "tokens.txt", "zipa_small_crctc_300000_avg10.pth", "b_avg5.pth",
             "exp/tokens.txt"]
    calls = []

    listing = {"files": files}

    def fake_info(self, repo_id, revision=None, files_metadata=False):
        calls.append(("info", repo_id, revision))
        return SimpleNamespace(sha=COMMIT, siblings=[SimpleNamespace(rfilename=f) for f in listing["files"]])

    def fake_download(repo_id, filename, *, revision=None, cache_dir=None, **kw):
        calls.append(("get", filename, revision))
        repo_dir = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
        if filename.endswith(".pth"):
            buf = tmp_path / "sd.pth"
            torch.save(_tiny_state_dict(), buf)
            data = buf.read_bytes()
        else:
            data = TOKENS.encode() if filename.endswith("tokens.txt") else b"onnx"
        return str(add_hub_blob(repo_dir, filename, data, commit=revision))

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", fake_info)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    mf = hub.download_model("zipa-cr-small-300k", revision="v1.0", extra_patterns=["*.onnx"])
    # ZIPA's rule: first (sorted) *avg*.pth; top-level tokens.txt preferred; pinned to the resolved commit
    assert mf.checkpoint.name == "b_avg5.pth" and mf.tokens.name == "tokens.txt"
    assert mf.tokens.parent.name == COMMIT and mf.revision == COMMIT
    assert [p.name for p in mf.extra] == ["model.int8.onnx"]
    assert calls[0] == ("info", "anyspeech/zipa-small-crctc-300k", "v1.0")
    assert all(c[2] == COMMIT for c in calls[1:])
    repo_dir = cache / "models--anyspeech--zipa-small-crctc-300k"
    assert (repo_dir / "refs" / "v1.0").read_text() == COMMIT
    # now offline: the pinned revision resolves from the cache without any further call
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(calls)
    assert hub.resolve_model("zipa-cr-small-300k", revision="v1.0").checkpoint == mf.checkpoint
    assert len(calls) == n
    # unknown checkpoint layout: a clear error
    listing["files"] = ["model.onnx"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(hub.ModelNotAvailableError, match="no checkpoint found"):
        hub.download_model("someone/other-model")
