"""Shar shards from remote storage, streamed through lhotse's own Shar readers.

A Shar source (``--train-shar``, ``--dev-shar``, ``--test-shar``) may be, besides a local folder:

* ``http://HOST/PATH`` or ``https://...``: plain HTTP has no listing, so the folder must hold the index file
  ``cuts.index.json`` that ``local/index_shards.py DIR`` writes (fields, shard files and their sizes);
* ``s3://BUCKET/PREFIX``: listed with ListObjectsV2 (boto3; credentials and ``AWS_ENDPOINT_URL`` as usual);
* ``hf://datasets/OWNER/NAME/SUBDIR@REVISION`` (or ``hf://datasets/OWNER/NAME@REVISION/SUBDIR``): a Hugging
  Face dataset repo, listed through huggingface_hub (``HF_ENDPOINT`` and the token, ``HF_TOKEN`` or
  ``hf auth login``, are honoured) and pinned to one commit; the shards are streamed from its ``resolve`` URLs,
  nothing is downloaded to the cache;
* ``pipe:COMMAND`` with ``{}`` where the file name goes, e.g. ``pipe:aws s3 cp s3://b/ipapack/{} -``: the
  command is run for ``cuts.index.json`` and then once per shard (names are checked against the Shar naming
  pattern and shell-quoted before they are put into the command).

Reading is sequential and bounded: each open shard field is one stream with a 1 MiB buffer, so neither memory
nor local disk grows with the size of a tar (IPAPack++'s are 2.7-3.7 GB). lhotse opens every shard file through
its IO backend (``lhotse.serialization.open_best``); :func:`install_io_backend` puts :class:`RemoteIOBackend`
in front of it for ``http(s)://``, ``s3://`` and ``pipe:`` identifiers.

Failures. A request that fails with HTTP 429 or 5xx, a refused or dropped connection, a timeout or a stream
that ends before its known size is retried with exponential backoff and jitter, resuming at the byte where it
stopped (HTTP/S3 ``Range``; a pipe is run again and the bytes already read are skipped). A shard that still
fails (or is corrupt: a bad tar or gzip, mismatched ids) is skipped with a one-line warning and counted by
the same :class:`anyphone.data.shar.BadShards` as damaged local shards, against the one limit
``--max-bad-shards`` (local and remote shards together); more bad shards than that, or a full pass over a
source in which every shard failed, stops the run with :class:`anyphone.data.shar.TooManyBadShardsError`.
:func:`shard_failures` keeps the reasons, for reports.

Retry settings (environment, read when a source is opened):

===================================== ======= ==========================================================
``ANYPHONE_REMOTE_RETRIES``           8       retries of one request without progress before the shard fails
``ANYPHONE_REMOTE_BACKOFF``           1.0     first backoff in seconds (doubled each retry, with jitter)
``ANYPHONE_REMOTE_BACKOFF_MAX``       60      longest backoff in seconds (also caps ``Retry-After``)
``ANYPHONE_REMOTE_TIMEOUT``           60      seconds without data before a read counts as failed
===================================== ======= ==========================================================

(``ANYPHONE_REMOTE_MAX_FAILED_SHARDS`` is no longer read: the limit is ``--max-bad-shards``.)
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import random
import re
import shlex
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from lhotse import CutSet
from lhotse.serialization import (
    CompositeIOBackend,
    IOBackend,
    get_current_io_backend,
    set_current_io_backend,
)
from lhotse.shar.readers.lazy import LazySharIterator

from anyphone.data.shar import BadShards, shard_error

log = logging.getLogger(__name__)

# The index lives in the shard folder. Its name starts with "cuts." and lacks ".jsonl" because lhotse's own
# CutSet.from_shar(in_dir=...) takes every other file name in the folder for a field and then fails.
INDEX_NAME = "cuts.index.json"
INDEX_FORMAT = "anyphone-shar-index"
INDEX_VERSION = 1
REMOTE_PREFIXES = ("http://", "https://", "s3://", "hf://", "pipe:")
# Shar shard names: FIELD.NNNNNN.EXT. Stricter than what a local folder accepts, because names from a listing
# or an index may end up in a URL or (for pipe:) a shell command.
SHARD_NAME_RE = re.compile(r"^(?P<field>[A-Za-z0-9_\-]+)\.(?P<idx>\d{6})\.(?P<ext>[A-Za-z0-9][A-Za-z0-9.]*)$")
_READ_BUFFER = 1 << 20


# ----------------------------------------------------------------------------------------------
# Errors and settings
# ----------------------------------------------------------------------------------------------


class ShardReadError(OSError):
    """One shard file could not be read (after retries, or a permanent error such as 404). One line."""


class _Transient(Exception):
    """A failure worth retrying (429, 5xx, dropped connection, timeout). ``retry_after``: server's hint (s)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _env_number(name: str, default: float, kind: type = float) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return kind(default)
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r}: expected a {kind.__name__}") from None
    if value < 0:
        raise ValueError(f"environment variable {name}={raw!r}: must not be negative")
    return value


_RETIRED_LIMIT = "ANYPHONE_REMOTE_MAX_FAILED_SHARDS"
_RETIRED_WARNED: list[bool] = []  # warned once per process


@dataclass(frozen=True)
class RemoteConfig:
    """Retry policy for remote shards (see the module docstring for the environment variables)."""

    retries: int = 8
    backoff: float = 1.0
    backoff_max: float = 60.0
    timeout: float = 60.0

    @classmethod
    def from_env(cls) -> RemoteConfig:
        if os.environ.get(_RETIRED_LIMIT, "").strip() and not _RETIRED_WARNED:
            _RETIRED_WARNED.append(True)
            log.warning(f"environment variable {_RETIRED_LIMIT} is no longer read: bad shards, local and remote "
                        "together, are limited by --max-bad-shards")
        return cls(
            retries=_env_number("ANYPHONE_REMOTE_RETRIES", cls.retries, int),
            backoff=_env_number("ANYPHONE_REMOTE_BACKOFF", cls.backoff),
            backoff_max=_env_number("ANYPHONE_REMOTE_BACKOFF_MAX", cls.backoff_max),
            timeout=_env_number("ANYPHONE_REMOTE_TIMEOUT", cls.timeout),
        )

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (1-based): ``backoff * 2**(attempt-1)`` capped at
        ``backoff_max``, times a random factor in [0.5, 1] so that many readers that failed together do not
        come back together; a server's ``Retry-After`` is honoured up to ``backoff_max``."""
        base = min(self.backoff_max, self.backoff * (2.0 ** (attempt - 1)))
        wait = base * random.uniform(0.5, 1.0)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.backoff_max))
        return wait


# Settings travel with the identifiers they were resolved for, so a stream opened later (or in a dataloader
# process that unpickled the CutSet) uses the policy and the expected size of its source.
_SHARD_INFO: dict[str, tuple[RemoteConfig, int | None]] = {}
_INFO_LOCK = threading.Lock()


def _register(identifiers: Mapping[str, int | None], config: RemoteConfig) -> None:
    with _INFO_LOCK:
        for ident, size in identifiers.items():
            _SHARD_INFO[ident] = (config, size)


def _info(identifier: str) -> tuple[RemoteConfig, int | None]:
    with _INFO_LOCK:
        found = _SHARD_INFO.get(identifier)
    return found if found is not None else (RemoteConfig.from_env(), None)


def is_remote(spec: str | os.PathLike) -> bool:
    """True for a source that :func:`remote_shar_fields` handles (``http(s)://``, ``s3://``, ``hf://``,
    ``pipe:``); local folders are read by :mod:`anyphone.data.shar` directly."""
    return isinstance(spec, str) and spec.startswith(REMOTE_PREFIXES)


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


# ----------------------------------------------------------------------------------------------
# Shard names, listings and the index file
# ----------------------------------------------------------------------------------------------


def group_shards(names: Mapping[str, int | None], where: str) -> dict[str, list[tuple[str, int | None]]]:
    """Shard files by field from ``{file name: size}``: ``{"cuts": [(name, size), ...], ...}`` in shard order.

    Names that are not Shar shards are ignored. Raises FileNotFoundError without ``cuts.NNNNNN.jsonl.gz``
    shards and ValueError when fields have different shard numbers (both naming ``where``).
    """
    by_field: dict[str, dict[int, tuple[str, int | None]]] = {}
    for name, size in names.items():
        m = SHARD_NAME_RE.match(name)
        if m is None:
            continue
        by_field.setdefault(m["field"], {})[int(m["idx"])] = (name, size)
    cuts = {i: v for i, v in by_field.get("cuts", {}).items() if ".jsonl" in v[0]}
    if not cuts:
        raise FileNotFoundError(f"Shar source {where} has no cuts.NNNNNN.jsonl.gz shards")
    by_field["cuts"] = cuts
    want = sorted(cuts)
    out = {}
    for fld, shards in sorted(by_field.items()):
        if sorted(shards) != want:
            raise ValueError(f"Shar source {where}: field {fld!r} has shards {_ranges(sorted(shards))}, "
                             f"expected {_ranges(want)} (as cuts)")
        out[fld] = [shards[i] for i in want]
    return out


def _ranges(idx: list[int]) -> str:
    return f"{len(idx)} ({idx[0]:06d}..{idx[-1]:06d})" if idx else "none"


def build_index(folder: str | os.PathLike, count_cuts: bool = True) -> dict[str, Any]:
    """The index of a local Shar folder, as written to ``cuts.index.json``.

    ``{"format": "anyphone-shar-index", "version": 1, "num_shards": N, "total_bytes": B,
    "fields": {"cuts": [{"name": "cuts.000000.jsonl.gz", "bytes": 1234, "num_cuts": 1000}, ...],
    "recording": [{"name": "recording.000000.tar", "bytes": 3000000000}, ...]}}``.
    ``num_cuts`` (lines of the cuts file) is left out with ``count_cuts=False``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Shar directory {folder} does not exist")
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    fields = group_shards(sizes, str(folder))
    out_fields: dict[str, list[dict[str, Any]]] = {}
    for fld, shards in fields.items():
        rows = []
        for name, size in shards:
            row: dict[str, Any] = {"name": name, "bytes": int(size or 0)}
            if fld == "cuts" and count_cuts:
                row["num_cuts"] = _count_lines(folder / name)
            rows.append(row)
        out_fields[fld] = rows
    return {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "num_shards": len(fields["cuts"]),
        "total_bytes": sum(r["bytes"] for rows in out_fields.values() for r in rows),
        "fields": out_fields,
    }


def _count_lines(path: Path) -> int:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(_READ_BUFFER), b""))
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot be read as a cuts manifest ({_one_line(e)})") from e


def write_index(folder: str | os.PathLike, output: str | os.PathLike | None = None,
                count_cuts: bool = True) -> tuple[Path, dict[str, Any]]:
    """Write :func:`build_index` of ``folder`` to ``output`` (default ``folder/cuts.index.json``) atomically."""
    from anyphone.fileio import atomic_write_text, check_output_path

    index = build_index(folder, count_cuts=count_cuts)
    out = check_output_path(output if output is not None else Path(folder) / INDEX_NAME)
    atomic_write_text(out, json.dumps(index, indent=1, ensure_ascii=False) + "\n")
    return out, index


def parse_index(data: bytes, where: str) -> dict[str, list[tuple[str, int | None]]]:
    """Shard files by field from the bytes of an index file; only data is read from it, never code.

    Raises ValueError (one line naming ``where``) for anything but a well-formed index.
    """
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{where}: not a shard index ({_one_line(e)})") from None
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise ValueError(f"{where}: not a shard index (no \"format\": \"{INDEX_FORMAT}\")")
    if doc.get("version") != INDEX_VERSION:
        raise ValueError(f"{where}: shard index version {doc.get('version')!r}; this anyphone reads "
                         f"version {INDEX_VERSION}")
    fields = doc.get("fields")
    if not isinstance(fields, dict) or not fields:
        raise ValueError(f"{where}: shard index has no \"fields\" object")
    names: dict[str, int | None] = {}
    for fld, rows in fields.items():
        if not isinstance(rows, list) or not rows:
            raise ValueError(f"{where}: field {fld!r} must list shard files")
        for row in rows:
            name = row.get("name") if isinstance(row, dict) else None
            size = row.get("bytes") if isinstance(row, dict) else None
            if not isinstance(name, str) or SHARD_NAME_RE.match(name) is None or not name.startswith(fld + "."):
                raise ValueError(f"{where}: field {fld!r} lists {name!r}, which is not a Shar shard file name "
                                 f"({fld}.NNNNNN.EXT)")
            if size is not None and (not isinstance(size, int) or size < 0):
                raise ValueError(f"{where}: {name}: \"bytes\" must be a non-negative integer, got {size!r}")
            names[name] = size
    return group_shards(names, where)


# ----------------------------------------------------------------------------------------------
# Transports: open(offset) -> a reader of the bytes from offset on
# ----------------------------------------------------------------------------------------------


class _Reader:
    """A byte stream of one request: ``read(n)`` (b"" at the end) and ``close()``; ``total`` is the full file
    size when the response told it."""

    total: int | None = None

    def read(self, n: int) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - interface
        pass


_POOLS: dict[int, Any] = {}


def _http_pool(timeout: float) -> Any:
    """One urllib3 PoolManager per process (and timeout): connections are reused across shards."""
    import urllib3

    key = hash((os.getpid(), timeout))
    pool = _POOLS.get(key)
    if pool is None:
        pool = urllib3.PoolManager(num_pools=16, maxsize=8,
                                   timeout=urllib3.Timeout(connect=min(timeout, 30.0), read=timeout))
        _POOLS[key] = pool
    return pool


def _hf_endpoint() -> str:
    """The Hub endpoint in use, read at call time (huggingface_hub reads HF_ENDPOINT only when imported)."""
    env = os.environ.get("HF_ENDPOINT", "").strip()
    if env:
        return env.rstrip("/")
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def _auth_headers(url: str) -> dict[str, str]:
    """The Hub token for URLs on the Hub endpoint (never sent anywhere else)."""
    endpoint = _hf_endpoint()
    if not (url == endpoint or url.startswith(endpoint + "/")):
        return {}
    from huggingface_hub import get_token

    token = get_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _discard(resp: Any) -> None:
    """Finish an error answer (small body) so that its connection can be reused, and give it back."""
    try:
        resp.drain_conn()
    except Exception:  # noqa: BLE001 - a broken connection is simply not reused
        resp.close()
    resp.release_conn()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: our own backoff is good enough


class _HttpReader(_Reader):
    def __init__(self, url: str, offset: int, size: int | None, timeout: float) -> None:
        import urllib3

        self.eof = False

        headers = {"Accept-Encoding": "identity", "User-Agent": "anyphone-shar-reader", **_auth_headers(url)}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
        # Redirects (the Hub sends its files to a CDN) are followed; urllib3 drops Authorization when the host
        # changes. No retries here: the RetryingStream owns the policy.
        retries = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5,
                                raise_on_status=False)
        try:
            resp = _http_pool(timeout).request("GET", url, headers=headers, preload_content=False,
                                               decode_content=False, retries=retries)
        except urllib3.exceptions.HTTPError as e:
            raise _Transient(_one_line(getattr(e, "reason", None) or e)) from e
        status = resp.status
        if status == 429 or status >= 500:
            _discard(resp)
            raise _Transient(f"HTTP {status}", _retry_after(resp.headers.get("Retry-After")))
        if status == 416 and size is not None and offset >= size:
            _discard(resp)
            self.resp, self.total = None, size
            return
        if status in (401, 403):
            _discard(resp)
            hint = "; set HF_TOKEN or run `hf auth login`" if url.startswith(_hf_endpoint() + "/") else ""
            raise ShardReadError(f"{url}: access denied (HTTP {status}){hint}")
        if status == 404:
            _discard(resp)
            raise ShardReadError(f"{url}: not found (HTTP 404)")
        if status not in (200, 206):
            _discard(resp)
            raise ShardReadError(f"{url}: HTTP {status}")
        self.resp = resp
        length = resp.headers.get("Content-Length")
        if status == 206:
            m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
            if m is None or int(m[1]) != offset:
                _discard(resp)
                raise _Transient(f"HTTP 206 with Content-Range {resp.headers.get('Content-Range')!r} for "
                                 f"offset {offset}")
            self.total = int(m[2]) if m[2] != "*" else None
        else:
            self.total = int(length) if length is not None and length.isdigit() else None
            if offset > 0:  # the server ignored Range: skip what was already delivered
                self._skip(offset)

    def _skip(self, n: int) -> None:
        while n > 0:
            chunk = self.read(min(n, _READ_BUFFER))
            if not chunk:
                raise _Transient("connection closed while skipping to the resume offset")
            n -= len(chunk)

    def read(self, n: int) -> bytes:
        import urllib3

        if self.resp is None:
            return b""
        try:
            data = self.resp.read(n)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise _Transient(_one_line(e)) from e
        self.eof = not data
        return data

    def close(self) -> None:
        if self.resp is not None:
            if not self.eof:
                # Unread body (a shard given up half-way): close the connection rather than return it to the
                # pool, where the next request would read the rest of this body as its answer.
                self.resp.close()
            self.resp.release_conn()
            self.resp = None


_S3: dict[int, Any] = {}


def _s3_client(timeout: float) -> Any:
    """A boto3 S3 client per process (clients are not fork-safe). Endpoint, region and credentials come from
    boto3's usual sources (``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, ``~/.aws``, instance roles)."""
    key = hash((os.getpid(), timeout, os.environ.get("AWS_ENDPOINT_URL_S3"), os.environ.get("AWS_ENDPOINT_URL")))
    client = _S3.get(key)
    if client is None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ShardReadError("s3:// shards need boto3: pip install boto3") from None
        cfg = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=min(timeout, 30.0),
                     read_timeout=timeout)
        client = boto3.session.Session().client("s3", config=cfg)
        _S3[key] = client
    return client


def _split_s3(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if not parts.netloc:
        raise ValueError(f"{url}: expected s3://BUCKET/PREFIX")
    return parts.netloc, parts.path.lstrip("/")


def _s3_call(url: str, fn: Callable[[], Any]) -> Any:
    """Run a boto3 call, sorting its errors into retryable (_Transient) and final (ShardReadError)."""
    import botocore.exceptions as bce

    try:
        return fn()
    except bce.ClientError as e:
        err = e.response.get("Error", {})
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = str(err.get("Code", ""))
        if status == 429 or status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError"):
            raise _Transient(f"S3 {code or status}") from e
        if code in ("NoSuchKey", "NoSuchBucket", "404") or status == 404:
            raise ShardReadError(f"{url}: not found ({code or status})") from e
        raise ShardReadError(f"{url}: {code or status} ({err.get('Message', '')})") from e
    except (bce.NoCredentialsError, bce.PartialCredentialsError) as e:
        raise ShardReadError(f"{url}: no AWS credentials ({_one_line(e)}); set AWS_ACCESS_KEY_ID / "
                             f"AWS_SECRET_ACCESS_KEY or a profile") from e
    except (bce.BotoCoreError, OSError) as e:
        raise _Transient(_one_line(e)) from e


class _S3Reader(_Reader):
    def __init__(self, url: str, offset: int, size: int | None, timeout: float) -> None:
        bucket, key = _split_s3(url)
        self.url = url
        if size is not None and offset >= size:
            self.body, self.total = None, size
            return
        kw = {"Range": f"bytes={offset}-"} if offset > 0 else {}
        resp = _s3_call(url, lambda: _s3_client(timeout).get_object(Bucket=bucket, Key=key, **kw))
        self.body = resp["Body"]
        cr = resp.get("ContentRange")
        if cr:
            self.total = int(cr.rsplit("/", 1)[1]) if cr.rsplit("/", 1)[1].isdigit() else None
        else:
            self.total = int(resp.get("ContentLength", 0)) + offset

    def read(self, n: int) -> bytes:
        if self.body is None:
            return b""
        return _s3_call(self.url, lambda: self.body.read(n))

    def close(self) -> None:
        if self.body is not None:
            self.body.close()
            self.body = None


class _PipeReader(_Reader):
    """Output of a shell command (the user's own ``pipe:`` template). A non-zero exit is a failure to
    retry: the command runs again and the bytes already delivered are skipped."""

    def __init__(self, command: str, offset: int, size: int | None, timeout: float) -> None:
        self.command = command.removeprefix("pipe:")
        # a file, not a pipe: a chatty command cannot block on it; closed in close()
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(self.command, shell=True, stdout=subprocess.PIPE, stderr=self.stderr,
                                     stdin=subprocess.DEVNULL)
        self.total = size
        n = offset
        while n > 0:
            chunk = self.read(min(n, _READ_BUFFER))
            if not chunk:
                raise _Transient("command output ended before the resume offset")
            n -= len(chunk)

    def read(self, n: int) -> bytes:
        assert self.proc.stdout is not None
        data = self.proc.stdout.read(n)
        if not data:
            code = self.proc.wait()
            if code != 0:
                self.stderr.seek(0)
                lines = self.stderr.read().decode("utf-8", "replace").strip().splitlines()
                why = f"command exited with status {code}" + (f": {lines[-1]}" if lines else "")
                if code in (126, 127):  # the shell could not run it: trying again will not help
                    raise ShardReadError(f"{self.command}: {why}")
                raise _Transient(why)
        return data

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()


def _transport(identifier: str) -> type[_Reader]:
    if identifier.startswith(("http://", "https://")):
        return _HttpReader
    if identifier.startswith("s3://"):
        return _S3Reader
    if identifier.startswith("pipe:"):
        return _PipeReader
    raise ValueError(f"{identifier}: not a remote shard identifier")


def _label(identifier: str) -> str:
    return identifier.removeprefix("pipe:")


# ----------------------------------------------------------------------------------------------
# The retrying stream
# ----------------------------------------------------------------------------------------------


class RetryingStream(io.RawIOBase):
    """A read-only, forward-only byte stream of one remote file that survives failed requests.

    Each failure (see the module docstring) is followed by a backoff and a new request from the current
    offset; ``config.retries`` failures in a row without a byte of progress raise :class:`ShardReadError`.
    A stream that ends before the file's known size counts as a dropped connection.

    Args:
      identifier: ``http(s)://...``, ``s3://...`` or ``pipe:COMMAND``.
      size: expected size in bytes (from the listing or the index), or None.
    """

    def __init__(self, identifier: str, size: int | None = None, config: RemoteConfig | None = None) -> None:
        super().__init__()
        self.identifier = identifier
        self.config = config or RemoteConfig.from_env()
        self.size = size
        self.pos = 0
        self.retries_used = 0  # all retries of this stream, for reports and tests
        self._open_cls = _transport(identifier)
        self._reader: _Reader | None = None
        self._failed_in_row = 0

    def readable(self) -> bool:
        return True

    def _fail(self, e: _Transient) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            except Exception as close_error:  # noqa: BLE001 - the connection is being dropped anyway
                log.debug(f"{_label(self.identifier)}: closing a failed request: {close_error}")
            self._reader = None
        self._failed_in_row += 1
        if self._failed_in_row > self.config.retries:
            raise ShardReadError(f"{_label(self.identifier)}: {e} (gave up after {self.config.retries} "
                                 f"retries at byte {self.pos})")
        wait = self.config.delay(self._failed_in_row, e.retry_after)
        self.retries_used += 1
        log.info(f"{_label(self.identifier)}: {e}; retry {self._failed_in_row}/{self.config.retries} "
                 f"from byte {self.pos} in {wait:.1f} s")
        time.sleep(wait)

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        while True:
            try:
                if self._reader is None:
                    self._reader = self._open_cls(self.identifier, self.pos, self.size, self.config.timeout)
                    if self.size is None and self._reader.total is not None:
                        self.size = self._reader.total
                    elif self._reader.total is not None and self._reader.total != self.size:
                        raise ShardReadError(f"{_label(self.identifier)}: is {self._reader.total} bytes, "
                                             f"the listing said {self.size} (changed while reading?)")
                data = self._reader.read(len(view))
                if not data and self.size is not None and self.pos < self.size:
                    raise _Transient(f"connection closed after {self.pos} of {self.size} bytes")
            except _Transient as e:
                self._fail(e)
                continue
            n = len(data)
            view[:n] = data
            self.pos += n
            if n:
                self._failed_in_row = 0
            return n

    def close(self) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            finally:
                self._reader = None
        super().close()


def open_stream(identifier: str, mode: str = "rb", size: int | None = None,
                config: RemoteConfig | None = None) -> Any:
    """Open a remote file for sequential reading: ``"rb"`` bytes, ``"r"`` text (UTF-8). gzip data (found by
    its magic bytes, so pipes and URLs with queries work too) is decompressed in text mode."""
    if any(c in mode for c in "wax+"):
        raise ValueError(f"{_label(identifier)}: remote shards are read-only (mode {mode!r})")
    known_cfg, known_size = _info(identifier)
    raw = RetryingStream(identifier, size if size is not None else known_size, config or known_cfg)
    buffered = io.BufferedReader(raw, buffer_size=_READ_BUFFER)
    if "b" in mode:
        return buffered
    stream: Any = buffered
    if buffered.peek(2)[:2] == b"\x1f\x8b":
        stream = _OwningGzipFile(fileobj=buffered, mode="rb")
    return io.TextIOWrapper(stream, encoding="utf-8")


class _OwningGzipFile(gzip.GzipFile):
    """A GzipFile that also closes the stream it reads (a plain one leaves it open, and with it the
    connection, until garbage collection)."""

    def close(self) -> None:
        inner = self.fileobj
        try:
            super().close()
        finally:
            if inner is not None:
                inner.close()


def _read_all(identifier: str, config: RemoteConfig) -> bytes:
    with open_stream(identifier, "rb", config=config) as f:
        return f.read()


# ----------------------------------------------------------------------------------------------
# lhotse IO backend
# ----------------------------------------------------------------------------------------------


class RemoteIOBackend(IOBackend):
    """lhotse IO backend that opens ``http(s)://``, ``s3://`` and ``pipe:`` identifiers for reading with
    :func:`open_stream` (retries, resume)."""

    def open(self, identifier: Any, mode: str) -> Any:
        return open_stream(str(identifier), mode)

    def handles_special_case(self, identifier: Any) -> bool:
        return isinstance(identifier, str) and identifier.startswith(("http://", "https://", "s3://", "pipe:"))

    def is_applicable(self, identifier: Any) -> bool:
        return self.handles_special_case(identifier)


class _ReadRemoteFirst(CompositeIOBackend):
    """Reads of remote identifiers go to :class:`RemoteIOBackend`; everything else (local files, writes)
    to the backend that was current before."""

    def __init__(self, fallback: IOBackend) -> None:
        super().__init__([RemoteIOBackend(), fallback])
        self.remote, self.fallback = self.backends

    def open(self, identifier: Any, mode: str) -> Any:
        if "r" in mode and self.remote.handles_special_case(identifier):
            return self.remote.open(identifier, mode)
        return self.fallback.open(identifier, mode)


def install_io_backend() -> None:
    """Put :class:`RemoteIOBackend` in front of lhotse's current IO backend (once per process).

    Only reads are redirected; writes to URLs still go to lhotse's own backends.
    """
    current = get_current_io_backend()
    if not isinstance(current, _ReadRemoteFirst):
        set_current_io_backend(_ReadRemoteFirst(current))


# ----------------------------------------------------------------------------------------------
# Resolving a source to shard identifiers
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HfSpec:
    """``hf://datasets/OWNER/NAME/SUBDIR@REVISION`` taken apart."""

    repo_id: str
    subdir: str
    revision: str


def parse_hf_spec(spec: str) -> HfSpec:
    """Parse ``hf://datasets/OWNER/NAME[/SUBDIR][@REVISION]`` (or ``NAME@REVISION/SUBDIR``, as
    huggingface_hub's HfFileSystem writes it). The revision defaults to ``main``; ``%2F`` may stand for a
    slash in it."""
    rest = spec[len("hf://"):]
    if not rest.startswith("datasets/"):
        raise ValueError(f"{spec}: expected hf://datasets/OWNER/NAME/SUBDIR@REVISION (Shar shards live in "
                         f"dataset repos)")
    parts = rest[len("datasets/"):].split("/")
    if len(parts) < 2 or not parts[0] or not parts[1] or parts[0].startswith("@"):
        raise ValueError(f"{spec}: expected hf://datasets/OWNER/NAME/SUBDIR@REVISION")
    owner, name, sub = parts[0], parts[1], "/".join(parts[2:])
    revision = "main"
    if "@" in name:
        name, _, revision = name.partition("@")
    elif "@" in sub:
        sub, _, revision = sub.rpartition("@")
    if not name or not revision or "@" in sub or ".." in sub.split("/"):
        raise ValueError(f"{spec}: expected hf://datasets/OWNER/NAME/SUBDIR@REVISION")
    return HfSpec(f"{owner}/{name}", sub.strip("/"), unquote(revision))


def _with_retries(what: str, fn: Callable[[], Any], config: RemoteConfig) -> Any:
    """Run ``fn`` (a listing call) with the stream's retry policy for _Transient failures."""
    attempt = 0
    while True:
        try:
            return fn()
        except _Transient as e:
            attempt += 1
            if attempt > config.retries:
                raise ShardReadError(f"{what}: {e} (gave up after {config.retries} retries)") from None
            wait = config.delay(attempt, e.retry_after)
            log.info(f"{what}: {e}; retry {attempt}/{config.retries} in {wait:.1f} s")
            time.sleep(wait)


def _list_http(spec: str, config: RemoteConfig) -> dict[str, list[tuple[str, int | None]]]:
    base = spec.rstrip("/")
    url = f"{base}/{INDEX_NAME}"
    try:
        data = _read_all(url, config)
    except ShardReadError as e:
        if "HTTP 404" in str(e):
            raise FileNotFoundError(
                f"Shar source {spec}: {url} not found; plain HTTP has no listing, so write the index with "
                f"`python local/index_shards.py DIR` in the served folder") from None
        raise FileNotFoundError(f"Shar source {spec}: cannot read its index ({e})") from None
    shards = parse_index(data, url)
    return {fld: [(f"{base}/{quote(n)}", s) for n, s in rows] for fld, rows in shards.items()}


def _list_pipe(spec: str, config: RemoteConfig) -> dict[str, list[tuple[str, int | None]]]:
    if "{}" not in spec:
        raise ValueError(f"Shar source {spec!r}: a pipe: source needs {{}} where the file name goes, e.g. "
                         f"'pipe:curl -sf https://host/dir/{{}}'")
    command = spec.replace("{}", shlex.quote(INDEX_NAME))
    try:
        data = _read_all(command, config)
    except ShardReadError as e:
        raise FileNotFoundError(f"Shar source {spec}: cannot read its index {INDEX_NAME} ({e})") from None
    shards = parse_index(data, f"{INDEX_NAME} from {spec!r}")
    # Names passed SHARD_NAME_RE ([A-Za-z0-9_.-] only) in parse_index; quoting is a second guard.
    return {fld: [(spec.replace("{}", shlex.quote(n)), s) for n, s in rows] for fld, rows in shards.items()}


def _list_s3(spec: str, config: RemoteConfig) -> dict[str, list[tuple[str, int | None]]]:
    bucket, prefix = _split_s3(spec.rstrip("/"))
    prefix = prefix + "/" if prefix else ""

    def listing() -> dict[str, int | None]:
        client = _s3_client(config.timeout)
        found: dict[str, int | None] = {}
        token = None
        while True:
            kw = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/", **({"ContinuationToken": token}
                                                                              if token else {})}
            page = _s3_call(spec, lambda kw=kw: client.list_objects_v2(**kw))
            for obj in page.get("Contents", []):
                found[obj["Key"][len(prefix):]] = int(obj["Size"])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return found

    try:
        names = _with_retries(f"listing {spec}", listing, config)
    except ShardReadError as e:
        raise FileNotFoundError(f"Shar source {spec}: cannot list it ({e})") from None
    shards = group_shards(names, spec)
    base = f"s3://{bucket}/{prefix}"
    return {fld: [(base + n, s) for n, s in rows] for fld, rows in shards.items()}


def _client_errors() -> tuple[type[BaseException], ...]:
    """Transport errors of the HTTP client huggingface_hub uses (httpx2, httpx or requests, by release)."""
    import importlib

    found: list[type[BaseException]] = []
    for mod, attr in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            found.append(getattr(importlib.import_module(mod), attr))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _hub_call(what: str, fn: Callable[[], Any]) -> Any:
    """Run a huggingface_hub call, sorting its errors into retryable and final ones."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return fn()
    except GatedRepoError as e:
        raise ShardReadError(f"{what}: gated repo; accept its terms on the Hub and set HF_TOKEN") from e
    except RepositoryNotFoundError as e:
        raise ShardReadError(f"{what}: repository not found (or private: set HF_TOKEN or run `hf auth login`)"
                             ) from e
    except (RevisionNotFoundError, EntryNotFoundError) as e:
        raise ShardReadError(f"{what}: {type(e).__name__}") from e
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", 0) or 0
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status}") from e
        raise ShardReadError(f"{what}: {_one_line(e)}") from e
    except (OSError, *_client_errors()) as e:
        raise _Transient(_one_line(e)) from e


def _list_hf(spec: str, config: RemoteConfig) -> dict[str, list[tuple[str, int | None]]]:
    from huggingface_hub import HfApi, constants

    hf = parse_hf_spec(spec)
    offline = os.environ.get("HF_HUB_OFFLINE")
    if (offline.strip().upper() in {"1", "ON", "YES", "TRUE"}) if offline is not None else constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(f"Shar source {spec}: HF_HUB_OFFLINE is set, so the Hub cannot be listed; "
                                f"unset it to stream the shards")
    endpoint = _hf_endpoint()
    api = HfApi(endpoint=endpoint)
    where = f"{hf.repo_id}@{hf.revision}"
    try:
        # Pin every shard to one commit, so a push during a long run cannot mix two versions.
        info = _with_retries(where, lambda: _hub_call(where, lambda: api.dataset_info(
            hf.repo_id, revision=hf.revision)), config)
        commit = info.sha or hf.revision
        entries = _with_retries(where, lambda: _hub_call(where, lambda: list(api.list_repo_tree(
            hf.repo_id, path_in_repo=hf.subdir or None, repo_type="dataset", revision=commit))), config)
    except ShardReadError as e:
        raise FileNotFoundError(f"Shar source {spec}: {e}") from None
    names = {e.path.rsplit("/", 1)[-1]: getattr(e, "size", None) for e in entries if hasattr(e, "size")}
    shards = group_shards(names, spec)
    folder = (hf.subdir + "/") if hf.subdir else ""
    base = f"{endpoint}/datasets/{hf.repo_id}/resolve/{commit}/"
    return {fld: [(base + quote(folder + n), s) for n, s in rows] for fld, rows in shards.items()}


_LISTINGS: dict[tuple[int, str], tuple[dict[str, list[str]], RemoteConfig]] = {}


def remote_shar_fields(spec: str, config: RemoteConfig | None = None) -> dict[str, list[str]]:
    """Shard identifiers by field of a remote source: ``{"cuts": [...], "recording": [...]}``.

    The listing is made once per process and source (so every use within a run sees the same shards).
    Raises FileNotFoundError / ValueError with one line naming the source.
    """
    config = config or RemoteConfig.from_env()
    key = (os.getpid(), spec)
    if key in _LISTINGS:
        return {k: list(v) for k, v in _LISTINGS[key][0].items()}
    if spec.startswith(("http://", "https://")):
        shards = _list_http(spec, config)
    elif spec.startswith("s3://"):
        shards = _list_s3(spec, config)
    elif spec.startswith("hf://"):
        shards = _list_hf(spec, config)
    elif spec.startswith("pipe:"):
        shards = _list_pipe(spec, config)
    else:
        raise ValueError(f"{spec}: not a remote Shar source (expected one of {', '.join(REMOTE_PREFIXES)})")
    _register({ident: size for rows in shards.values() for ident, size in rows}, config)
    install_io_backend()  # any lhotse reader of these identifiers (not only ours) now streams them
    fields = {fld: [ident for ident, _ in rows] for fld, rows in shards.items()}
    _LISTINGS[key] = (fields, config)
    return {k: list(v) for k, v in fields.items()}


# ----------------------------------------------------------------------------------------------
# Reading: lhotse's Shar reader, one shard at a time, failures skipped and counted
# ----------------------------------------------------------------------------------------------


_FAILURES: dict[str, dict[str, str]] = {}


def shard_failures() -> dict[str, dict[str, str]]:
    """Why shards were skipped so far in this process: ``{source: {cuts shard: reason}}`` (a record for reports;
    the count and its limit are the reading's :class:`anyphone.data.shar.BadShards`)."""
    return {k: dict(v) for k, v in _FAILURES.items()}


class ResilientSharIterator(LazySharIterator):
    """lhotse's LazySharIterator (same shard order, shuffling, splitting and epochs), read one shard at a time
    so that a shard that fails is skipped with a one-line warning and counted in ``bad_shards`` (shared with
    the run's other sources, local ones included) instead of ending the stream."""

    def __init__(self, fields: dict[str, Sequence[str]], *, source: str, config: RemoteConfig,
                 sizes: Mapping[str, int | None], bad_shards: BadShards, **kwargs: Any) -> None:
        super().__init__(fields=fields, **kwargs)
        self.source = source
        self.config = config
        self.sizes = dict(sizes)
        self.bad_shards = bad_shards

    def __iter__(self) -> Iterator[Any]:
        install_io_backend()  # also in a process that unpickled this iterator
        _register(self.sizes, self.config)
        shards = self._maybe_split_for_dataloading(self._maybe_shuffle_shards(self.shards))
        yielded = failed = 0
        for shard in shards:
            one = LazySharIterator(fields={fld: [path] for fld, path in shard.items()})
            try:
                for cut in one:
                    cut.shar_epoch = self.epoch
                    yielded += 1
                    yield cut
            except Exception as e:  # noqa: BLE001 - any failure of one shard (network, corrupt data) is skipped
                failed += 1
                self._record(shard, e)
        self.epoch += 1
        if failed and not yielded:
            # Without this a repeated source whose shards all fail would loop forever without a cut.
            raise self.bad_shards.nothing_read(self.source, len(shards))

    def _record(self, shard: Mapping[str, str], e: BaseException) -> None:
        files, reason = shard_error(shard, e)
        if isinstance(e, ShardReadError):  # "LABEL: what happened (after retries)": the file it names
            text = str(e)
            named = [p for p in shard.values() if text.startswith(_label(p) + ": ")]
            if named:
                files, reason = _label(named[0]).rsplit("/", 1)[-1], text[len(_label(named[0])) + 2:]
            else:
                reason = text
        _FAILURES.setdefault(self.source, {})[shard["cuts"]] = f"{files}: {reason}"
        self.bad_shards.add(self.source, shard["cuts"], files, reason)


def open_remote_shar(
    spec: str,
    fields: dict[str, list[str]] | None = None,
    *,
    shuffle_shards: bool = False,
    seed: int = 42,
    split_for_dataloading: bool = False,
    config: RemoteConfig | None = None,
    bad_shards: BadShards | None = None,
) -> Any:
    """A lazy CutSet over a remote source (its shards, or the subset ``fields`` of them, e.g. one rank's).

    Shard order, shuffling (``seed`` + epoch) and dataloader splitting are lhotse's, so a remote copy of a
    folder yields the same cuts in the same order as the folder does. Shards that fail are counted in
    ``bad_shards`` (the run's count, shared with its other sources; default: a count of this source alone
    with the default --max-bad-shards).
    """
    config = config or RemoteConfig.from_env()
    if fields is None:
        fields = remote_shar_fields(spec, config)
    install_io_backend()
    sizes = {ident: _info(ident)[1] for paths in fields.values() for ident in paths}
    if bad_shards is None:
        bad_shards = BadShards()
    return CutSet(ResilientSharIterator(fields, source=spec, config=config, sizes=sizes, bad_shards=bad_shards,
                                        shuffle_shards=shuffle_shards, seed=seed, stateful_shuffle=True,
                                        split_for_dataloading=split_for_dataloading))
