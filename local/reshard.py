#!/usr/bin/env python3
"""Rewrite a Shar folder into K balanced shards, streaming and resumable.

    python local/reshard.py data/shar/embedded/train data/shar/embedded/train-64 --num-shards 64
    # killed half-way? the same command goes on from the first shard not yet complete

Training splits a folder's shards among its readers (the ranks: nodes x GPUs), so that every shard is read
once per epoch by the whole job. A folder with fewer shards than readers cannot be split (every rank then
reads every shard and keeps a share of the batches, which the training log warns about); this tool rewrites it
into ``--num-shards`` shards whose cut counts differ by at most one, keeping the cuts in their order.

How: the cut manifests are counted first (no audio is read), which fixes the range of cuts of every output
shard. Each output shard is then copied member by member (the manifest lines and the tar members, bytes
unchanged: no audio is decoded or re-encoded) into temporary files, which are renamed into place when the shard
is complete, its ``cuts`` file last. A run that was stopped leaves complete shards and temporaries; the next run
removes the temporaries, keeps the complete shards (``cuts.reshard.json`` records the plan, so it must be the same
input and K) and writes the rest. Only local folders are read; one run at a time per output folder (a lock).

Exit status: 0 done, 2 bad input or output (one line says why).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import sys
import tarfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from anyphone.data.shar import _SHARD_RE, shar_fields
from anyphone.fileio import TMP_PREFIX, DirLock, LockedError, atomic_write_text, remove_stale_temporaries

PLAN_NAME = "cuts.reshard.json"  # "cuts." without ".jsonl": lhotse's from_shar(in_dir=...) still reads the folder
PLAN_FORMAT = "anyphone-reshard-1"


class ReshardError(ValueError):
    """Input or output that cannot be resharded; the message is one line naming the file."""


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", type=Path, help="Shar folder to read (cuts.NNNNNN.jsonl.gz, recording.NNNNNN.tar, ...).")
    p.add_argument("output", type=Path, help="Folder for the K new shards (created; must not be the input).")
    p.add_argument("--num-shards", "-k", type=int, required=True,
                   help="K: shards to write (at least the number of readers: nodes x GPUs per node).")
    return p


def _count_lines(path: str) -> int:
    try:
        with gzip.open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    except (OSError, EOFError) as e:
        raise ReshardError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None


def _open_binary(path: str | Path, mode: str, gz: bool | None = None) -> Any:
    """A binary file, through gzip when its name ends with .gz (or ``gz`` says so)."""
    if gz if gz is not None else str(path).endswith(".gz"):
        return gzip.open(path, mode)
    return open(path, mode)  # the caller's ExitStack closes it


def plan_ranges(total: int, num_shards: int) -> list[tuple[int, int]]:
    """Cut ranges ``[start, end)`` of ``num_shards`` output shards over ``total`` cuts; sizes differ by <= 1."""
    return [(j * total // num_shards, (j + 1) * total // num_shards) for j in range(num_shards)]


def _shard_name(field: str, j: int, sample: str) -> str:
    """``field.NNNNNN.ext`` with the extension of an input file of that field (``sample``)."""
    ext = Path(sample).name.split(".", 2)[2]
    return f"{field}.{j:06d}.{ext}"


class _CutStream:
    """The input folder's cuts in order, each as (manifest line, {field: payload}); a tar field's payload is
    its two members (data, metadata) as (name, bytes) pairs, a jsonl field's its line. Opens one input shard
    at a time; :meth:`seek` jumps to a global cut index, skipping whole shards without opening them."""

    def __init__(self, fields: dict[str, list[str]], counts: list[int]) -> None:
        self.fields, self.counts = fields, counts
        self.position = 0  # global index of the next cut
        self._it: Iterator[tuple[bytes, dict[str, Any]]] | None = None
        self._shard = -1

    def _shard_cuts(self, i: int, skip: int) -> Iterator[tuple[bytes, dict[str, Any]]]:
        cuts_path = self.fields["cuts"][i]
        others = {f: paths[i] for f, paths in self.fields.items() if f != "cuts"}
        try:
            with ExitStack() as opened:
                lines = opened.enter_context(gzip.open(cuts_path, "rb"))
                readers: dict[str, Any] = {}
                for f, path in others.items():
                    if ".tar" in Path(path).name:
                        # a stream: members in order, no seeking
                        tar = opened.enter_context(tarfile.open(path, mode="r|*"))
                        readers[f] = ("tar", tar, iter(tar))
                    else:
                        g = opened.enter_context(_open_binary(path, "rb"))
                        readers[f] = ("lines", g, None)
                n = 0
                for line in lines:
                    if not line.strip():
                        continue
                    try:
                        cut_id = str(json.loads(line)["id"])
                    except (ValueError, KeyError, TypeError):
                        raise ReshardError(f"{cuts_path}: line {n + 1} is not a cut (no JSON object with an id)") from None
                    payload: dict[str, Any] = {}
                    for f, (kind, handle, members) in readers.items():
                        if kind == "lines":
                            payload[f] = handle.readline()
                            continue
                        pair = []
                        for _ in range(2):  # lhotse writes each cut's data, then its metadata (.nodata/.nometa if none)
                            m = next(members, None)
                            if m is None or not m.name.startswith(cut_id + "."):
                                got = "the end of the file" if m is None else f"member {m.name!r}"
                                raise ReshardError(f"{others[f]}: expected the members of cut {cut_id!r} of {cuts_path}, "
                                                   f"found {got} (the tar and the manifest disagree)")
                            data = handle.extractfile(m).read() if m.isfile() else b""
                            pair.append((m.name, data))
                        payload[f] = pair
                    if n >= skip:
                        yield line if line.endswith(b"\n") else line + b"\n", payload
                    n += 1
        except (OSError, EOFError, tarfile.TarError) as e:
            raise ReshardError(f"shard {cuts_path}: cannot be read ({type(e).__name__}: {e})") from None

    def seek(self, index: int) -> None:
        if self._it is not None and index == self.position:
            return
        start = 0
        for i, n in enumerate(self.counts):
            if start + n > index:
                self._shard, self._it, self.position = i, self._shard_cuts(i, index - start), index
                return
            start += n
        raise ReshardError(f"cut {index} is past the end of the input ({start} cuts)")

    def next(self) -> tuple[bytes, dict[str, Any]]:
        assert self._it is not None, "seek first"
        while True:
            item = next(self._it, None)
            if item is not None:
                self.position += 1
                return item
            if self._shard + 1 >= len(self.counts):
                raise ReshardError(f"the input ended after {self.position} cuts, its manifests count more")
            self._shard += 1
            self._it = self._shard_cuts(self._shard, 0)


def _write_shard(stream: _CutStream, out: Path, j: int, start: int, end: int,
                 fields: dict[str, list[str]]) -> None:
    """Copy cuts ``[start, end)`` into output shard ``j``: temporaries first, renamed when all are written."""
    names = {f: _shard_name(f, j, paths[0]) for f, paths in fields.items()}
    tmps = {f: out / f"{TMP_PREFIX}{name}" for f, name in names.items()}
    stream.seek(start)
    handles: dict[str, Any] = {}
    with ExitStack() as opened:
        for f, tmp in tmps.items():
            if f == "cuts" or ".tar" not in names[f]:
                handles[f] = opened.enter_context(_open_binary(tmp, "wb", gz=names[f].endswith(".gz")))
            else:
                handles[f] = opened.enter_context(tarfile.open(tmp, mode="w"))
        for _ in range(start, end):
            line, payload = stream.next()
            handles["cuts"].write(line)
            for f, value in payload.items():
                if isinstance(value, bytes):
                    handles[f].write(value)
                    continue
                for name, data in value:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    handles[f].addfile(info, io.BytesIO(data))
    for f, tmp in tmps.items():
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    # the cuts file last: it is what marks the shard complete
    for f in [*(f for f in tmps if f != "cuts"), "cuts"]:
        os.replace(tmps[f], out / names[f])


def _complete(out: Path, j: int, fields: dict[str, list[str]]) -> bool:
    return all((out / _shard_name(f, j, paths[0])).exists() for f, paths in fields.items())


def reshard(input_dir: Path, output_dir: Path, num_shards: int, log: Any = print) -> dict[str, Any]:
    """Rewrite ``input_dir`` into ``num_shards`` balanced shards in ``output_dir``; returns the plan (with
    ``written``: the shards this call wrote). Raises :class:`ReshardError` (one line) for bad input/output."""
    if num_shards < 1:
        raise ReshardError(f"--num-shards {num_shards}: expected at least 1")
    if str(input_dir).startswith(("http://", "https://", "s3://", "hf://", "pipe:")):
        raise ReshardError(f"{input_dir}: only local Shar folders are resharded")
    try:
        fields = shar_fields(input_dir)
    except (FileNotFoundError, ValueError) as e:
        raise ReshardError(str(e)) from None
    if output_dir.exists() and input_dir.exists() and output_dir.resolve() == input_dir.resolve():
        raise ReshardError(f"{output_dir}: the output folder is the input folder; write the shards elsewhere")
    counts = [_count_lines(p) for p in fields["cuts"]]
    total = sum(counts)
    if total < num_shards:
        raise ReshardError(f"{input_dir}: {total} cuts cannot fill {num_shards} shards; use --num-shards <= {total}")
    plan = {"format": PLAN_FORMAT, "input": str(input_dir.resolve()), "num_shards": num_shards,
            "fields": sorted(fields), "cuts": total}
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = DirLock(output_dir, name=".reshard.lock", what="this output folder").acquire()
    except LockedError as e:
        raise ReshardError(f"{output_dir}: {e}") from None
    try:
        plan_path = output_dir / PLAN_NAME
        if plan_path.exists():
            try:
                old = json.loads(plan_path.read_text())
            except (OSError, ValueError) as e:
                raise ReshardError(f"{plan_path}: unreadable ({e}); remove the folder to start again") from None
            if old != plan:
                raise ReshardError(f"{plan_path}: this folder holds another resharding ({old.get('input')}, "
                                   f"K={old.get('num_shards')}); use another output folder")
        elif any(_SHARD_RE.match(p.name) for p in output_dir.iterdir()):
            raise ReshardError(f"{output_dir}: already holds shards that this tool did not write; use an empty folder")
        else:
            atomic_write_text(plan_path, json.dumps(plan, indent=1) + "\n")
        removed = remove_stale_temporaries(output_dir)
        if removed:
            log(f"removed {len(removed)} temporary file(s) of an interrupted run")
        stream = _CutStream(fields, counts)
        written = []
        for j, (start, end) in enumerate(plan_ranges(total, num_shards)):
            if _complete(output_dir, j, fields):
                continue
            _write_shard(stream, output_dir, j, start, end, fields)
            written.append(j)
            log(f"shard {j + 1}/{num_shards}: {end - start} cuts")
    finally:
        lock.release()
    return {**plan, "written": written}


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        done = reshard(args.input, args.output, args.num_shards)
    except ReshardError as e:
        print(f"reshard: {e}", file=sys.stderr)
        return 2
    kept = done["num_shards"] - len(done["written"])
    print(f"{args.output}: {done['num_shards']} shards, {done['cuts']} cuts"
          + (f" ({kept} complete shard(s) kept from an earlier run)" if kept else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
