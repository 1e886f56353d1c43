"""Published ZIPA checkpoints on the Hugging Face Hub: registry, download, cache and safe loading.

Models live in the standard huggingface_hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``) so they are shared with every other Hub-aware tool. ``HF_HUB_OFFLINE=1`` is read at
call time (huggingface_hub itself only reads it at import), and in offline mode nothing touches the network: a
model missing from the cache fails at once with a message that says how to fetch it.

Public API::

    MODELS                       # dict name -> ModelSpec (the registry)
    resolve_model(name_or_path, revision=None, cache_dir=None) -> ModelFiles
    download_model(name, revision=None, cache_dir=None, extra_patterns=None) -> ModelFiles
    list_models(cache_dir=None) -> list[ModelStatus]
    remove_model(name, cache_dir=None) -> int                    # bytes freed
    load_state_dict(path) -> dict[str, torch.Tensor]
    infer_family_size(state_dict) -> tuple[str | None, str | None]
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# re-exported: hub users load what they fetched with these (anyphone.weights.safe_load holds them)
from anyphone.families import infer_family_size
from anyphone.weights.safe_load import UnsafeCheckpointError, load_state_dict

__all__ = [
    "MODELS",
    "ModelFiles",
    "ModelNotAvailableError",
    "ModelSpec",
    "ModelStatus",
    "UnsafeCheckpointError",
    "download_model",
    "hub_cache_dir",
    "hub_endpoint",
    "infer_family_size",
    "is_offline",
    "list_models",
    "load_state_dict",
    "remove_model",
    "resolve_model",
]

# ZIPA's own download script picks "the first file whose name contains 'avg' and ends with .pth".
AVG_RULE = "first *.pth whose name contains 'avg'"
TOKENS_FILE = "tokens.txt"


@dataclass(frozen=True)
class ModelSpec:
    """One published averaged ZIPA checkpoint.

    ``checkpoint`` is the file name inside the repo when known; ``None`` means "apply AVG_RULE to the repo's
    file list". A known name that turns out to be absent also falls back to AVG_RULE (several names are unverified).
    """

    name: str
    repo_id: str
    family: str  # "crctc" | "transducer"
    size: str  # "small" | "large"
    steps: str  # e.g. "300k"
    checkpoint: str | None = None
    tokens: str = TOKENS_FILE
    description: str = ""


def _spec(name: str, repo: str, family: str, size: str, steps: str, ckpt: str | None, desc: str) -> ModelSpec:
    return ModelSpec(name, "anyspeech/" + repo, family, size, steps, ckpt, TOKENS_FILE, desc)


# From the ZIPA README "Pretrained models" table (see shared/reference/zipa/pretrained_checkpoints.json).
MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        _spec("zipa-t-small-300k", "zipa-small-noncausal-300k", "transducer", "small", "300k", None,
              "Zipa-T-small, 65M, pruned transducer"),
        _spec("zipa-t-large-300k", "zipa-large-noncausal-300k", "transducer", "large", "300k", None,
              "Zipa-T-large, 302M, pruned transducer"),
        _spec("zipa-t-small-500k", "zipa-small-noncausal-500k", "transducer", "small", "500k",
              "zipa_small_noncausal_500000_avg10.pth", "Zipa-T-small, 65M, pruned transducer"),
        _spec("zipa-t-large-500k", "zipa-large-noncausal-500k", "transducer", "large", "500k",
              "zipa_large_noncausal_500000_avg10.pth", "Zipa-T-large, 302M, pruned transducer"),
        _spec("zipa-cr-small-300k", "zipa-small-crctc-300k", "crctc", "small", "300k", None,
              "Zipa-Cr-small, 64M, CR-CTC"),
        _spec("zipa-cr-large-300k", "zipa-large-crctc-300k", "crctc", "large", "300k", None,
              "Zipa-Cr-large, 300M, CR-CTC"),
        _spec("zipa-cr-small-500k", "zipa-small-crctc-500k", "crctc", "small", "500k",
              "zipa_small_crctc_500000_avg10.pth", "Zipa-Cr-small, 64M, CR-CTC"),
        _spec("zipa-cr-large-500k", "zipa-large-crctc-500k", "crctc", "large", "500k",
              "zipa_large_crctc_500000_avg10.pth", "Zipa-Cr-large, 300M, CR-CTC"),
        _spec("zipa-cr-ns-small-700k", "zipa-small-crctc-ns-700k", "crctc", "small", "700k",
              "zipa_small_crctc_extended_0.5_scale_700000_avg10.pth",
              "Zipa-Cr-Ns-small, 64M, CR-CTC + noisy student"),
        _spec("zipa-cr-ns-large-800k", "zipa-large-crctc-ns-800k", "crctc", "large", "800k",
              "zipa_large_crctc_0.5_scale_800000_avg10.pth", "Zipa-Cr-Ns-large, 300M, CR-CTC + noisy student"),
        _spec("zipa-cr-ns-small-nodiac-700k", "zipa-small-crctc-ns-no-diacritics-700k", "crctc", "small",
              "700k", None, "Zipa-Cr-Ns-small, no diacritics, 64M"),
        _spec("zipa-cr-ns-large-nodiac-780k", "zipa-large-crctc-ns-no-diacritics-780k", "crctc", "large",
              "780k", None, "Zipa-Cr-Ns-large, no diacritics, 300M"),
    ]
}


@dataclass
class ModelFiles:
    """Local files of one model. ``family``/``size`` are None when they cannot be told from the name."""

    checkpoint: Path
    tokens: Path | None
    family: str | None
    size: str | None
    name: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    extra: list[Path] = field(default_factory=list)  # files fetched for download_model(extra_patterns=...)


@dataclass
class ModelStatus:
    """Row of :func:`list_models`: a registry entry (or a non-registry cached ZIPA-like repo)."""

    name: str
    repo_id: str
    family: str | None
    size: str | None
    steps: str | None
    cached: bool
    size_on_disk: int  # bytes, 0 if not cached
    revisions: list[str]  # cached commit hashes


class ModelNotAvailableError(FileNotFoundError):
    """The model is neither a local path nor in the cache, and it cannot (or may not) be downloaded."""


# --------------------------------------------------------------------------------------------------------
# environment


def is_offline() -> bool:
    """True if HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set now, or was set when huggingface_hub loaded."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        val = os.environ.get(var)
        if val is not None:
            return val.strip().upper() in {"1", "ON", "YES", "TRUE"}
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    """The Hub URL: $HF_ENDPOINT read at call time (huggingface_hub reads it only at import), else its default."""
    env = os.environ.get("HF_ENDPOINT", "").strip()
    if env:
        return env.rstrip("/")
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hub cache in use: explicit ``cache_dir``, else $HF_HUB_CACHE, else $HF_HOME/hub, else the default.

    Read at call time so tests and users can redirect it after import.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


# --------------------------------------------------------------------------------------------------------
# name handling


def _lookup(name_or_repo: str) -> ModelSpec | None:
    """Registry entry by name (case-insensitive) or by repo id."""
    key = name_or_repo.strip()
    if key.lower() in MODELS:
        return MODELS[key.lower()]
    for spec in MODELS.values():
        if spec.repo_id.lower() == key.lower():
            return spec
    return None


def _looks_like_repo_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~"))


def _guess_from_name(text: str) -> tuple[str | None, str | None]:
    """(family, size) from a repo or file name following ZIPA's naming (…crctc… / …noncausal…, small/large)."""
    t = text.lower()
    family = "crctc" if ("crctc" in t or "-cr-" in t or "ctc" in t) else (
        "transducer" if ("noncausal" in t or "transducer" in t or "zipa-t-" in t) else None)
    size = "small" if "small" in t else ("large" if "large" in t else None)
    return family, size


def _select_checkpoint(files: list[str], preferred: str | None) -> str | None:
    """Pick the checkpoint among repo-relative ``files``: ``preferred`` if present, else ZIPA's avg rule."""
    if preferred is not None:
        for f in files:
            if f == preferred or f.rsplit("/", 1)[-1] == preferred:
                return f
    for f in sorted(files):
        base = f.rsplit("/", 1)[-1]
        if "avg" in base and base.endswith(".pth"):
            return f
    return None


def _select_tokens(files: list[str], preferred: str = TOKENS_FILE) -> str | None:
    """Prefer a top-level tokens.txt, else the shallowest one in a sub-folder."""
    hits = [f for f in files if f.rsplit("/", 1)[-1] == preferred]
    return min(hits, key=lambda f: (f.count("/"), f)) if hits else None


def _download_hint(label: str, repo_id: str) -> str:
    return (f"download it while online with `anyphone download {label}` or "
            f"python -c \"from anyphone.inference.hub import download_model; download_model('{label}')\" "
            f"(or `hf download {repo_id}`)")


# --------------------------------------------------------------------------------------------------------
# cache inspection without network


def _cached_snapshot(repo_id: str, revision: str | None, cache: Path) -> Path | None:
    """Snapshot folder for ``revision`` (branch/tag via refs/, or a commit hash) in the hub-layout cache."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    if not repo_dir.is_dir():
        return None
    rev = revision or "main"
    ref_file = repo_dir / "refs" / rev
    commit = ref_file.read_text().strip() if ref_file.is_file() else rev
    snap = repo_dir / "snapshots" / commit
    if snap.is_dir():
        return snap
    if revision is None:
        # No refs/main (e.g. only pinned revisions were downloaded): use the single snapshot if unambiguous.
        snaps = [p for p in (repo_dir / "snapshots").glob("*") if p.is_dir()]
        if len(snaps) == 1:
            return snaps[0]
    return None


def _snapshot_files(snap: Path) -> list[str]:
    return sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file())


def _files_from_snapshot(snap: Path, spec: ModelSpec | None, repo_id: str) -> tuple[Path, Path | None] | None:
    files = _snapshot_files(snap)
    ckpt = _select_checkpoint(files, spec.checkpoint if spec else None)
    if ckpt is None:
        return None
    tok = _select_tokens(files, spec.tokens if spec else TOKENS_FILE)
    return snap / ckpt, (snap / tok if tok else None)


# --------------------------------------------------------------------------------------------------------
# public API


def resolve_model(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> ModelFiles:
    """Find (and, when online and needed, download) a model's checkpoint and tokens file.

    Accepts, in this order:
      * a local ``.pth``/``.pt`` file (tokens: a ``tokens.txt`` beside it, else None);
      * a local directory (checkpoint by ZIPA's avg rule, else the only ``*.pth``/``*.pt``; ``tokens.txt``);
      * a registry name (``zipa-cr-small-300k``, see ``MODELS``) or a Hub repo id (``org/name``).
    For Hub models the cache is used first; the network is used only when the file is missing (or
    ``revision`` names a branch that is not cached) and HF_HUB_OFFLINE is not set.

    Raises:
        ModelNotAvailableError: nothing found, with a one-line message naming the model and how to get it.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        fam, size = _guess_from_name(path.name)
        tok = path.parent / TOKENS_FILE
        return ModelFiles(path, tok if tok.is_file() else None, fam, size, name=path.stem)
    if path.is_dir():
        return _resolve_dir(path)
    if text.endswith((".pth", ".pt")) or text.startswith(("/", "./", "../", "~")):
        raise ModelNotAvailableError(f"{text}: no such checkpoint file or directory")

    spec = _lookup(text)
    if spec is None and not _looks_like_repo_id(text):
        known = ", ".join(MODELS)
        raise ModelNotAvailableError(
            f"{text!r}: not a local file/directory, a known model name or a Hub repo id (org/name); "
            f"known models: {known}")
    repo_id = spec.repo_id if spec else text
    cache = hub_cache_dir(cache_dir)

    snap = _cached_snapshot(repo_id, revision, cache)
    if snap is not None:
        found = _files_from_snapshot(snap, spec, repo_id)
        if found is not None:
            return _model_files(found, spec, repo_id, snap.name)

    label = spec.name if spec else repo_id
    if is_offline():
        raise ModelNotAvailableError(
            f"model {label!r} ({repo_id}, revision {revision or 'main'}) is not in the Hub cache {cache} "
            f"and HF_HUB_OFFLINE is set; {_download_hint(label, repo_id)}")
    return download_model(text, revision=revision, cache_dir=cache_dir)


def _model_files(found: tuple[Path, Path | None], spec: ModelSpec | None, repo_id: str,
                 revision: str | None) -> ModelFiles:
    ckpt, tok = found
    if spec is not None:
        fam, size, name = spec.family, spec.size, spec.name
    else:
        fam, size = _guess_from_name(repo_id + "/" + ckpt.name)
        name = repo_id
    return ModelFiles(ckpt, tok, fam, size, name=name, repo_id=repo_id, revision=revision)


def _resolve_dir(path: Path) -> ModelFiles:
    files = sorted(p.name for p in path.iterdir() if p.is_file())
    ckpt = _select_checkpoint(files, None)
    if ckpt is None:
        cands = [f for f in files if f.endswith((".pth", ".pt"))]
        if len(cands) != 1:
            raise ModelNotAvailableError(
                f"{path}: expected one *avg*.pth checkpoint or exactly one .pth/.pt file, found {cands or 'none'}")
        ckpt = cands[0]
    fam, size = _guess_from_name(path.name + "/" + ckpt)
    tok = path / TOKENS_FILE
    return ModelFiles(path / ckpt, tok if tok.is_file() else None, fam, size, name=path.name)


def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport errors of whichever HTTP client this huggingface_hub release uses (httpx2, httpx or requests)."""
    import importlib

    found: list[type[BaseException]] = []
    for mod, attr in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            found.append(getattr(importlib.import_module(mod), attr))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def download_model(
    name: str,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    extra_patterns: list[str] | None = None,
) -> ModelFiles:
    """Download a registry model (or any ZIPA-style Hub repo id) into the standard cache and return its files.

    Only the checkpoint and ``tokens.txt`` are fetched, plus any repo files matching ``extra_patterns``
    (fnmatch patterns such as ``["*.onnx"]``; returned in ``ModelFiles.extra``). ``revision`` (branch, tag or
    commit hash) pins the version. Files already in the cache are not fetched again. In offline mode this
    returns the cached files or raises :class:`ModelNotAvailableError`; without network it raises
    :class:`ModelNotAvailableError` naming the model and the transport error.
    """
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    spec = _lookup(name)
    if spec is None and not _looks_like_repo_id(name):
        raise ModelNotAvailableError(f"{name!r}: unknown model; expected one of {', '.join(MODELS)} or org/name")
    repo_id = spec.repo_id if spec else name
    label = spec.name if spec else repo_id
    cache = hub_cache_dir(cache_dir)
    if is_offline():
        snap = _cached_snapshot(repo_id, revision, cache)
        found = _files_from_snapshot(snap, spec, repo_id) if snap else None
        if found is None:
            raise ModelNotAvailableError(
                f"model {label!r} ({repo_id}) is not in the Hub cache {cache} and HF_HUB_OFFLINE is set; "
                f"{_download_hint(label, repo_id)}")
        mf = _model_files(found, spec, repo_id, snap.name)
        mf.extra = [snap / f for f in _snapshot_files(snap)
                    if extra_patterns and any(fnmatch.fnmatch(f, p) for p in extra_patterns)]
        return mf

    try:
        endpoint = hub_endpoint()
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, files_metadata=False)
        files = [s.rfilename for s in (info.siblings or [])]
        commit = info.sha
        ckpt = _select_checkpoint(files, spec.checkpoint if spec else None)
        if ckpt is None:
            raise ModelNotAvailableError(
                f"{repo_id}@{revision or 'main'}: no checkpoint found (expected {AVG_RULE}); files: {files[:20]}")
        tok = _select_tokens(files, spec.tokens if spec else TOKENS_FILE)
        # Download by commit hash so checkpoint and tokens come from the same revision.
        ckpt_path = hf_hub_download(repo_id, ckpt, revision=commit or revision, cache_dir=cache, endpoint=endpoint)
        tok_path = (hf_hub_download(repo_id, tok, revision=commit or revision, cache_dir=cache, endpoint=endpoint)
                    if tok else None)
        extra = [Path(hf_hub_download(repo_id, f, revision=commit or revision, cache_dir=cache, endpoint=endpoint))
                 for f in files if extra_patterns and f not in (ckpt, tok)
                 and any(fnmatch.fnmatch(f, p) for p in extra_patterns)]
    except ModelNotAvailableError:
        raise
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
        raise ModelNotAvailableError(
            f"model {label!r}: {repo_id}@{revision or 'main'} not found on the Hub ({type(e).__name__})") from e
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, *_network_errors()) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelNotAvailableError(
            f"model {label!r}: could not download {repo_id}@{revision or 'main'} into {cache}: {first}") from e
    if commit and revision != commit:
        # hf_hub_download was given the commit hash, which writes no ref; record branch/tag -> commit so a
        # later offline resolve of the same revision (default "main") finds this snapshot.
        ref = cache / ("models--" + repo_id.replace("/", "--")) / "refs" / (revision or "main")
        try:
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(commit)
        except OSError:
            pass
    mf = _model_files((Path(ckpt_path), Path(tok_path) if tok_path else None), spec, repo_id, commit)
    mf.extra = extra
    return mf


def _scan(cache: Path) -> Any | None:
    from huggingface_hub import CacheNotFound, scan_cache_dir

    if not cache.is_dir():
        return None
    try:
        return scan_cache_dir(cache)
    except (CacheNotFound, OSError, ValueError):  # report a missing/corrupt cache as empty, not a crash
        return None


def list_models(cache_dir: str | os.PathLike | None = None) -> list[ModelStatus]:
    """All registry models with their cache state (no network), plus other cached repos whose name has 'zipa'."""
    info = _scan(hub_cache_dir(cache_dir))
    cached = {r.repo_id.lower(): r for r in info.repos if r.repo_type == "model"} if info else {}
    rows = []
    for spec in MODELS.values():
        r = cached.pop(spec.repo_id.lower(), None)
        rows.append(ModelStatus(spec.name, spec.repo_id, spec.family, spec.size, spec.steps, r is not None,
                                int(r.size_on_disk) if r else 0,
                                sorted(rv.commit_hash for rv in r.revisions) if r else []))
    for key, r in sorted(cached.items()):
        if "zipa" in key:
            fam, size = _guess_from_name(r.repo_id)
            rows.append(ModelStatus(r.repo_id, r.repo_id, fam, size, None, True, int(r.size_on_disk),
                                    sorted(rv.commit_hash for rv in r.revisions)))
    return rows


def remove_model(name: str, cache_dir: str | os.PathLike | None = None) -> int:
    """Delete every cached revision of a model (registry name or repo id); returns the bytes freed.

    Raises:
        ModelNotAvailableError: the model is not in the cache.
    """
    spec = _lookup(name)
    repo_id = spec.repo_id if spec else name
    cache = hub_cache_dir(cache_dir)
    info = _scan(cache)
    repo = None
    if info is not None:
        repo = next((r for r in info.repos if r.repo_type == "model" and r.repo_id.lower() == repo_id.lower()),
                    None)
    if repo is None:
        raise ModelNotAvailableError(f"model {name!r} ({repo_id}) is not in the Hub cache {cache}; nothing to remove")
    hashes = [rv.commit_hash for rv in repo.revisions]
    # delete_revisions looks hashes up across every cached repo; restrict the cache view to this repo so a
    # commit hash shared with another repo (mirrors, forks) cannot delete the wrong one.
    only_this = dataclasses.replace(info, repos=frozenset({repo}), size_on_disk=repo.size_on_disk)
    strategy = only_this.delete_revisions(*hashes)
    freed = int(strategy.expected_freed_size)
    strategy.execute()
    # delete_revisions leaves the repo folder when refs/ or blobs/ remain empty-ish; tidy it up.
    repo_path = Path(repo.repo_path)
    if repo_path.exists() and not any(p.is_file() for p in (repo_path / "blobs").glob("*")):
        import shutil

        shutil.rmtree(repo_path, ignore_errors=True)
    return freed
