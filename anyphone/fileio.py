"""Files that are never left half-written, outputs that never destroy inputs, and a lock for an exp dir.

No torch import: every layer (data preparation, training, decoding, inference, export) uses these.

- :func:`atomic_write` writes into a temporary file in the destination's folder and renames it into place when
  the block ends without an exception, so a reader sees the old file or the whole new one, never half. Two
  concurrent writers of one path each replace it whole; the last rename wins.
- :func:`check_output_path` refuses an output that is also an input, or a folder, before anything is opened.
- :class:`DirLock` is an exclusive lock file created with ``O_CREAT | O_EXCL``, which is atomic on local file
  systems and on NFS (v3 and later) alike, so it also works when an exp dir lives on storage shared by several
  nodes (``fcntl`` locks are not reliable there). The file names the holder's host and pid; a lock left by a
  dead process on this host is taken over with a note; one held from another host is refused (its process
  cannot be checked from here), with the command to remove it by hand.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

_LOG = logging.getLogger("anyphone.fileio")

TMP_PREFIX = ".tmp-"


class OutputError(ValueError):
    """An output path that cannot be written without harm (it is an input, or a folder)."""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def check_output_path(output: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """The output path, once it is known to be neither a folder nor one of ``inputs`` (files or folders:
    an output inside an input folder is refused too, since a folder run would read it back).

    Raises:
        OutputError: one line naming the output and the problem.
    """
    out = Path(output)
    if out.is_dir():
        raise OutputError(f"{out}: is a folder; -o takes a file name, e.g. {out / 'phones.tsv'}")
    if not out.parent.exists():
        raise OutputError(f"{out}: its folder {out.parent} does not exist")
    for i in inputs:
        p = Path(i)
        if out.exists() and p.exists() and _same_file(out, p):
            raise OutputError(f"{out}: is also an input; writing it would destroy that input")
        if os.path.abspath(out) == os.path.abspath(p):
            raise OutputError(f"{out}: is also an input; writing it would destroy that input")
        if p.is_dir() and os.path.abspath(out).startswith(os.path.abspath(p) + os.sep):
            raise OutputError(f"{out}: lies inside the input folder {p}; write it elsewhere")
    return out


def _publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give a finished temporary file the permissions a plain open() would (mkstemp creates 0600) and rename
    it onto ``path``."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8",
                 newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on success flush, fsync and rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was. ``mode`` is ``"w"`` or
    ``"wb"``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        if "b" in mode:
            f = os.fdopen(fd, mode)
        else:
            f = os.fdopen(fd, mode, encoding=encoding, newline=newline)
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def remove_stale_temporaries(folder: str | os.PathLike, pattern: str = TMP_PREFIX + "*") -> list[Path]:
    """Delete temporary files that killed writers left in ``folder``; returns what was removed."""
    removed = []
    for p in Path(folder).glob(pattern):
        if p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LockedError(RuntimeError):
    """Another live process holds the lock."""


class DirLock:
    """An exclusive lock on a folder: the file ``<folder>/<name>`` holding ``{"host", "pid", "time"}``.

    Use as a context manager, or call :meth:`acquire` / :meth:`release`. The lock is released on exit and also
    if the process ends normally; a process killed with SIGKILL leaves the file, which the next run on the same
    host takes over since its pid is gone.
    """

    def __init__(self, folder: str | os.PathLike, name: str = ".lock", what: str = "this folder") -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self.what = what
        self.held = False

    def _read_holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def acquire(self) -> DirLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_holder()
                if holder is None:
                    # a holder that has not written its name yet, or an unreadable file: give it a moment
                    time.sleep(0.2)
                    holder = self._read_holder()
                    if holder is None:
                        raise LockedError(
                            f"{self.path}: {self.what} is locked by an unknown holder (unreadable lock file); "
                            f"if no run uses it, remove it: rm {self.path}") from None
                if holder.get("host") == me["host"] and holder.get("pid") == me["pid"]:
                    self.held = True
                    return self
                if holder.get("host") == me["host"] and not _pid_alive(int(holder.get("pid", -1))):
                    _LOG.warning(f"{self.path}: taking over a lock left by pid {holder.get('pid')} "
                                 f"on {holder.get('host')}, which is no longer running")
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path)
                    continue
                raise LockedError(
                    f"{self.folder}: {self.what} is in use by pid {holder.get('pid')} on host "
                    f"{holder.get('host')} (lock {self.path}); if that run is gone, remove the lock: "
                    f"rm {self.path}") from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return self
        raise LockedError(f"{self.path}: could not take the lock on {self.what} (it keeps changing hands)")

    def release(self) -> None:
        if not self.held:
            return
        holder = self._read_holder()
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.held = False

    def __enter__(self) -> DirLock:  # noqa: PYI034 - Self needs Python 3.11
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_disk_full(e: BaseException) -> bool:
    """True for 'no space left' and 'quota exceeded', however deep the OSError was wrapped."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "file write failed" in str(e):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """A temporary path beside ``path``, for writers that take a file name rather than a file object (ONNX
    exporters, quantisers); when the block ends without an exception it is renamed onto ``path``, otherwise
    removed. The name ends with ``suffix`` (default: ``path``'s own), for tools that look at the extension.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", suffix=path.suffix if suffix is None else suffix,
                               dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:  # the writer may not have synced: the rename must not land before the data
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
