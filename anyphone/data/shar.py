"""Reading and writing lhotse Shar directories, and turning user corpora into Shar.

A Shar directory holds numbered shards: ``cuts.000000.jsonl.gz`` plus one tar per data field
(``recording.000000.tar`` with FLAC audio here). Training reads several such directories, each
with a sampling weight (:func:`open_train_shars`).

User corpora come either as a Kaldi/Allosaurus-style directory (:func:`kaldi_dir_to_shar`) or as
lhotse recordings/supervisions manifests (:func:`lhotse_manifests_to_shar`). Both resample to
16 kHz mono, normalise the transcript with ``anyphone.text.ipa.normalize_ipa`` and skip bad
items with a one-line warning each; the returned :class:`CorpusReport` counts what happened.
The output folder is written beside itself and swapped in whole.

Data files never run commands: a cut whose audio lhotse would load by running one (a ``command``
source, a ``pipe:`` URL, a ``.sph`` file decoded with sph2pipe) is refused unless the user says the
data is trusted, and pickled arrays always are. While reading, a shard that cannot be read is
named, skipped and counted, local and remote shards alike, against one limit (``--max-bad-shards``,
:class:`BadShards`).

Label kinds (noisy-student training). ``cut.custom["label_kind"]`` says what the transcript is:
``"labelled"`` (a human or G2P transcript), ``"pseudo"`` (a teacher's output; the cut also carries
``custom["pseudo_confidence"]`` and ``custom["teacher"]``, see ``anyphone.training.pseudo_label``) or
``"unlabelled"`` (no transcript: only the consistency term may train on it). A cut without the field is
labelled when it has a transcript and unlabelled when it has none (:func:`label_kind`), so an unlabelled
corpus is never taken for a corpus of silence.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.shar import SharWriter
from lhotse.shar.readers.lazy import LazySharIterator

from anyphone.data.config import DataConfig
from anyphone.data.fbank import SAMPLE_RATE
from anyphone.fileio import TMP_PREFIX

log = logging.getLogger(__name__)

_SHARD_RE = re.compile(r"^(?P<field>[A-Za-z0-9_\-]+)\.(?P<idx>\d{6})\.(?P<ext>.+)$")


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def parse_weighted_dir(spec: str) -> tuple[str, float]:
    """``"DIR"`` -> (DIR, 1.0); ``"DIR:WEIGHT"`` -> (DIR, WEIGHT). A suffix that is not a
    positive number is treated as part of the path (paths may contain ':')."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
        except ValueError:
            return spec, 1.0
        if not (weight > 0 and math.isfinite(weight)):
            raise ValueError(f"Shar spec {spec!r}: weight {tail!r} must be a positive number")
        return head, weight
    return spec, 1.0


def parse_named_dir(spec: str) -> tuple[str, str]:
    """``"NAME=DIR"`` -> (NAME, DIR); a bare ``"DIR"`` is named after its last path component."""
    if "=" in spec:
        name, _, path = spec.partition("=")
        if not name or not path:
            raise ValueError(f"test set spec {spec!r}: expected NAME=DIR")
        return name, path
    return Path(spec).name, spec


def _is_remote(spec: str | Path) -> bool:
    """A source for anyphone.data.remote rather than a local folder."""
    return isinstance(spec, str) and spec.startswith(("http://", "https://", "s3://", "hf://", "pipe:"))


def shar_fields(in_dir: str | Path) -> dict[str, list[str]]:
    """Shard files of a Shar directory by field: ``{"cuts": [...], "recording": [...], ...}``.

    Raises FileNotFoundError for a missing directory or one without ``cuts.NNNNNN.jsonl.gz`` and
    ValueError when fields have different shard counts. Remote sources (``http(s)://``, ``s3://``,
    ``hf://``, ``pipe:``) are listed by :mod:`anyphone.data.remote`.
    """
    if _is_remote(in_dir):
        from anyphone.data.remote import remote_shar_fields

        return remote_shar_fields(str(in_dir))
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"Shar directory {in_dir} does not exist")
    by_field: dict[str, dict[int, str]] = {}
    for p in in_dir.iterdir():
        m = _SHARD_RE.match(p.name)
        if m is None:
            continue
        by_field.setdefault(m["field"], {})[int(m["idx"])] = str(p)
    if "cuts" not in by_field:
        if not any(in_dir.iterdir()):
            raise FileNotFoundError(f"Shar directory {in_dir} is empty: expected cuts.NNNNNN.jsonl.gz and "
                                    "recording.NNNNNN.tar shards (local/prepare_user_corpus.py writes them)")
        raise FileNotFoundError(f"Shar directory {in_dir} has no cuts.NNNNNN.jsonl.gz shards")
    n = len(by_field["cuts"])
    out = {}
    for name, shards in by_field.items():
        if len(shards) != n:
            raise ValueError(
                f"Shar directory {in_dir}: field {name!r} has {len(shards)} shards, expected {n} (as cuts)"
            )
        out[name] = [shards[i] for i in sorted(shards)]
    return out


def open_shar(
    in_dir: str | Path,
    *,
    shuffle_shards: bool = False,
    seed: int = 42,
    repeat: bool = False,
    rank: int = 0,
    world_size: int = 1,
    split_for_dataloading: bool = False,
    trust_commands: bool = False,
    max_bad_shards: int | None = None,
    guard: ShardGuard | None = None,
) -> CutSet:
    """Lazily open one Shar directory as a CutSet (audio is attached in memory while iterating).

    With ``world_size > 1`` each rank reads its own shards (only when there are at least ``world_size``
    shards; otherwise every rank reads all of them and the sampler must split batches by rank, see
    :func:`shards_split_by_rank`). For a local folder read in epochs (not ``repeat``) the split is made after
    each epoch's shuffle (all ranks shuffle the full list alike, from ``seed`` + epoch, and rank r takes
    positions ``r::world_size``), so every shard is read exactly once per epoch across the ranks and a shard
    moves between ranks from one epoch to the next. A repeated (endless) stream, where the ranks' passes
    drift apart, and a remote source keep shards ``rank::world_size`` of the listing for the whole run.
    ``split_for_dataloading`` is lhotse's own per-node-and-worker split (only for samplers that run inside
    dataloader workers).

    Every cut passes ``guard`` (default: a :class:`ShardGuard` from ``trust_commands`` and
    ``max_bad_shards``): a cut whose audio would be loaded by running a command raises
    :class:`UnsafeDataError` unless ``trust_commands``; a shard that cannot be read (local, or remote after
    its retries) is named, skipped and counted by the guard's :class:`BadShards`, and more than
    ``max_bad_shards`` of them raise :class:`TooManyBadShardsError`.
    """
    if guard is None:
        guard = ShardGuard(trust_commands=trust_commands, max_bad_shards=max_bad_shards)
    fields = shar_fields(in_dir)
    split = shards_split_by_rank(fields, world_size)
    deal_per_epoch = split and not repeat and not _is_remote(in_dir)
    if split and not deal_per_epoch:
        fields = {k: v[rank::world_size] for k, v in fields.items()}
    if _is_remote(in_dir):  # streamed; a shard that fails is skipped and counted
        from anyphone.data.remote import open_remote_shar

        cuts = open_remote_shar(str(in_dir), fields, shuffle_shards=shuffle_shards, seed=seed,
                                split_for_dataloading=split_for_dataloading, bad_shards=guard.bad_shards)
    else:
        cuts = CutSet(_GuardedSharIterator(
            guard=guard,
            name=str(in_dir),
            rank=rank if deal_per_epoch else 0,
            world_size=world_size if deal_per_epoch else 1,
            fields=fields,
            split_for_dataloading=split_for_dataloading,
            shuffle_shards=shuffle_shards,
            stateful_shuffle=True,
            seed=seed,
        ))
    cuts = cuts.filter(guard)  # refuses command sources; drops cuts with out-of-inventory labels
    if repeat:
        cuts = cuts.repeat(preserve_id=True)
    return cuts


def shards_split_by_rank(fields_or_dir: dict[str, list[str]] | str | Path, world_size: int) -> bool:
    """True when :func:`open_shar` splits this directory's shards across ``world_size`` ranks."""
    fields = fields_or_dir if isinstance(fields_or_dir, dict) else shar_fields(fields_or_dir)
    return world_size > 1 and len(fields["cuts"]) >= world_size


def open_train_shars(
    specs: Sequence[str | tuple[str, float]],
    *,
    seed: int = 42,
    shuffle_shards: bool = True,
    repeat: bool = True,
    rank: int = 0,
    world_size: int = 1,
    trust_commands: bool = False,
    max_bad_shards: int | None = None,
    tokenizer: object | None = None,
    keep_unk_cuts: bool = False,
    remove_diacritics: bool = False,
) -> CutSet:
    """Open several Shar directories and multiplex them by weight.

    Args:
      specs: ``"DIR[:WEIGHT]"`` strings or (dir, weight) pairs.
      repeat: repeat each source forever (so the weights hold for the whole run; the stream is
        infinite and training must stop by step count). Without it each source is read once per
        epoch and the mux goes on with the others when one runs out.
      trust_commands, max_bad_shards: see :class:`ShardGuard` (one guard for all directories, so
        bad shards are counted over the whole training set).
      tokenizer: with one, cuts whose transcript has labels outside its inventory are counted per
        shard at start-up and dropped while reading, unless ``keep_unk_cuts``.

    Every cuts manifest is read once up front (:meth:`ShardGuard.scan`, no audio): command sources
    are refused before training starts and a directory without any cut is an error.
    """
    pairs = [parse_weighted_dir(s) if isinstance(s, str) else (str(s[0]), float(s[1])) for s in specs]
    if not pairs:
        raise ValueError("open_train_shars: no Shar directories given")
    guard = ShardGuard(trust_commands=trust_commands, max_bad_shards=max_bad_shards, tokenizer=tokenizer,
                       keep_unk_cuts=keep_unk_cuts, remove_diacritics=remove_diacritics)
    guard.scan([(d, shar_fields(d)) for d, _ in pairs])
    sets = [
        open_shar(
            d,
            shuffle_shards=shuffle_shards,
            seed=seed + i,
            repeat=repeat,
            rank=rank,
            world_size=world_size,
            guard=guard,
        )
        for i, (d, _) in enumerate(pairs)
    ]
    if len(sets) == 1:
        return sets[0]
    return CutSet.mux(*sets, weights=[w for _, w in pairs], seed=seed)


# ----------------------------------------------------------------------------------------------
# Trust and damage: data files never run commands; a shard that cannot be read is skipped and counted
# ----------------------------------------------------------------------------------------------

DEFAULT_MAX_BAD_SHARDS = DataConfig.max_bad_shards  # --max-bad-shards
TRUST_HINT = "pass --trust-data-commands 1 if you trust this data"


class DataError(ValueError):
    """Data that cannot be used as given; the message is one line naming the file (and cut) and the problem."""


class UnsafeDataError(DataError):
    """A data file asks for a command to be run, or for code to be unpickled, to load a cut."""


class TooManyBadShardsError(DataError):
    """More shards could not be read than ``--max-bad-shards`` allows, local and remote ones together, or not a
    single cut could be read from a source (see :class:`BadShards`)."""


def _short(value: object, limit: int = 80) -> str:
    s = str(value)
    return repr(s if len(s) <= limit else s[: limit - 3] + "...")


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


def source_command(kind: str, source: object) -> str | None:
    """Why loading an audio source of this lhotse type would run a command, or None when it would not.

    lhotse runs ``command`` sources through a shell, opens ``url`` sources with its I/O backends (which
    start a process for a ``pipe:`` prefix), and decodes ``.sph`` files by running sph2pipe through a
    shell with the file name pasted into the command line (``.opus`` likewise with ffmpeg when
    ``LHOTSE_LEGACY_OPUS_LOADING=1``), so a crafted file name is a command too.
    """
    if kind == "command":
        return f"its audio source is a shell command {_short(source)}"
    text = str(source) if isinstance(source, (str, Path)) else ""
    if kind == "url" and text.startswith("pipe:"):
        return f"its audio source is a pipe command {_short(text)}"
    if kind == "file":
        low = text.lower()
        if low.endswith(".sph"):
            return f"its audio file {_short(text)} is .sph, which lhotse decodes by running sph2pipe in a shell"
        if low.endswith(".opus") and os.environ.get("LHOTSE_LEGACY_OPUS_LOADING", "0") == "1":
            return (f"its audio file {_short(text)} is .opus, which lhotse decodes by running ffmpeg in a "
                    "shell (LHOTSE_LEGACY_OPUS_LOADING=1)")
    return None


# lhotse storage types whose reader unpickles the stored bytes (pickle can run any code)
_PICKLE_STORAGE = frozenset({"memory_raw"})
_PICKLE_WHY = "it carries a pickled array"  # no flag lets these in


def _storage_problem(storage_type: object) -> str | None:
    if storage_type in _PICKLE_STORAGE:
        return f"{_PICKLE_WHY} (storage_type {storage_type!r}), which could run code when loaded"
    return None


def _cut_parts(cut: Any) -> Iterator[Any]:
    """The cut itself and, for a MixedCut, the cuts of its tracks (recursively)."""
    yield cut
    for track in getattr(cut, "tracks", None) or ():
        yield from _cut_parts(track.cut)


def cut_refusal(cut: Any, trust_commands: bool = False) -> str | None:
    """Why ``cut`` must not be loaded, or None: an audio source that would run a command (unless
    ``trust_commands``) or an array stored as a pickle (always). Looks at the recording, the
    features, custom recordings/arrays, and the tracks of a MixedCut."""
    from lhotse import Features
    from lhotse.array import Array, TemporalArray

    for part in _cut_parts(cut):
        recordings = [getattr(part, "recording", None)]
        arrays = [getattr(part, "features", None)]
        for value in (getattr(part, "custom", None) or {}).values():
            (recordings if isinstance(value, Recording) else arrays).append(value)
        if not trust_commands:
            for rec in recordings:
                for src in getattr(rec, "sources", None) or ():
                    why = source_command(src.type, src.source)
                    if why:
                        return why
        for arr in arrays:
            if isinstance(arr, TemporalArray):
                arr = arr.array
            if isinstance(arr, (Array, Features)):
                why = _storage_problem(arr.storage_type)
                if why:
                    return why
    return None


def _dict_refusal(item: Any, trust_commands: bool) -> str | None:
    """:func:`cut_refusal` for a cut still in its JSON form (any nesting: tracks, custom fields)."""
    stack = [item]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            if "source" in x and "type" in x and "channels" in x and not trust_commands:  # an AudioSource
                why = source_command(str(x["type"]), x["source"])
                if why:
                    return why
            why = _storage_problem(x.get("storage_type"))
            if why:
                return why
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return None


def _dict_text(item: Any) -> str:
    """The transcript of a cut in its JSON form (its supervisions, or its tracks' for a MixedCut)."""
    if not isinstance(item, dict):
        return ""
    sups = item.get("supervisions")
    if isinstance(sups, list):
        return "".join(str(s.get("text") or "") for s in sups if isinstance(s, dict))
    return "".join(_dict_text(t.get("cut")) for t in item.get("tracks") or () if isinstance(t, dict))


def _cut_text(cut: Any) -> str:
    return "".join(s.text for s in cut.supervisions if s.text)


LABEL_KINDS = ("labelled", "pseudo", "unlabelled")


def _kind_from(custom: Any, text: str, where: str) -> str:
    kind = custom.get("label_kind") if isinstance(custom, dict) else None
    if kind is None:
        return "labelled" if text else "unlabelled"
    if kind not in LABEL_KINDS:
        raise DataError(f"{where}: custom label_kind {kind!r}, expected one of {', '.join(LABEL_KINDS)}")
    return str(kind)


def label_kind(cut: Any) -> str:
    """``"labelled"``, ``"pseudo"`` or ``"unlabelled"``: ``cut.custom["label_kind"]`` when set, else labelled
    for a cut with a transcript and unlabelled for one without (see the module docstring). A value outside
    :data:`LABEL_KINDS` raises :class:`DataError` naming the cut."""
    where = f"{getattr(cut, 'shard_origin', None) or 'Shar data'}: cut {cut.id!r}"
    return _kind_from(getattr(cut, "custom", None), _cut_text(cut), where)


def _read_text(path: str) -> Iterator[str]:
    """Lines of a (gzipped) JSONL file."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        yield from f


def _count_cuts(path: str) -> int | None:
    """Non-blank lines of a local cuts manifest; None for a remote or unreadable one."""
    if not Path(path).is_file():
        return None
    try:
        return sum(1 for line in _read_text(path) if line.strip())
    except (OSError, EOFError, ValueError, zlib.error):
        return None


class BadShards:
    """The one count of shards that could not be read, local and remote alike, and its one limit
    (``--max-bad-shards``). One object serves all the sources of a run (``open_train_shars`` gives every
    directory the same one), so a corrupt local tar and a remote shard that keeps failing add up.

    A shard is counted once, by its cuts manifest, however often it fails (a repeated stream meets it again).
    Each is named in one warning line::

        bad shard, skipped: SOURCE: FILES: REASON (N bad shard(s) so far, --max-bad-shards LIMIT)

    and more than ``limit`` of them raise :class:`TooManyBadShardsError`, one line naming every bad shard by
    source::

        N shards cannot be read, more than --max-bad-shards LIMIT: SOURCE: SHARD, SHARD; SOURCE: SHARD
        (the last: SOURCE: FILES: REASON)
    """

    def __init__(self, limit: int | None = None) -> None:
        if limit is None:
            limit = DEFAULT_MAX_BAD_SHARDS
        if int(limit) < 0:
            raise ValueError(f"--max-bad-shards {limit}: expected 0 or more")
        self.limit = int(limit)
        self.failed: dict[str, tuple[str, str, str]] = {}  # cuts manifest -> (source, files, reason)

    def __len__(self) -> int:
        return len(self.failed)

    def add(self, source: str, shard: str, files: str, reason: str) -> None:
        """Count the shard whose cuts manifest is ``shard`` (of ``source``) as bad, once; ``files``: the
        file(s) that failed, ``reason``: one line. Warns, and raises when there are more than ``limit``."""
        if shard not in self.failed:
            self.failed[shard] = (str(source), files, reason)
            log.warning(f"bad shard, skipped: {source}: {files}: {reason} ({len(self.failed)} bad shard(s) so far, "
                        f"--max-bad-shards {self.limit})")
        if len(self.failed) > self.limit:
            raise TooManyBadShardsError(self._too_many(shard))

    def _too_many(self, last: str) -> str:
        by_source: dict[str, list[str]] = {}
        for shard, (source, _, _) in self.failed.items():
            by_source.setdefault(source, []).append(_shard_name(shard))
        named = "; ".join(f"{source}: {', '.join(names)}" for source, names in by_source.items())
        source, files, reason = self.failed[last]
        return (f"{len(self.failed)} shards cannot be read, more than --max-bad-shards {self.limit}: {named} "
                f"(the last: {source}: {files}: {reason})")

    def nothing_read(self, source: str, num_shards: int) -> TooManyBadShardsError:
        """The error for a pass over ``source`` in which no shard gave a cut (a repeated stream would otherwise
        loop forever); names the last of its shards that failed."""
        mine = [(files, reason) for src, files, reason in self.failed.values() if src == str(source)]
        last = f"; the last: {mine[-1][0]}: {mine[-1][1]}" if mine else ""
        return TooManyBadShardsError(f"{source}: no cut could be read from its {num_shards} shard(s) "
                                     f"({len(mine)} bad){last}")


def _shard_name(path: str) -> str:
    """The file name of a shard path or URL (``cuts.000003.jsonl.gz``), for messages that name the source."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]


@dataclass
class ShardScan:
    """What :meth:`ShardGuard.scan` found in one cuts manifest."""

    path: str
    cuts: int = 0
    unk_cuts: int = 0
    unk_symbols: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)  # label kind -> cuts (see label_kind)


class ShardGuard:
    """What reading Shar data is allowed to do, and what went wrong; one guard serves all the
    directories of a run, so its counts are the run's.

    - A cut whose audio would be loaded by running a command (see :func:`source_command`) raises
      :class:`UnsafeDataError` naming the cut, unless ``trust_commands``; a pickled array always does.
    - A shard that cannot be read (corrupt or truncated tar, broken gzip or JSON; a remote one after its
      retries) is named in a warning, the rest of it is skipped and it is counted once in ``bad_shards``
      (:class:`BadShards`, local and remote shards together); more than ``max_bad_shards`` bad shards raise
      :class:`TooManyBadShardsError`.
    - With a ``tokenizer``, cuts whose (normalised) transcript has labels outside its inventory are
      dropped and counted per shard, unless ``keep_unk_cuts`` (then they train with ``<unk>`` targets).

    It is the CutSet filter of :func:`open_shar` (``__call__``), so it must stay picklable.
    """

    def __init__(
        self,
        *,
        trust_commands: bool = False,
        max_bad_shards: int | None = None,
        tokenizer: Any = None,
        keep_unk_cuts: bool = False,
        remove_diacritics: bool = False,
    ) -> None:
        self.bad_shards = BadShards(max_bad_shards)
        self.max_bad_shards = self.bad_shards.limit
        self.trust_commands = bool(trust_commands)
        self.tokenizer = tokenizer
        self.keep_unk_cuts = bool(keep_unk_cuts)
        self.remove_diacritics = bool(remove_diacritics)
        self.unk_dropped: Counter = Counter()  # cuts manifest -> cuts dropped while reading

    # -- cuts ----------------------------------------------------------------------------------

    def _refuse(self, where: str, cut_id: object, why: str) -> UnsafeDataError:
        hint = "" if why.startswith(_PICKLE_WHY) else f" ({TRUST_HINT})"
        return UnsafeDataError(f"{where}: cut {str(cut_id)!r}: {why}; refused{hint}")

    def unknown_labels(self, text: str) -> set[str]:
        """Labels of a raw transcript that the tokenizer would turn into ``<unk>`` (empty without one)."""
        if self.tokenizer is None or not text:
            return set()
        if self.remove_diacritics:
            from anyphone.text.ipa import normalize_ipa

            text = normalize_ipa(text, remove_diacritics=True)
        return self.tokenizer.unknown_symbols(text)

    def __call__(self, cut: Any) -> bool:
        """The CutSet filter: raises for a cut that must not be loaded; False drops a cut with unknown labels."""
        where = str(getattr(cut, "shard_origin", None) or "Shar data")
        why = cut_refusal(cut, self.trust_commands)
        if why:
            raise self._refuse(where, cut.id, why)
        if self.tokenizer is not None and not self.keep_unk_cuts and self.unknown_labels(_cut_text(cut)):
            self.unk_dropped[where] += 1
            return False
        return True

    # -- shards --------------------------------------------------------------------------------

    def shard_failed(self, source: str, shard: str, files: str, reason: str) -> None:
        """:meth:`BadShards.add` of this guard's count."""
        self.bad_shards.add(source, shard, files, reason)

    def scan(self, sources: Sequence[tuple[str, dict[str, list[str]]]]) -> list[ShardScan]:
        """Read every local cuts manifest of ``sources`` ((name, fields) pairs) once, without audio.

        Refuses command sources and pickled arrays before anything is loaded, counts and reports the cuts
        with out-of-inventory labels per shard (one warning line per such shard, and a summary), and
        raises :class:`DataError` for a directory whose manifests hold no usable cut. An unreadable
        manifest counts as a bad shard. Remote manifests are left to the per-cut checks while reading.
        """
        scans: list[ShardScan] = []
        for name, fields in sources:
            total = usable = 0
            local = True
            for path in fields["cuts"]:
                path = str(path)
                if not Path(path).is_file():
                    local = False
                    continue
                try:
                    scan = self._scan_manifest(path)
                except DataError:
                    raise
                except (OSError, EOFError, ValueError, zlib.error) as e:
                    self.shard_failed(name, path, _shard_name(path), _first_line(e))
                    continue
                scans.append(scan)
                total += scan.cuts
                usable += scan.cuts - (0 if self.keep_unk_cuts else scan.unk_cuts)
                if scan.unk_cuts:
                    top = ", ".join(f"{s!r} x{c}" for s, c in scan.unk_symbols.most_common(5))
                    fate = ("kept, those labels train as <unk> (--keep-unk-cuts 1)" if self.keep_unk_cuts
                            else "dropped (--keep-unk-cuts 1 keeps them)")
                    log.warning(f"{path}: {scan.unk_cuts} of {scan.cuts} cuts have labels outside the "
                                f"inventory ({top}); {fate}")
            if local and total == 0:
                raise DataError(f"Shar directory {name}: its {len(fields['cuts'])} cuts manifest(s) hold no cut")
            if local and usable == 0:
                raise DataError(f"Shar directory {name}: every one of its {total} cuts has labels outside the "
                                "inventory, so none is left to train on (--keep-unk-cuts 1 keeps them)")
        unk = sum(s.unk_cuts for s in scans)
        if scans:
            kinds: Counter = sum((s.kinds for s in scans), Counter())
            log.info(f"training data: {sum(s.cuts for s in scans)} cuts in {len(scans)} shard(s) "
                     f"({', '.join(f'{kinds[k]} {k}' for k in LABEL_KINDS)}); {unk} with labels "
                     f"outside the inventory in {sum(1 for s in scans if s.unk_cuts)} shard(s)"
                     + (", dropped" if unk and not self.keep_unk_cuts else ""))
        return scans

    def _scan_manifest(self, path: str) -> ShardScan:
        scan = ShardScan(path)
        for line in _read_text(path):
            if not line.strip():
                continue
            item = json.loads(line)
            why = _dict_refusal(item, self.trust_commands)
            if why:
                raise self._refuse(path, item.get("id") if isinstance(item, dict) else "?", why)
            scan.cuts += 1
            text = _dict_text(item)
            cut_id = item.get("id") if isinstance(item, dict) else "?"
            scan.kinds[_kind_from(item.get("custom") if isinstance(item, dict) else None, text,
                                  f"{path}: cut {cut_id!r}")] += 1
            unknown = self.unknown_labels(text)
            if unknown:
                scan.unk_cuts += 1
                scan.unk_symbols.update(unknown)
        return scan


def shar_read_options(config: DataConfig, tokenizer: Any = None) -> dict[str, Any]:
    """Keyword arguments for :func:`open_shar` / :func:`open_train_shars` from the data config
    (``--trust-data-commands``, ``--max-bad-shards``; with a tokenizer also ``--keep-unk-cuts`` and
    ``--remove-diacritics``)."""
    opts: dict[str, Any] = {"trust_commands": config.trust_data_commands, "max_bad_shards": config.max_bad_shards}
    if tokenizer is not None:
        opts.update(tokenizer=tokenizer, keep_unk_cuts=config.keep_unk_cuts,
                    remove_diacritics=config.remove_diacritics)
    return opts


def shard_error(shard: Mapping[str, str], e: BaseException) -> tuple[str, str]:
    """(files, reason) for an exception met while reading one shard: the file names of the tar(s) for tar
    errors, of the cuts manifest for gzip/JSON errors, of every file of the shard when it cannot be told; the
    reason is the error's first line."""
    if isinstance(e, tarfile.TarError) or "tar" in str(e).lower():
        files = [p for f, p in shard.items() if f != "cuts"] or [shard["cuts"]]
    elif isinstance(e, (EOFError, zlib.error, gzip.BadGzipFile, json.JSONDecodeError, UnicodeDecodeError)):
        files = [shard["cuts"]]
    else:
        files = list(shard.values())
    return ", ".join(_shard_name(p) for p in files), _first_line(e)


class _GuardedSharIterator(LazySharIterator):
    """lhotse's Shar reader taken one shard at a time, so that a shard that cannot be read is named,
    counted by the guard and skipped instead of ending the run. Shard order, shuffling, the split for
    data loading and the cuts themselves (with ``shard_origin`` and ``shar_epoch``) are lhotse's.

    With ``world_size > 1`` this reader is rank ``rank``'s: it takes positions ``rank::world_size`` of the
    epoch's shuffled shard list (the same list on every rank), so the ranks read disjoint shards that together
    cover the folder once per epoch."""

    def __init__(self, *, guard: ShardGuard, name: str, rank: int = 0, world_size: int = 1,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.guard = guard
        self.name = name
        self.rank, self.world_size = int(rank), int(world_size)

    def __iter__(self) -> Iterator[Any]:
        shards = self._maybe_shuffle_shards(self.shards)[self.rank::self.world_size]
        shards = self._maybe_split_for_dataloading(shards)
        delivered = 0
        for shard in shards:
            it = iter(LazySharIterator(fields={f: [p] for f, p in shard.items()}))
            n, failed = 0, False
            while True:
                try:
                    cut = next(it)
                except StopIteration:
                    break
                except Exception as e:  # noqa: BLE001 - whatever lhotse raises on a damaged file
                    self.guard.shard_failed(self.name, str(shard["cuts"]), *shard_error(shard, e))
                    failed = True
                    break
                cut.shar_epoch = self.epoch
                n += 1
                yield cut
            if not failed:
                # a tar cut short at a member boundary ends without an error: compare with the manifest
                expected = _count_cuts(str(shard["cuts"]))
                if expected is not None and n < expected:
                    tars = ", ".join(_shard_name(p) for f, p in shard.items() if f != "cuts")
                    self.guard.shard_failed(self.name, str(shard["cuts"]), tars, f"holds {n} of the {expected} "
                                            f"cuts of {_shard_name(shard['cuts'])} (truncated)")
            delivered += n
        if shards and delivered == 0:
            # without this a repeated stream would loop forever over shards that yield nothing
            raise self.guard.bad_shards.nothing_read(self.name, len(shards))
        self.epoch += 1


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def write_shar(cuts: Iterable, out_dir: str | Path, shard_size: int = 1000) -> int:
    """Write cuts (with loadable audio) to a Shar directory with FLAC audio; returns the count.

    Custom cut fields (e.g. language/voice/speed) go into the cuts manifest.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    with SharWriter(str(out_dir), fields={"recording": "flac"}, shard_size=shard_size) as writer:
        for cut in cuts:
            writer.write(cut)
            n += 1
    return n


def make_cut(
    cut_id: str,
    samples: np.ndarray,
    text: str,
    language: str = "",
    custom: dict | None = None,
) -> MonoCut:
    """An in-memory 16 kHz mono cut (FLAC bytes) with one supervision covering it.

    ``samples``: (S,) float in [-1, 1] at 16 kHz. The language is stored both on the
    supervision and as ``cut.custom["language"]``.
    """
    buf = io.BytesIO()
    sf.write(buf, np.clip(samples, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    rec = Recording.from_bytes(buf.getvalue(), recording_id=cut_id)
    sup = SupervisionSegment(
        id=cut_id,
        recording_id=cut_id,
        start=0.0,
        duration=rec.duration,
        channel=0,
        text=text,
        language=language or None,
    )
    extra = {"language": language}
    extra.update(custom or {})
    return MonoCut(
        id=cut_id,
        start=0.0,
        duration=rec.duration,
        channel=0,
        recording=rec,
        supervisions=[sup],
        custom=extra,
    )


# ----------------------------------------------------------------------------------------------
# User corpora
# ----------------------------------------------------------------------------------------------


PROBLEMS = {
    "missing_audio": "audio file does not exist",
    "empty_audio": "audio file is empty",
    "corrupt_audio": "audio file cannot be decoded",
    "no_audio_entry": "utterance is in the transcripts but has no audio entry",
    "no_transcript": "utterance has audio but no transcript",
    "unknown_symbols": "transcript has symbols outside the IPA inventory",
    "empty_transcript": "transcript is empty after IPA normalisation",
    "duplicate_id": "utterance id is given more than once",
    "id_with_space": "utterance id contains a space",
    "command_audio": "audio would be loaded by running a command",
}
# the kinds CorpusReport.counts() always lists; the rarer ones above only when they occurred
_CORE_PROBLEMS = ("missing_audio", "empty_audio", "corrupt_audio", "no_audio_entry", "no_transcript",
                  "unknown_symbols", "empty_transcript")


@dataclass
class CorpusReport:
    """What a corpus conversion did. ``problems[kind]`` lists the utterance ids per problem kind
    (kinds: see ``PROBLEMS``); ``unknown_symbols`` counts every dropped out-of-inventory symbol."""

    written: int = 0
    skipped: int = 0
    seconds: float = 0.0
    problems: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in PROBLEMS})
    unknown_symbols: Counter = field(default_factory=Counter)
    out_dir: str = ""

    def add(self, kind: str, utt_id: str, detail: str, skipped: bool = True) -> None:
        self.problems[kind].append(utt_id)
        if skipped:  # with on_unknown='drop' an utterance is kept despite the problem
            self.skipped += 1
        action = "skipped" if skipped else "kept"
        log.warning(f"{utt_id}: {PROBLEMS[kind]} ({detail}); {action}")

    def counts(self) -> dict[str, int]:
        """Utterances per problem kind: the common kinds always, the rarer ones (duplicate ids, ids
        with a space, command sources) when they occurred."""
        return {k: len(v) for k, v in self.problems.items() if v or k in _CORE_PROBLEMS}

    def summary(self) -> str:
        parts = [f"wrote {self.written} utterances ({self.seconds / 3600:.2f} h) to {self.out_dir}",
                 f"skipped {self.skipped}"]
        parts += [f"{k}={len(v)}" for k, v in self.problems.items() if v]
        if self.unknown_symbols:
            top = ", ".join(f"{s!r}x{c}" for s, c in self.unknown_symbols.most_common(10))
            parts.append(f"unknown symbols: {top}")
        return "; ".join(parts)


class _AudioProblem(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def _to_mono_16k(samples: np.ndarray, sr: int) -> np.ndarray:
    """(S,) or (S, C) float -> (S,) float32 at 16 kHz (channels averaged)."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if sr != SAMPLE_RATE:
        from scipy.signal import resample_poly

        g = math.gcd(int(sr), SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, int(sr) // g).astype(np.float32)
    return x


def read_audio_file(path: str | Path, trust_commands: bool = False) -> np.ndarray:
    """Read an audio file as 16 kHz mono float32 (S,). Raises _AudioProblem on bad input.

    Files libsndfile cannot read are tried with lhotse's backends, except those lhotse would decode by
    running a shell with the file name in it (``.sph``), unless ``trust_commands``.
    """
    p = Path(path)
    if not p.is_file():
        raise _AudioProblem("missing_audio", str(p))
    if p.stat().st_size == 0:
        raise _AudioProblem("empty_audio", f"{p}: 0 bytes")
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=False)
    except Exception as e:  # any decoder failure means "cannot decode this file"
        why = source_command("file", str(p))
        if why and not trust_commands:
            raise _AudioProblem("command_audio", f"{p}: libsndfile cannot decode it, and {why}; "
                                f"{TRUST_HINT}") from e
        try:  # formats libsndfile cannot read (e.g. m4a) may still open with lhotse's backends
            rec = Recording.from_file(str(p))
            data, sr = rec.load_audio(), rec.sampling_rate
        except Exception:  # noqa: BLE001
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise _AudioProblem("corrupt_audio", f"{p}: {msg}") from e
    return _check_samples(_to_mono_16k(data, sr), str(p))


def _check_samples(x: np.ndarray, where: str) -> np.ndarray:
    if x.size == 0:
        raise _AudioProblem("empty_audio", f"{where}: 0 samples")
    if not np.all(np.isfinite(x)):
        raise _AudioProblem("corrupt_audio", f"{where}: NaN or inf samples")
    return x


def read_kaldi_table(path: Path, duplicates: dict[str, list[int]] | None = None) -> dict[str, str]:
    """Kaldi table ``utt_id rest-of-line`` -> dict. Blank lines are ignored; for a line with an id
    only, the value is ''.

    An id given on several lines keeps its first value, and with ``duplicates`` its line numbers are
    recorded there (id -> [line, ...]), so the caller can skip it: last-one-wins would pair one
    utterance's audio with another's transcript. A line that is not UTF-8 raises DataError (file:line).
    """
    table: dict[str, str] = {}
    first_line: dict[str, int] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise DataError(f"{path}:{lineno}: not UTF-8 text; save the file as UTF-8") from None
            if not line:
                continue
            key, _, value = line.partition(" ")
            if "\t" in key:  # tab-separated tables
                key, _, value = line.partition("\t")
            if key in table:
                if duplicates is not None:
                    duplicates.setdefault(key, [first_line[key]]).append(lineno)
                continue
            table[key] = value.strip()
            first_line[key] = lineno
    return table


def _spaced_id(key: str, value: str, base: Path) -> str | None:
    """The utterance id a line ``key value`` of an audio list really meant when that id contains a
    space (``spk 1 /a/x.wav`` reads as id ``spk`` with path ``1 /a/x.wav``): the path does not exist
    but a tail of it does. None when the line reads as intended (or nothing better can be said)."""

    def exists(s: str) -> bool:
        p = Path(s)
        return (p if p.is_absolute() else base / p).is_file()

    if not value or value.endswith("|") or exists(value):
        return None
    for m in re.finditer(r"\s+", value):
        if m.end() < len(value) and exists(value[m.end():]):
            return f"{key} {value[:m.start()]}"
    return None


def _normalize_text(text: str, remove_diacritics: bool) -> tuple[str, Counter]:
    from anyphone.text.ipa import normalize_ipa

    unknown: Counter = Counter()
    out = normalize_ipa(text, remove_diacritics=remove_diacritics, unknown=unknown)
    return out, unknown


def _convert(
    items: Iterator[tuple[str, Callable[[], np.ndarray], str | None, str]],
    out_dir: Path,
    report: CorpusReport,
    *,
    shard_size: int,
    remove_diacritics: bool,
    on_unknown: str,
) -> CorpusReport:
    """items: (utt_id, load_audio, raw_text or None, language). Writes good items to Shar."""
    if on_unknown not in ("skip", "drop"):
        raise ValueError(f"on_unknown={on_unknown!r}: expected 'skip' or 'drop'")

    def good_cuts() -> Iterator[MonoCut]:
        for utt_id, load, raw, lang in items:
            if raw is None:
                report.add("no_transcript", utt_id, "no line in the transcript file")
                continue
            text, unknown = _normalize_text(raw, remove_diacritics)
            if unknown:
                report.unknown_symbols.update(unknown)
                syms = " ".join(f"{s!r}" for s in sorted(unknown))
                report.add("unknown_symbols", utt_id, f"{syms} in {raw!r}", skipped=on_unknown == "skip")
                if on_unknown == "skip":
                    continue
            if not text:
                report.add("empty_transcript", utt_id, f"text {raw!r}")
                continue
            try:
                samples = load()
            except _AudioProblem as e:
                report.add(e.kind, utt_id, e.detail)
                continue
            cut = make_cut(utt_id, samples, text, lang)
            report.written += 1
            report.seconds += cut.duration
            yield cut

    _check_out_dir(out_dir)
    if _write_shar_replacing(good_cuts(), out_dir, shard_size) == 0:
        state = "left as it was" if out_dir.exists() else "not created"
        log.warning(f"{out_dir}: no utterance was written; the folder is {state}")
    print(f"[anyphone] {report.summary()}")
    return report


def _check_out_dir(out_dir: Path) -> None:
    """Refuse an output folder whose replacement would destroy anything but Shar shards (e.g. the
    corpus itself, or a folder that holds it)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a folder; --out-dir takes a folder")
    if out_dir.is_dir():
        others = sorted(p.name for p in out_dir.iterdir() if p.is_dir() or not _SHARD_RE.match(p.name))
        if others:
            raise DataError(f"{out_dir}: exists and holds {others[0]!r}, which is not a Shar shard; refusing to "
                            "replace it (choose a new or empty --out-dir)")


def _write_shar_replacing(cuts: Iterable, out_dir: Path, shard_size: int) -> int:
    """:func:`write_shar` into a temporary sibling folder, then swap it in for ``out_dir``.

    Shards of an earlier run never mix with the new ones, an interrupted or failed run leaves
    ``out_dir`` as it was, and when nothing is written ``out_dir`` is left alone too. Returns the count.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out_dir.name}.", dir=out_dir.parent))
    try:
        n = write_shar(cuts, tmp, shard_size=shard_size)
        if n == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            return 0
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
        if out_dir.exists():
            # two renames: between them the old shards sit whole in `old`, never half-replaced
            old = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}old-{out_dir.name}.", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
            try:
                os.replace(tmp, out_dir)
            except BaseException:
                os.replace(old / out_dir.name, out_dir)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return n


def kaldi_dir_files(data_dir: str | Path) -> tuple[Path, Path, Path | None]:
    """(audio list, transcripts, language list or None) of a Kaldi/Allosaurus-style directory.

    Raises FileNotFoundError, naming the directory, when it does not exist, is empty, or lacks the audio list
    (``wave`` or ``wav.scp``) or the transcripts (``text``).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"corpus directory {data_dir} does not exist")
    if not any(data_dir.iterdir()):
        raise FileNotFoundError(f"corpus directory {data_dir} is empty: expected 'wave' (or 'wav.scp') and 'text'")
    wave_file = next((data_dir / n for n in ("wave", "wav.scp") if (data_dir / n).is_file()), None)
    if wave_file is None:
        raise FileNotFoundError(f"corpus directory {data_dir} has no 'wave' or 'wav.scp' file (lines: utt_id path)")
    text_file = data_dir / "text"
    if not text_file.is_file():
        raise FileNotFoundError(f"corpus directory {data_dir} has no 'text' file (lines: utt_id phones)")
    lang_file = next((data_dir / n for n in ("lang", "utt2lang") if (data_dir / n).is_file()), None)
    return wave_file, text_file, lang_file


def kaldi_dir_to_shar(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    shard_size: int = 1000,
    language: str = "",
    remove_diacritics: bool = False,
    on_unknown: str = "skip",
    trust_commands: bool = False,
) -> CorpusReport:
    """Convert an Allosaurus/Kaldi-style directory to Shar (16 kHz mono FLAC, normalised IPA).

    Expected files in ``data_dir``: ``wave`` or ``wav.scp`` (``utt_id path``; relative paths are
    resolved against ``data_dir``), ``text`` (``utt_id phones``, spaces allowed), optionally
    ``lang`` or ``utt2lang`` (``utt_id lang``). ``language`` is the default for utterances
    without one. ``on_unknown``: 'skip' drops utterances with out-of-inventory symbols, 'drop'
    keeps them without those symbols. Bad utterances are skipped with a warning, among them ids
    given more than once in a file (all their lines), ids that contain a space and Kaldi pipes
    (``cmd |``, never run). ``trust_commands`` lets lhotse decode ``.sph`` files libsndfile cannot
    read (it runs sph2pipe through a shell). ``out_dir`` is replaced whole (see :func:`_convert`).

    Raises FileNotFoundError when the directory does not exist, is empty, or lacks the audio
    list or the transcripts; DataError for a file that is not UTF-8 or an ``out_dir`` that holds
    other things than Shar shards.
    """
    data_dir = Path(data_dir)
    wave_file, text_file, lang_file = kaldi_dir_files(data_dir)
    dups: dict[str, dict[str, list[int]]] = {wave_file.name: {}, text_file.name: {}}
    waves = read_kaldi_table(wave_file, dups[wave_file.name])
    texts = read_kaldi_table(text_file, dups[text_file.name])
    if not waves and not texts:
        raise FileNotFoundError(f"corpus directory {data_dir}: {wave_file.name} and text are empty")
    langs = {}
    if lang_file:
        dups[lang_file.name] = {}
        langs = read_kaldi_table(lang_file, dups[lang_file.name])

    report = CorpusReport(out_dir=str(out_dir))

    def loader(path_str: str) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            if path_str.endswith("|"):
                raise _AudioProblem("command_audio", f"{path_str!r}: Kaldi pipe commands are never run; "
                                    "convert the audio to files first")
            p = Path(path_str)
            return read_audio_file(p if p.is_absolute() else data_dir / p, trust_commands=trust_commands)

        return load

    def duplicate_lines(utt_id: str) -> str:
        return "; ".join(f"{name} lines {', '.join(map(str, d[utt_id]))}" for name, d in dups.items()
                         if utt_id in d)

    def items() -> Iterator:
        for utt_id in texts:
            if utt_id not in waves:
                report.add("no_audio_entry", utt_id, f"not in {wave_file}")
        for utt_id, path_str in waves.items():
            if duplicate_lines(utt_id):
                report.add("duplicate_id", utt_id, f"{duplicate_lines(utt_id)}; which lines belong together "
                           "cannot be told")
                continue
            spaced = _spaced_id(utt_id, path_str, data_dir)
            if spaced is not None:
                report.add("id_with_space", spaced, f"{wave_file.name} reads it as id {utt_id!r} with audio "
                           f"{path_str!r}; Kaldi ids cannot contain spaces, use e.g. '_'")
                continue
            if not path_str:
                report.add("missing_audio", utt_id, f"no path in {wave_file}")
                continue
            yield utt_id, loader(path_str), texts.get(utt_id), langs.get(utt_id, language)

    return _convert(items(), Path(out_dir), report, shard_size=shard_size,
                    remove_diacritics=remove_diacritics, on_unknown=on_unknown)


def lhotse_manifests_to_shar(
    recordings: str | Path,
    supervisions: str | Path,
    out_dir: str | Path,
    *,
    shard_size: int = 1000,
    language: str = "",
    remove_diacritics: bool = False,
    on_unknown: str = "skip",
    trust_commands: bool = False,
) -> CorpusReport:
    """Convert lhotse ``recordings.jsonl.gz`` + ``supervisions.jsonl.gz`` to Shar.

    Each supervision becomes one utterance (its time span of its recording, channels mixed to
    mono, 16 kHz). The supervision's ``language`` wins over ``language``. Same bad-input handling
    as :func:`kaldi_dir_to_shar`. A recording whose audio would be loaded by running a command
    (``"type": "command"``, a ``pipe:`` URL, a ``.sph`` file) is refused, utterance by utterance,
    unless ``trust_commands``.
    """
    from lhotse import RecordingSet, SupervisionSet

    for p in (recordings, supervisions):
        if not Path(p).is_file():
            raise FileNotFoundError(f"lhotse manifest {p} does not exist")
    rec_list = list(RecordingSet.from_file(recordings))
    recs = {r.id: r for r in rec_list}
    rec_seen = Counter(r.id for r in rec_list)
    sups = list(SupervisionSet.from_file(supervisions))
    sup_seen = Counter(s.id for s in sups)
    if len(sups) == 0:
        raise FileNotFoundError(f"lhotse manifest {supervisions} has no supervisions")
    report = CorpusReport(out_dir=str(out_dir))

    def loader(rec: Recording, sup: SupervisionSegment) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            for src in rec.sources:
                why = None if trust_commands else source_command(src.type, src.source)
                if why:
                    raise _AudioProblem("command_audio", f"recording {rec.id}: {why}; {TRUST_HINT}")
            for src in rec.sources:
                if src.type == "file":
                    p = Path(src.source)
                    if not p.is_file():
                        raise _AudioProblem("missing_audio", str(p))
                    if p.stat().st_size == 0:
                        raise _AudioProblem("empty_audio", f"{p}: 0 bytes")
            try:
                data = rec.load_audio(offset=sup.start, duration=sup.duration)
            except Exception as e:  # any decoder failure means "cannot decode"
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise _AudioProblem("corrupt_audio", f"recording {rec.id}: {msg}") from e
            return _check_samples(_to_mono_16k(data.T, rec.sampling_rate), f"recording {rec.id}")

        return load

    def items() -> Iterator:
        for sup in sups:
            if sup_seen[sup.id] > 1 or rec_seen[sup.recording_id] > 1:
                twice = (f"supervision id given {sup_seen[sup.id]} times in {supervisions}" if sup_seen[sup.id] > 1
                         else f"recording {sup.recording_id!r} given {rec_seen[sup.recording_id]} times in "
                         f"{recordings}")
                report.add("duplicate_id", sup.id, twice)
                continue
            if sup.recording_id not in recs:
                report.add("no_audio_entry", sup.id, f"recording {sup.recording_id!r} not in {recordings}")
                continue
            yield sup.id, loader(recs[sup.recording_id], sup), sup.text or "", sup.language or language

    return _convert(items(), Path(out_dir), report, shard_size=shard_size,
                    remove_diacritics=remove_diacritics, on_unknown=on_unknown)
