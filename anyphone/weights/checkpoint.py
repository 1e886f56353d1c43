"""icefall-style training checkpoints: atomic save, pickle-free load, finding, pruning and averaging.

A checkpoint is one ``torch.save`` file holding a dict::

    model        state_dict of the (unwrapped) model, no ``module.`` prefixes
    model_avg    state_dict of the running weight average (if one is kept) in the dtype it is kept in
                 (float64 in training), so a resumed run continues from exactly the same average; see
                 update_averaged_model
    optimizer    optimizer.state_dict() or None
    scheduler    scheduler.state_dict() or None
    grad_scaler  GradScaler.state_dict() or None
    sampler      sampler.state_dict() (a plain dict) or None
    rng          python / numpy / torch / cuda RNG states (see get_rng_state), if saved
    <params>     each key of ``params`` at top level (icefall puts batch_idx_train, epoch, ... there);
                 ``batch_idx_train`` is also mirrored to top level when it sits in a nested params dict
    sha256       checksum of everything above (see checkpoint_digest); verified on every load, so bytes
                 overwritten inside a file are caught instead of loading as NaNs. Files written before it
                 existed load without verification.

Everything in it is tensors or plain Python containers, so it loads with ``torch.load(weights_only=True)``.
Batch checkpoints are named ``checkpoint-{batch_idx_train}.pt``, epoch checkpoints ``epoch-{epoch}.pt``.

The checksum is of the loaded contents (tensor bytes, shapes, dtypes and every plain value, in order), not
of the file's bytes: it lives inside the file, so a copied checkpoint carries it along, and what it guards is
what training would read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import random
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from anyphone.fileio import TMP_PREFIX, atomic_write, remove_stale_temporaries
from anyphone.utils import state_dict_mismatch

__all__ = [
    "CorruptCheckpointError",
    "average_checkpoints",
    "average_checkpoints_with_averaged_model",
    "average_epochs_with_averaged_model",
    "average_two_averaged_models",
    "checkpoint_digest",
    "checkpoint_path",
    "find_checkpoints",
    "get_rng_state",
    "latest_checkpoint",
    "load_checkpoint",
    "remove_old_checkpoints",
    "remove_stale_checkpoint_temporaries",
    "restore_rng_state",
    "save_checkpoint",
    "unwrap_model",
    "update_averaged_model",
]

logger = logging.getLogger(__name__)

_RESERVED_KEYS = ("model", "model_avg", "optimizer", "scheduler", "grad_scaler", "sampler", "rng", "sha256")
_DIGEST_KEY = "sha256"
_BATCH_CKPT_RE = re.compile(r"^checkpoint-(\d+)\.pt$")
_EPOCH_CKPT_RE = re.compile(r"^epoch-(\d+)\.pt$")
# Wrappers whose state_dict keys carry a prefix: DDP/DataParallel ("module.") and torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


# ---------------------------------------------------------------------------------------------- helpers
def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel / torch.compile wrappers (the model itself otherwise)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove a ``module.`` / ``_orig_mod.`` prefix that every key shares (repeatedly)."""
    sd = dict(state_dict)
    changed = True
    while changed and sd:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    return sd


def _to_plain(obj: Any, where: str, lenient: bool) -> Any:
    """Make ``obj`` loadable by ``torch.load(weights_only=True)``.

    Tensors and plain containers pass; numpy values become tensors/Python scalars; Paths become str.
    Anything else becomes its ``str()`` when ``lenient`` (user params), or raises TypeError naming ``where``.
    """
    if obj is None or isinstance(obj, (bool, int, float, str, Tensor, torch.dtype, torch.device)):
        return obj
    if isinstance(obj, Mapping):
        return {k: _to_plain(v, f"{where}[{k!r}]", lenient) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_to_plain(v, f"{where}[{i}]", lenient) for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return [_to_plain(v, where, lenient) for v in sorted(obj, key=repr)]
    if lenient:
        return str(obj)
    raise TypeError(
        f"checkpoint entry {where} is a {type(obj).__name__}; expected tensors or plain Python containers"
    )


def _find_batch_idx(params: Mapping[str, Any]) -> int | None:
    if "batch_idx_train" in params:
        return params["batch_idx_train"]
    for v in params.values():
        if isinstance(v, Mapping) and "batch_idx_train" in v:
            return v["batch_idx_train"]
    return None


def checkpoint_path(exp_dir: str | Path, batch_idx_train: int) -> Path:
    """``exp_dir/checkpoint-{batch_idx_train}.pt``."""
    return Path(exp_dir) / f"checkpoint-{int(batch_idx_train)}.pt"


# ---------------------------------------------------------------------------------------------- RNG
def get_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (CPU) and, if initialised, CUDA RNG states as tensors / plain containers."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore RNG states written by :func:`get_rng_state` (CUDA only if present and devices match)."""
    if "python" in state:
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state(
            {
                "bit_generator": s["bit_generator"],
                "state": {"key": s["key"].numpy().astype(np.uint32), "pos": int(s["pos"])},
                "has_gauss": int(s["has_gauss"]),
                "gauss": float(s["gauss"]),
            }
        )
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda")
    if cuda_states is not None and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
        else:
            logger.warning(
                f"checkpoint has {len(cuda_states)} CUDA RNG states, this machine {torch.cuda.device_count()} "
                "devices; CUDA RNG not restored"
            )


# ---------------------------------------------------------------------------------------------- checksum
class CorruptCheckpointError(ValueError):
    """A checkpoint whose contents do not match the checksum saved with it."""


def _feed(h: Any, obj: Any) -> None:
    """Feed ``obj`` to the hash ``h`` in a form that a ``torch.save`` / ``torch.load`` round trip keeps: raw
    tensor bytes with dtype and shape, containers with their kind and length, other values by type and repr
    (exact for floats). Every piece is length-prefixed or fixed-size, so no two structures hash alike by
    running into each other."""
    if isinstance(obj, Tensor):
        t = obj.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            # the bytes themselves, whatever the dtype (bfloat16 has no numpy twin; a uint8 view always works)
            h.update(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)};".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)};".encode())
        for v in obj:
            _feed(h, v)
    else:
        r = f"{type(obj).__name__}:{obj!r}".encode()
        h.update(f"S{len(r)};".encode() + r)


def checkpoint_digest(checkpoint: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint dict's contents, leaving out its own ``sha256`` entry.

    Reads every tensor once (about 1 GB/s), so verifying costs a second or two per GB of checkpoint.
    """
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in checkpoint.items() if k != _DIGEST_KEY})
    return h.hexdigest()


def _verify(path: Path, checkpoint: Mapping[str, Any]) -> None:
    saved = checkpoint.get(_DIGEST_KEY)
    if saved is None:
        return  # written before checkpoints carried a checksum: nothing to check against
    if not isinstance(saved, str) or checkpoint_digest(checkpoint) != saved:
        raise CorruptCheckpointError(
            f"{path}: corrupt checkpoint: its contents do not match the sha256 checksum saved with it"
        )


# ---------------------------------------------------------------------------------------------- save/load
def _state_of(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    sd = obj if isinstance(obj, Mapping) else obj.state_dict()
    return _to_plain(sd, name, lenient=False)


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    model_avg: nn.Module | None = None,
    optimizer: Any = None,
    scheduler: Any = None,
    scaler: Any = None,
    sampler: Any = None,
    params: Mapping[str, Any] | None = None,
    rng: bool = True,
) -> Path:
    """Write a checkpoint atomically (:func:`anyphone.fileio.atomic_write`: a temporary file in the same
    folder, then ``os.replace``), with the checksum of its contents inside it.

    A crash (or exception, e.g. a full disk) during the write leaves any previous file at ``path`` untouched
    and no partial file behind; a process killed outright leaves a ``.tmp-*`` file that
    :func:`remove_stale_checkpoint_temporaries` removes. ``optimizer`` / ``scheduler`` / ``scaler`` /
    ``sampler`` may be objects with ``state_dict()`` or already plain dicts. ``model`` may be wrapped in DDP.
    ``model_avg`` is stored in its own dtype (float64 in training: storing it as float32 changed it by up to
    1e-7 on every resume). ``params`` keys go to the top level of the file and must not clash with the
    reserved keys. Returns ``path``.
    """
    path = Path(path)
    checkpoint: dict[str, Any] = {
        "model": unwrap_model(model).state_dict(),
        "optimizer": _state_of(optimizer, "optimizer"),
        "scheduler": _state_of(scheduler, "scheduler"),
        "grad_scaler": _state_of(scaler, "grad_scaler"),
        "sampler": _state_of(sampler, "sampler"),
    }
    if model_avg is not None:
        checkpoint["model_avg"] = {k: v.detach() for k, v in unwrap_model(model_avg).state_dict().items()}
    if rng:
        checkpoint["rng"] = get_rng_state()
    if params:
        for k, v in params.items():
            if k in checkpoint or k in _RESERVED_KEYS:
                raise ValueError(f"save_checkpoint({path}): params key {k!r} clashes with a reserved key")
            checkpoint[k] = _to_plain(v, f"params[{k!r}]", lenient=True)
        batch_idx = _find_batch_idx(params)
        if batch_idx is not None and "batch_idx_train" not in checkpoint:
            checkpoint["batch_idx_train"] = int(batch_idx)

    checkpoint[_DIGEST_KEY] = checkpoint_digest(checkpoint)

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        torch.save(checkpoint, f)
    _fsync_dir(path.parent)
    logger.info(f"Saved checkpoint {path}")
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every OS/filesystem allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _load_file(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint dict in ``path``, its checksum verified when it has one (CorruptCheckpointError)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    if not isinstance(ckpt, dict):
        raise TypeError(f"checkpoint {path} holds a {type(ckpt).__name__}; expected a dict")
    _verify(path, ckpt)
    return ckpt


class CheckpointMismatchError(ValueError):
    """Weights whose keys or shapes do not fit the model they are loaded into."""


def load_model_weights(model: nn.Module, state_dict: Mapping[str, Any], source: str | Path,
                       strict: bool = True) -> None:
    """``model.load_state_dict`` (``model`` may be DDP-wrapped) that, when ``strict``, refuses weights of another
    shape with one line naming ``source`` and the first difference (CheckpointMismatchError) instead of torch's
    page of them."""
    state_dict = _strip_wrapper_prefixes(state_dict)
    model = unwrap_model(model)
    if strict:
        why = state_dict_mismatch(model.state_dict(), state_dict)
        if why:
            raise CheckpointMismatchError(f"{source}: this checkpoint does not fit the model ({why})")
    model.load_state_dict(state_dict, strict=strict)


def load_checkpoint(
    path: str | Path,
    model: nn.Module | None = None,
    model_avg: nn.Module | None = None,
    optimizer: Any = None,
    scheduler: Any = None,
    scaler: Any = None,
    strict: bool = True,
    sampler: Any = None,
    rng: bool = False,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``torch.load(weights_only=True)``, on CPU).

    The checksum is verified first (a file without one, from before checksums, loads unverified); a
    mismatch raises CorruptCheckpointError (one line naming the file) before anything is restored.
    Restores every object given (``model`` may be DDP-wrapped; ``module.`` prefixes in the file are
    stripped). With ``rng=True`` the saved RNG states are restored too. Returns the rest of the file: the
    params keys plus ``sampler`` / ``rng`` (and any state whose object was not given), for the caller.
    """
    ckpt = _load_file(path)
    ckpt.pop(_DIGEST_KEY, None)
    if model is not None:
        if "model" not in ckpt:
            raise KeyError(f"checkpoint {path} has no 'model' entry; keys: {sorted(ckpt)}")
        load_model_weights(model, ckpt.pop("model"), path, strict)
    else:
        ckpt.pop("model", None)
    if model_avg is not None:
        if ckpt.get("model_avg") is None:
            logger.warning(f"checkpoint {path} has no 'model_avg'; the averaged model is left as it is")
        else:
            load_model_weights(model_avg, ckpt.pop("model_avg"), path, strict)
    for key, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("grad_scaler", scaler)):
        if obj is not None and ckpt.get(key) is not None:
            obj.load_state_dict(ckpt.pop(key))
    if sampler is not None and ckpt.get("sampler") is not None:
        # lhotse samplers consume the dict they are given
        sampler.load_state_dict(dict(ckpt["sampler"]))
    if rng and ckpt.get("rng") is not None:
        restore_rng_state(ckpt["rng"])
    logger.info(f"Loaded checkpoint {path}")
    return ckpt


# ---------------------------------------------------------------------------------------------- finding
def _numbered(exp_dir: str | Path, pattern: re.Pattern) -> list[tuple[int, Path]]:
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        return []
    found = []
    for p in exp_dir.iterdir():
        m = pattern.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    found.sort(key=lambda x: x[0], reverse=True)
    return found


def find_checkpoints(exp_dir: str | Path, iteration: int = 0) -> list[Path]:
    """``checkpoint-N.pt`` files in ``exp_dir``, newest (largest N) first.

    ``iteration`` > 0 keeps those with N >= iteration, < 0 those with N <= -iteration (icefall's rule).
    """
    found = _numbered(exp_dir, _BATCH_CKPT_RE)
    if iteration > 0:
        found = [x for x in found if x[0] >= iteration]
    elif iteration < 0:
        found = [x for x in found if x[0] <= -iteration]
    return [p for _, p in found]


# What a truncated or foreign file makes torch.load raise.
_UNREADABLE = (OSError, EOFError, RuntimeError, ValueError, TypeError, KeyError, pickle.UnpicklingError)


def _probe(path: Path) -> tuple[bool, int | None]:
    """(readable and intact, stored batch_idx_train) of a checkpoint file (memory-mapped: its tensors are read
    once, for the checksum, and not kept)."""
    try:
        ckpt = _load_file(path, mmap=True)
    except _UNREADABLE as e:  # a damaged file must not stop a resume from an older one
        if isinstance(e, CorruptCheckpointError):
            why = str(e)
        else:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            why = f"{path}: unreadable checkpoint ({first})"
        logger.warning(f"{why}; skipping it for an older checkpoint")
        return False, None
    idx = _find_batch_idx(ckpt)
    return True, (int(idx) if idx is not None else None)


def latest_checkpoint(exp_dir: str | Path, include_epochs: bool = True) -> Path | None:
    """The checkpoint to resume from: the one saved after the most batches, or None if there is none.

    Candidates are the newest readable ``checkpoint-N.pt`` and (with ``include_epochs``) the newest readable
    ``epoch-E.pt``; they are compared by their stored ``batch_idx_train`` (a ``checkpoint-N.pt`` without one
    counts as N; an epoch file wins a tie, since it marks a clean epoch boundary). Unreadable files and files
    whose checksum does not match are skipped with a one-line warning naming them.
    """
    best: tuple[int, int, Path] | None = None
    kinds = [(1, _numbered(exp_dir, _BATCH_CKPT_RE))]
    if include_epochs:
        kinds.append((2, _numbered(exp_dir, _EPOCH_CKPT_RE)))
    for priority, found in kinds:
        for number, p in found:
            ok, idx = _probe(p)
            if not ok:
                continue
            if idx is None:
                idx = number if priority == 1 else -1
            if best is None or (idx, priority) > best[:2]:
                best = (idx, priority, p)
            break  # the newest readable file of each kind is enough
    return None if best is None else best[2]


def remove_old_checkpoints(exp_dir: str | Path, keep_last_k: int) -> list[Path]:
    """Delete all but the ``keep_last_k`` newest ``checkpoint-N.pt`` files (``epoch-*.pt`` are kept).

    ``keep_last_k <= 0`` keeps everything. Returns the removed paths.
    """
    if keep_last_k <= 0:
        return []
    removed = []
    for p in find_checkpoints(exp_dir)[keep_last_k:]:
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


# Temporary files of saves: save_checkpoint's (fileio.atomic_write) and those of releases before it.
_TEMPORARY_PATTERNS = (
    TMP_PREFIX + "checkpoint-*.pt.*", TMP_PREFIX + "epoch-*.pt.*", TMP_PREFIX + "best-valid.pt.*",
    ".checkpoint-*.pt.tmp-*", ".epoch-*.pt.tmp-*", ".best-valid.pt.tmp-*",
)


def remove_stale_checkpoint_temporaries(exp_dir: str | Path) -> list[Path]:
    """Delete the temporary files that saves killed mid-write left in ``exp_dir`` (each as large as a
    checkpoint); returns what was removed. Call it only while holding the exp dir's lock, when no save of
    this exp dir can be running."""
    removed: list[Path] = []
    if Path(exp_dir).is_dir():
        for pattern in _TEMPORARY_PATTERNS:
            removed += remove_stale_temporaries(exp_dir, pattern)
    return removed


# ---------------------------------------------------------------------------------------------- averaging
def _mean_tensors(tensors: list[Tensor]) -> Tensor:
    first = tensors[0]
    if first.is_floating_point() or first.is_complex():
        acc = torch.zeros_like(first, dtype=torch.float64 if first.is_floating_point() else torch.complex128)
        for t in tensors:
            acc += t.to(acc.dtype)
        return (acc / len(tensors)).to(first.dtype)
    if first.dtype == torch.bool:
        return first.clone()
    # integer buffers (e.g. BatchNorm's num_batches_tracked): floor of the mean, like icefall
    acc = torch.zeros_like(first, dtype=torch.int64)
    for t in tensors:
        acc += t.to(torch.int64)
    return torch.div(acc, len(tensors), rounding_mode="floor").to(first.dtype)


def average_checkpoints(
    paths: Iterable[str | Path], key: str = "model", device: str | torch.device = "cpu"
) -> dict[str, Tensor]:
    """Element-wise mean of the ``key`` state dicts ("model" or "model_avg") of several checkpoints.

    Floating tensors are averaged in float64 and cast back; integer tensors get the floor of the mean;
    bool tensors are taken from the first file. Every file must hold the same keys.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("average_checkpoints: no checkpoint paths given")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint {p} does not exist (needed for averaging)")
    collected: dict[str, list[Tensor]] | None = None
    for p in paths:
        ckpt = _load_file(p)
        if ckpt.get(key) is None:
            raise KeyError(f"checkpoint {p} has no {key!r} entry; keys: {sorted(ckpt)}")
        sd = _strip_wrapper_prefixes(ckpt[key])
        if collected is None:
            collected = {k: [] for k in sd}
        elif set(sd) != set(collected):
            diff = sorted(set(sd) ^ set(collected))
            raise KeyError(f"checkpoint {p}: {key} keys differ from {paths[0]}'s: {diff[:5]}")
        for k, v in sd.items():
            collected[k].append(v.to(device))
    assert collected is not None
    return {k: _mean_tensors(v) for k, v in collected.items()}


@torch.no_grad()
def update_averaged_model(
    model_cur: nn.Module, model_avg: nn.Module, average_period: int, batch_idx_train: int
) -> None:
    """Fold the current weights into the running average (icefall's ``--use-averaged-model``).

    Called every ``average_period`` batches, so the average covers the snapshots at average_period,
    2*average_period, ..., batch_idx_train with equal weight:

        avg = avg * (1 - w) + cur * w,   w = average_period / batch_idx_train

    (the first call, at batch_idx_train == average_period, replaces the initial copy). Integer buffers
    are copied from the current model. ``model_cur`` may be DDP-wrapped; ``model_avg`` is usually float64.
    """
    if average_period <= 0 or batch_idx_train < average_period:
        raise ValueError(
            f"update_averaged_model: average_period={average_period}, batch_idx_train={batch_idx_train}; "
            "expected 0 < average_period <= batch_idx_train"
        )
    weight_cur = average_period / batch_idx_train
    cur = unwrap_model(model_cur).state_dict()
    avg = unwrap_model(model_avg).state_dict()
    if set(cur) != set(avg):
        diff = sorted(set(cur) ^ set(avg))
        raise KeyError(f"update_averaged_model: current and averaged models differ in keys {diff[:5]}")
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    for k, a in avg.items():
        if a.numel() == 0:
            continue
        # tied weights appear under several names but must be updated once
        ident = (a.untyped_storage().data_ptr(), a.storage_offset(), tuple(a.shape))
        if ident in seen:
            continue
        seen.add(ident)
        c = cur[k].to(device=a.device)
        if a.is_floating_point():
            a.mul_(1.0 - weight_cur).add_(c.to(a.dtype), alpha=weight_cur)
        else:
            a.copy_(c)


def average_two_averaged_models(
    path_start: str | Path, path_end: str | Path, device: str | torch.device = "cpu"
) -> dict[str, Tensor]:
    """Average of the model over the batches in (start, end], from the running averages in two files.

    With s, e the stored ``batch_idx_train`` of the two files and A_s, A_e their ``model_avg``:
    A_e * e is the sum of the snapshots up to e, so the mean over (s, e] is (A_e * e - A_s * s) / (e - s).
    Computed in float64 and returned in the dtype of ``model`` in ``path_end`` (float32 by default).
    """
    start, end = _load_file(path_start), _load_file(path_end)
    for p, c in ((path_start, start), (path_end, end)):
        if c.get("model_avg") is None:
            raise KeyError(f"checkpoint {p} has no 'model_avg' (was it trained with a model average?)")
        if _find_batch_idx(c) is None:
            raise KeyError(f"checkpoint {p} has no 'batch_idx_train'")
    s, e = int(_find_batch_idx(start)), int(_find_batch_idx(end))
    if e <= s:
        raise ValueError(
            f"batch_idx_train of {path_end} ({e}) must exceed that of {path_start} ({s}) to average"
        )
    avg_s = _strip_wrapper_prefixes(start["model_avg"])
    avg_e = _strip_wrapper_prefixes(end["model_avg"])
    ref = _strip_wrapper_prefixes(end["model"]) if end.get("model") is not None else avg_e
    if set(avg_s) != set(avg_e):
        diff = sorted(set(avg_s) ^ set(avg_e))
        raise KeyError(f"model_avg keys of {path_start} and {path_end} differ: {diff[:5]}")
    w_end, w_start = e / (e - s), -s / (e - s)
    out = {}
    for k, ve in avg_e.items():
        dtype = ref[k].dtype if k in ref else ve.dtype
        if ve.is_floating_point():
            mixed = ve.to(device, torch.float64) * w_end + avg_s[k].to(device, torch.float64) * w_start
            out[k] = mixed.to(dtype)
        else:
            out[k] = ve.to(device).clone()
    return out


def average_checkpoints_with_averaged_model(
    exp_dir: str | Path,
    iter: int,
    avg: int,
    save_every_n: int | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Tensor]:
    """Model averaged over the last ``avg`` checkpoint intervals ending at ``checkpoint-{iter}.pt``.

    Start file: ``checkpoint-{iter - avg * save_every_n}.pt`` if ``save_every_n`` is given; otherwise the
    ``avg``-th older ``checkpoint-N.pt`` with N <= iter (icefall's decode.py rule). Missing files raise
    FileNotFoundError naming the file.
    """
    if avg < 1:
        raise ValueError(f"average_checkpoints_with_averaged_model: avg={avg}, expected >= 1")
    end = checkpoint_path(exp_dir, iter)
    if not end.is_file():
        raise FileNotFoundError(f"checkpoint {end} does not exist (needed for --iter {iter} --avg {avg})")
    if save_every_n is not None:
        start = checkpoint_path(exp_dir, iter - avg * save_every_n)
        if not start.is_file():
            raise FileNotFoundError(
                f"checkpoint {start} does not exist (needed for --iter {iter} --avg {avg} with "
                f"save_every_n={save_every_n})"
            )
    else:
        older = find_checkpoints(exp_dir, iteration=-iter)
        if len(older) < avg + 1:
            raise FileNotFoundError(
                f"--iter {iter} --avg {avg} needs {avg + 1} checkpoint-N.pt files with N <= {iter} in "
                f"{exp_dir}, found {len(older)}: {[p.name for p in older]}"
            )
        start = older[avg]
    logger.info(f"Averaging model_avg of {start} and {end}")
    return average_two_averaged_models(start, end, device=device)


def average_epochs_with_averaged_model(
    exp_dir: str | Path, epoch: int, avg: int, device: str | torch.device = "cpu"
) -> dict[str, Tensor]:
    """Model averaged over epochs ``epoch - avg + 1 .. epoch`` from ``epoch-{epoch - avg}.pt`` and
    ``epoch-{epoch}.pt`` (both must exist; the start epoch must be >= 1)."""
    start_epoch = epoch - avg
    if avg < 1 or start_epoch < 1:
        raise ValueError(f"--epoch {epoch} --avg {avg}: need avg >= 1 and epoch - avg >= 1")
    start = Path(exp_dir) / f"epoch-{start_epoch}.pt"
    end = Path(exp_dir) / f"epoch-{epoch}.pt"
    for p in (start, end):
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint {p} does not exist (needed for --epoch {epoch} --avg {avg})")
    return average_two_averaged_models(start, end, device=device)
