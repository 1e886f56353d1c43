#!/usr/bin/env python3
"""Download IPAPack++ Shar shards (ZIPA's training data) from the Hugging Face hub.

    python local/download_ipapack.py --repo-id anyspeech/<dataset-repo> --out-dir download/ipapack \
        [--patterns '*.jsonl.gz,*.tar'] [--revision main]

ZIPA distributes the data as lhotse Shar (``cuts.NNNNNN.jsonl.gz`` + ``recording.NNNNNN.tar``
with 16 kHz FLAC) in several dataset repos of the ``anyspeech`` organisation (see the
collections linked from the ZIPA README). Each ``--repo-id`` goes to ``<out-dir>/<repo name>``;
pass those directories to training with ``--train-shar DIR[:WEIGHT]``.

Offline (``HF_HUB_OFFLINE=1``) or without network access the script stops at once with a
one-line message and exit status 2, instead of retrying.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_PATTERNS = "*.jsonl.gz,*.tar"


class DownloadError(RuntimeError):
    """A download that cannot happen (offline, unreachable hub, unknown repo)."""


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return env in ("1", "true", "yes", "on") or bool(constants.HF_HUB_OFFLINE)


def _check_reachable(endpoint: str, timeout: float = 5.0) -> None:
    """Fail fast when the hub host does not accept a TCP connection."""
    url = urlparse(endpoint)
    host = url.hostname or endpoint
    port = url.port or (443 if url.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise DownloadError(f"cannot reach the Hugging Face hub at {endpoint} ({e}); check the network") from e


def download_ipapack(
    repo_id: str,
    out_dir: str | Path,
    *,
    patterns: list[str] | None = None,
    revision: str | None = None,
    repo_type: str = "dataset",
    max_workers: int = 8,
) -> Path:
    """Download the files of ``repo_id`` matching ``patterns`` into ``out_dir``; returns it.

    Raises DownloadError (one line) when offline, when the hub is unreachable, or when the repo
    or revision does not exist.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if _offline():
        raise DownloadError(
            f"HF_HUB_OFFLINE is set, so {repo_id} cannot be downloaded; unset it, or copy the Shar shards "
            f"to {out_dir} yourself"
        )
    _check_reachable(constants.ENDPOINT)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        path = snapshot_download(
            repo_id=repo_id,
            repo_type=repo_type,
            revision=revision,
            local_dir=str(out_dir),
            allow_patterns=patterns or DEFAULT_PATTERNS.split(","),
            max_workers=max_workers,
        )
    except RepositoryNotFoundError as e:
        raise DownloadError(f"{repo_type} repo {repo_id} not found on the hub (or it is private/gated)") from e
    except RevisionNotFoundError as e:
        raise DownloadError(f"{repo_type} repo {repo_id} has no revision {revision!r}") from e
    except LocalEntryNotFoundError as e:
        raise DownloadError(f"{repo_id}: the hub is not reachable and nothing is cached ({e})") from e
    except (HfHubHTTPError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DownloadError(f"{repo_id}: download failed: {first}") from e
    n = sum(1 for _ in Path(path).rglob("cuts.*.jsonl.gz"))
    if n == 0:
        print(f"[download_ipapack] warning: {repo_id} gave no cuts.*.jsonl.gz matching {patterns}", file=sys.stderr)
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo-id", action="append", required=True,
                   help="Hub dataset repo id (owner/name); repeatable.")
    p.add_argument("--out-dir", default="download/ipapack", help="Each repo goes to OUT_DIR/<repo name>.")
    p.add_argument("--patterns", default=DEFAULT_PATTERNS,
                   help=f"Comma-separated allow patterns (fnmatch on repo paths); default {DEFAULT_PATTERNS!r}.")
    p.add_argument("--revision", default=None, help="Branch, tag or commit (default: main).")
    p.add_argument("--repo-type", default="dataset", choices=["dataset", "model"])
    p.add_argument("--max-workers", type=int, default=8, help="Parallel file downloads.")
    args = p.parse_args(argv)
    patterns = [x.strip() for x in args.patterns.split(",") if x.strip()]
    for repo_id in args.repo_id:
        target = Path(args.out_dir) / repo_id.split("/")[-1]
        try:
            path = download_ipapack(repo_id, target, patterns=patterns, revision=args.revision,
                                    repo_type=args.repo_type, max_workers=args.max_workers)
        except DownloadError as e:
            print(f"download_ipapack: error: {e}", file=sys.stderr)
            return 2
        print(f"[download_ipapack] {repo_id} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
