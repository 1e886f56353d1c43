"""A Hugging Face hub cache on disk, for the offline hub tests (test_hub, test_api, test_cli).

huggingface_hub stores each file once under blobs/<sha256> and links it from snapshots/<commit>/<path>;
refs/main names the commit. Building that layout by hand lets the real hub code run with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def add_hub_blob(repo_dir: Path, rel: str, data: bytes, commit: str = COMMIT) -> Path:
    """Store ``data`` as huggingface_hub does: blobs/<sha256> plus a snapshots/<commit>/<rel> symlink."""
    blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = repo_dir / "snapshots" / commit / rel
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    return link


def make_hub_repo(cache: Path, repo_id: str, files: Mapping[str, bytes], commit: str = COMMIT) -> Path:
    """models--org--name/{blobs,refs/main,snapshots/<commit>/...} holding ``files`` (path -> bytes)."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    for rel, data in files.items():
        add_hub_blob(repo_dir, rel, data, commit)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return repo_dir
