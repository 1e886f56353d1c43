"""An exp dir describes itself: its ``config.json``, and the weights that ``--iter/--epoch/--avg`` choose.

``config.json`` (written by training, read by decode.py, export.py, ``anyphone recognize -m EXP``,
``anyphone finetune`` and ``load_model``; nowhere else) holds::

    model       ZipformerConfig.to_dict() of the model trained there
    family      "crctc" or "transducer"
    num_params  parameter count (informative)
    tokenizer   {"tokens": "tokens.txt"}: the token table copied beside it
    decode      DecodeOptions.to_dict() chosen on a dev set (decode.py --save-decode-options 1); recognize and
                load_model use them unless told otherwise

A ``config.json`` of another layout (a bare ZipformerConfig dict, as some users put beside a ``.pth``) reads as
its ``model`` section. Writes are atomic (:func:`anyphone.fileio.atomic_write_text`).

Weight selection follows icefall's decode.py: ``--iter N --avg K`` reads ``checkpoint-N.pt`` and the K (K + 1
with ``--use-averaged-model``) newest checkpoints up to it; ``--epoch E --avg K`` the epoch files
``E - K .. E``. Every problem is one line naming the file (FileNotFoundError / ValueError).
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anyphone.fileio import atomic_write_text

__all__ = [
    "CONFIG_FILE",
    "is_exp_dir",
    "model_section",
    "read_config",
    "read_model_config",
    "record_decode_options",
    "select_state_dict",
    "write_config",
]

log = logging.getLogger("anyphone.weights")

CONFIG_FILE = "config.json"
_CKPT_RE = re.compile(r"^(checkpoint|epoch)-(\d+)\.pt$")
# What a damaged or foreign file makes an averaging helper raise (the file is then found by loading each one).
_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, TypeError, IndexError)


# ---------------------------------------------------------------------------------------------- config.json
def read_config(path: str | Path) -> dict[str, Any] | None:
    """The whole ``config.json`` at ``path`` (a file, or an exp dir holding one), or None when there is none.

    Raises ValueError (one line naming the file) when it is not a JSON object.
    """
    p = Path(path)
    if p.is_dir():
        p = p / CONFIG_FILE
    if not p.is_file():
        return None
    try:
        card = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" ({e.msg} at line {e.lineno})" if isinstance(e, json.JSONDecodeError) else ""
        raise ValueError(f"{p}: not valid JSON{where}") from None
    if not isinstance(card, dict):
        raise ValueError(f"{p}: expected a JSON object, got {type(card).__name__}")  # noqa: TRY004 - bad data
    return card


def model_section(card: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ZipformerConfig dict of a config.json: its ``model`` entry, or the whole file when it has none."""
    if card is None:
        return None
    model = card.get("model", card)
    return dict(model) if isinstance(model, Mapping) else None


def read_model_config(*paths: str | Path) -> dict[str, Any] | None:
    """The model section of the first of ``paths`` that exists (``x.json`` beside ``x.pth``, then
    ``config.json``...), or None."""
    for p in paths:
        if Path(p).is_file():
            return model_section(read_config(p))
    return None


def write_config(exp_dir: str | Path, *, model: Mapping[str, Any], family: str, num_params: int | None = None,
                 tokens: str | None = None) -> Path:
    """Write ``exp_dir/config.json`` atomically. Decode options recorded earlier are kept when the model is
    the same one (a resumed run), dropped when it changed (they were tuned for another model)."""
    target = Path(exp_dir) / CONFIG_FILE
    try:
        old = read_config(target) or {}
    except ValueError:
        old = {}
    card: dict[str, Any] = {"model": dict(model), "family": family}
    if num_params is not None:
        card["num_params"] = int(num_params)
    if tokens is not None:
        card["tokenizer"] = {"tokens": tokens}
    if "decode" in old and old.get("model") == card["model"] and old.get("family") == family:
        card["decode"] = old["decode"]
    atomic_write_text(target, json.dumps(card, indent=1, default=str, ensure_ascii=False))
    return target


def record_decode_options(exp_dir: str | Path, options: Mapping[str, Any]) -> Path:
    """Store ``options`` (DecodeOptions.to_dict()) as the ``decode`` entry of ``exp_dir/config.json``, keeping
    the rest of the file; creates the file when the exp dir has none."""
    target = Path(exp_dir) / CONFIG_FILE
    card = read_config(target) or {}
    card["decode"] = dict(options)
    atomic_write_text(target, json.dumps(card, indent=1, default=str, ensure_ascii=False))
    return target


# ---------------------------------------------------------------------------------------------- weights
def is_exp_dir(path: str | Path) -> bool:
    """True for a folder holding training checkpoints (``checkpoint-N.pt`` or ``epoch-N.pt``)."""
    p = Path(path)
    return p.is_dir() and any(_CKPT_RE.match(f.name) for f in p.iterdir())


def _number(path: Path) -> int:
    return int(path.stem.rsplit("-", 1)[-1])


def select_state_dict(exp_dir: str | Path, *, iter: int = 0, epoch: int = 0, avg: int = 1,
                      use_averaged_model: bool = True, checkpoint: str | Path | None = None,
                      ) -> tuple[dict[str, Any], str]:
    """The weights named by icefall's decode flags, as (state_dict, description of where they came from).

    ``checkpoint``: that file (a training checkpoint or a plain state_dict, loaded safely). ``iter`` > 0:
    ``checkpoint-{iter}.pt`` averaged over ``avg`` intervals (the running averages of ``checkpoint-{iter}.pt``
    and of the ``avg``-th older checkpoint with ``use_averaged_model``, else the raw weights of the ``avg``
    newest). ``epoch`` > 0: the same with ``epoch-N.pt`` files. Neither: the newest readable checkpoint.

    Raises FileNotFoundError / ValueError / UnsafeCheckpointError with one line naming the file.
    """
    from anyphone.weights.safe_load import load_state_dict

    if checkpoint is not None:
        return load_state_dict(checkpoint), str(checkpoint)
    exp = Path(exp_dir)
    if iter > 0 and epoch > 0:
        raise ValueError(f"{exp}: give --iter or --epoch, not both")
    if avg < 1:
        raise ValueError(f"--avg {avg}: expected >= 1")
    try:
        return _select(exp, iter, epoch, avg, use_averaged_model)
    except _LOAD_ERRORS as e:
        raise _explain_unreadable(exp, iter, epoch, e) from None


def _select(exp: Path, iter: int, epoch: int, avg: int, use_averaged_model: bool) -> tuple[dict[str, Any], str]:
    from anyphone.weights import checkpoint as ckpt

    if iter > 0:
        names = ckpt.find_checkpoints(exp, iteration=-iter)
        if not names or _number(names[0]) != iter:
            raise FileNotFoundError(f"--iter {iter}: {exp / f'checkpoint-{iter}.pt'} does not exist")
        need = avg + 1 if use_averaged_model else avg
        if len(names) < need:
            raise FileNotFoundError(
                f"--iter {iter} --avg {avg}{' --use-averaged-model 1' if use_averaged_model else ''} needs {need} "
                f"checkpoints in {exp}; found {len(names)} (missing an older checkpoint than {names[-1]})"
                + ("; --use-averaged-model 0 takes the raw weights" if use_averaged_model else ""))
        if use_averaged_model:
            sd = ckpt.average_two_averaged_models(names[avg], names[0])
        else:
            sd = ckpt.average_checkpoints(names[:avg])
        end = names[0]
    elif epoch > 0:
        end = exp / f"epoch-{epoch}.pt"
        if use_averaged_model:
            paths = [exp / f"epoch-{epoch - avg}.pt", end]
        else:
            paths = [exp / f"epoch-{i}.pt" for i in range(epoch - avg + 1, epoch + 1)]
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"--epoch {epoch} --avg {avg}"
                                        f"{' --use-averaged-model' if use_averaged_model else ''} needs {p}, "
                                        "which does not exist")
        sd = ckpt.average_two_averaged_models(*paths) if use_averaged_model else ckpt.average_checkpoints(paths)
    else:
        end = ckpt.latest_checkpoint(exp)
        if end is None:
            raise FileNotFoundError(f"{exp}: no readable checkpoint-N.pt or epoch-N.pt")
        log.info("%s: using %s (give iter/epoch with avg to average checkpoints)", exp, end.name)
        return ckpt.average_checkpoints([end]), str(end)
    return sd, (str(end) if avg == 1 else f"{end} (averaged with --avg {avg})")


def _explain_unreadable(exp: Path, iter: int, epoch: int, e: BaseException) -> Exception:
    """The one-line error for a failed average: the newest checkpoint of the kind read (up to --iter/--epoch)
    that does not load safely on its own; else ``e`` in one line."""
    from anyphone.weights.safe_load import UnsafeCheckpointError, load_state_dict

    kind = "checkpoint" if iter > 0 else "epoch" if epoch > 0 else None
    upto = iter or epoch
    found = []
    for p in exp.iterdir() if exp.is_dir() else []:
        m = _CKPT_RE.match(p.name)
        if m and (kind is None or m.group(1) == kind) and (not upto or int(m.group(2)) <= upto):
            found.append(p)
    for p in sorted(found, key=_number, reverse=True):
        try:
            load_state_dict(p)
        except (UnsafeCheckpointError, ValueError, FileNotFoundError) as problem:
            return problem
    detail = (e.args[0] if isinstance(e, KeyError) and e.args else str(e)).strip()
    first = detail.splitlines()[0] if detail else type(e).__name__
    return ValueError(f"{exp}: cannot average its checkpoints ({first})")
