"""Hyper-parameter search over a recipe's train.py flags with Optuna (``anyphone tune``).

    anyphone tune local/tune_space.json --n-trials 20                 # study "tune_space", SQLite in the study dir
    anyphone tune space.json --study-name lr --n-trials 40            # the same command again continues the study
    anyphone tune space.json --study-name lr --storage postgresql://host/db   # workers on several machines
    anyphone tune space.json --study-name lr --n-trials 0             # only print the table and draw the plots
    anyphone tune space.json --import-table old/trials.tsv --n-trials 20   # a lost study, from its table

A *search-space file* (JSON, or YAML) names the recipe, the flags every trial shares, the flags to search and
the budget of one trial::

    {"recipe": "zipformer_crctc",
     "base": ["--model-size", "tiny", "--train-shar", "data/shar/embedded/train",
              "--dev-shar", "data/shar/embedded/dev"],
     "space": {"--base-lr": {"type": "float", "low": 0.01, "high": 0.1, "log": true},
               "--cr-start-batch": {"type": "int", "low": 0, "high": 1200, "step": 100},
               "--time-mask-ratio": {"type": "categorical", "choices": [1.0, 2.5]}},
     "budget": {"--max-batches": 400},
     "report_every": 100,
     "start": [{"--base-lr": 0.045, "--cr-start-batch": 900, "--time-mask-ratio": 1.0}],
     "pruner": {"n_startup_trials": 2, "n_warmup_steps": 0}}

Each trial runs ``<recipe>/train.py`` with base + sampled + budget flags, ``--valid-interval report_every`` and
``--exp-dir <study-dir>/trial-N``, in a subprocess. The dev PERs it appends to ``metrics.jsonl`` are reported to
Optuna as they appear; the median pruner stops a trial whose dev PER is worse than the median of finished trials
at the same batch (the subprocess is killed). The trial's score is its last dev PER. ``start`` lists points
tried first (the defaults you know, so the search never ends worse than them).

A search never reads a test split: ``--test-shar`` is refused anywhere in the file, and so is a train or dev
folder named ``test*``.

Resuming and parallel workers: the study lives in an Optuna RDB storage (``sqlite:///<study-dir>/study.db`` by
default; any SQLAlchemy URL such as ``postgresql://...`` lets processes on several machines share it). Running
the same command again continues the study until it holds ``--n-trials`` finished (complete or pruned) trials;
several processes on one storage, or ``--n-jobs``, run trials in parallel. Work is never lost: a trial whose
process died (no heartbeat for ``--stale-after`` seconds) and a trial stopped by Ctrl-C or SIGTERM (train.py
saves a checkpoint first) are marked failed and run again with the same parameters, continuing the training
in the old trial's folder (moved to the new trial's name).

Output in the study dir: ``trials.tsv`` (trial, state, dev PER, batches, parameters), ``optimization_history.png``,
``param_importances.png`` (needs two finished trials with different parameters), ``intermediate_values.png``,
and on the console the table and the best trial as a train.py command.

The trial runner is pluggable (``run_study(..., runner=...)``): the default launches train.py; any callable that
takes a :class:`TrialRun` and returns a :class:`TrialOutcome` works, so the study logic (pruning, resuming, the
table and plots) can be driven by another trainer or checked on a toy objective.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from anyphone.fileio import atomic_path, atomic_write_text

__all__ = [
    "SearchSpace", "TrialFailed", "TrialInterrupted", "TrialOutcome", "TrialRun", "TuneError", "TuneInterrupted",
    "add_tune_arguments", "load_search_space", "read_trials_table", "recipe_flags", "run_study", "train_runner",
    "tune_main", "write_report",
]

# Flags tune sets itself for every trial; a search-space file may not give them.
TUNE_OWNED = ("--exp-dir", "--valid-interval")
# Which trial states count towards --n-trials.
_DONE_STATES = ("COMPLETE", "PRUNED")
_TOP_KEYS = {"recipe", "base", "space", "budget", "report_every", "start", "pruner"}
# train.py flags that may be given several times (their values add up)
_REPEATABLE = ("--train-shar", "--dev-shar")
# The keys whose change makes an existing study's trials incomparable with new ones.
_STUDY_KEYS = ("recipe", "base", "space", "budget", "report_every")


class TuneError(Exception):
    """A problem the user can fix (a bad search-space file, storage, study dir): one line, no traceback."""


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the search; the interrupted trial continues when the command is run again."""


class TrialFailed(Exception):
    """A trial could not produce a dev PER (train.py failed); the study goes on with the next trial."""


class TrialInterrupted(Exception):
    """A runner stopped its trial on request (the study is stopping); it is continued by the next run."""


# ----------------------------------------------------------------------------------------------------------
# the search-space file


@dataclass
class Param:
    """One searched flag: a float or int range (optionally log-scaled or stepped) or a list of choices."""

    flag: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list | None = None

    @property
    def name(self) -> str:
        """Optuna's parameter name: the flag without its dashes (``--base-lr`` -> ``base-lr``)."""
        return self.flag.lstrip("-")

    def suggest(self, trial: Any) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        return trial.suggest_categorical(self.name, self.choices)

    def distribution(self) -> Any:
        """The Optuna distribution ``suggest`` draws from (for trials added from a table)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "float":
            return FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return CategoricalDistribution(self.choices)

    def parse(self, text: str) -> Any:
        """A value as ``format_value`` wrote it back to this parameter's type (a categorical maps to its choice);
        ValueError if it does not parse or lies outside the space."""
        if self.kind == "categorical":
            for c in self.choices:
                if format_value(c) == text or str(c) == text:
                    return c
            raise ValueError(f"{text!r} is not one of {self.choices}")
        value: Any = int(text) if self.kind == "int" else float(text)
        if self.kind == "float" and self.step is not None:
            # the table keeps 6 significant digits: snap back onto the grid
            value = self.low + round((value - self.low) / self.step) * self.step
        if not self.contains(value):
            raise ValueError(f"{text} is outside [{self.low}, {self.high}]")
        return value

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and int(value) != value:
            return False
        return self.low <= value <= self.high


@dataclass
class SearchSpace:
    """A parsed, checked search-space file (see the module docstring for its keys)."""

    path: Path
    recipe: str
    base: list[str]
    space: list[Param]
    budget: dict[str, str] = field(default_factory=dict)
    report_every: int = 100
    start: list[dict[str, Any]] = field(default_factory=list)
    pruner: dict[str, int] | None = field(default_factory=lambda: {"n_startup_trials": 2, "n_warmup_steps": 0})
    raw: dict = field(default_factory=dict)

    def param(self, name: str) -> Param:
        return next(p for p in self.space if p.name == name)

    def trial_argv(self, params: dict[str, Any], exp_dir: Path) -> list[str]:
        """train.py's flags for one trial: base, the sampled values (by Optuna name), budget, then tune's own."""
        argv = list(self.base)
        for p in self.space:
            argv += [p.flag, format_value(params[p.name])]
        for flag, value in self.budget.items():
            argv += [flag, value]
        return argv + ["--valid-interval", str(self.report_every), "--exp-dir", str(exp_dir)]

    def train_py(self) -> Path:
        """The recipe's train.py (``recipe`` is a recipe folder or the script, relative to the current folder)."""
        p = Path(self.recipe)
        script = p if p.suffix == ".py" else p / "train.py"
        if not script.is_file():
            raise TuneError(f"{self.path}: recipe {self.recipe!r}: no {script} (run from the repository root, or "
                            "give the recipe folder's path)")
        return script


def format_value(v: Any) -> str:
    """A parameter value as train.py reads it: booleans as 1/0, floats with 6 significant digits."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _flag_name(token: str) -> str:
    return token.split("=", 1)[0]


def _flags_with_values(argv: list[str]) -> list[tuple[str, str | None]]:
    """(flag, value) pairs of an argv list (``--a 1``, ``--a=1``; a flag followed by another flag has none)."""
    out = []
    for i, tok in enumerate(argv):
        if not tok.startswith("--"):
            continue
        if "=" in tok:
            out.append((_flag_name(tok), tok.split("=", 1)[1]))
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out.append((tok, argv[i + 1]))
        else:
            out.append((tok, None))
    return out


def _looks_like_test_split(value: str) -> bool:
    """A train/dev Shar source whose last folder is named test* (``data/shar/embedded/test``, ``test-clean``)."""
    value = re.sub(r":[0-9.]+$", "", value.rstrip("/"))  # DIR[:WEIGHT]
    last = re.split(r"[/\\]", value)[-1].lower()
    return last.startswith("test")


def _parse_param(where: str, flag: str, spec: Any) -> Param:
    if not isinstance(spec, dict):
        raise TuneError(f"{where}: space {flag}: expected an object with a type, got {spec!r}")
    kind = spec.get("type")
    allowed = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
               "categorical": {"type", "choices"}}
    if kind not in allowed:
        raise TuneError(f"{where}: space {flag}: type must be float, int or categorical, got {kind!r}")
    unknown = set(spec) - allowed[kind]
    if unknown:
        raise TuneError(f"{where}: space {flag}: unknown key(s) {sorted(unknown)} for type {kind}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices or \
                not all(isinstance(c, (str, int, float, bool)) for c in choices):
            raise TuneError(f"{where}: space {flag}: choices must be a non-empty list of numbers or strings")
        return Param(flag, kind, choices=choices)
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    for key, v in (("low", low), ("high", high)) + ((("step", step),) if step is not None else ()):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise TuneError(f"{where}: space {flag}: {key} must be a number, got {v!r}")
        if kind == "int" and int(v) != v:
            raise TuneError(f"{where}: space {flag}: {key} must be an integer for type int, got {v!r}")
    if not low < high:
        raise TuneError(f"{where}: space {flag}: low ({low}) must be below high ({high})")
    if not isinstance(log, bool):
        raise TuneError(f"{where}: space {flag}: log must be true or false, got {log!r}")
    if log and (low <= 0 or step is not None):
        raise TuneError(f"{where}: space {flag}: a log range needs low > 0 and no step")
    if step is not None and step <= 0:
        raise TuneError(f"{where}: space {flag}: step must be positive, got {step!r}")
    return Param(flag, kind, low=low, high=high, log=log, step=step)


def load_search_space(path: str | os.PathLike) -> SearchSpace:
    """Read and check a search-space file (JSON; YAML for .yaml/.yml). Nothing in it is executed.

    Raises TuneError (one line naming the file) for a missing or malformed file, an unknown key, a flag given
    twice, a flag tune sets itself, a missing --dev-shar, or anything that would read a test split.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TuneError(f"{path}: cannot read the search-space file ({e.__class__.__name__}: "
                        f"{getattr(e, 'strerror', None) or e})") from None
    is_yaml = path.suffix.lower() in (".yaml", ".yml")
    if is_yaml:
        import yaml

        errors: tuple[type[Exception], ...] = (yaml.YAMLError,)
    else:
        errors = (ValueError,)  # json.JSONDecodeError
    try:
        # safe_load: plain data only, no object construction
        data = yaml.safe_load(text) if is_yaml else json.loads(text)
    except errors as e:
        msg = (str(e).splitlines() or [e.__class__.__name__])[0]
        raise TuneError(f"{path}: not valid {'YAML' if is_yaml else 'JSON'}: {msg}") from None
    where = str(path)
    if not isinstance(data, dict):
        raise TuneError(f"{where}: expected an object with recipe, base, space and budget")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise TuneError(f"{where}: unknown key(s) {sorted(unknown)}; expected some of {sorted(_TOP_KEYS)}")
    recipe = data.get("recipe")
    if not isinstance(recipe, str) or not recipe:
        raise TuneError(f"{where}: recipe must name the recipe folder, e.g. \"zipformer_crctc\"")
    base = data.get("base", [])
    if not isinstance(base, list) or not all(isinstance(t, (str, int, float)) and not isinstance(t, bool)
                                             for t in base):
        raise TuneError(f"{where}: base must be a list of train.py arguments (strings)")
    base = [str(t) for t in base]
    space_raw = data.get("space")
    if not isinstance(space_raw, dict) or not space_raw:
        raise TuneError(f"{where}: space must map at least one train.py flag to its range")
    budget_raw = data.get("budget", {})
    if not isinstance(budget_raw, dict):
        raise TuneError(f"{where}: budget must map flags to values, e.g. {{\"--max-batches\": 400}}")
    report_every = data.get("report_every", 100)
    if isinstance(report_every, bool) or not isinstance(report_every, int) or report_every < 1:
        raise TuneError(f"{where}: report_every must be a positive number of batches, got {report_every!r}")

    for flag in list(space_raw) + list(budget_raw):
        if not isinstance(flag, str) or not re.fullmatch(r"--[A-Za-z0-9][A-Za-z0-9_-]*", flag):
            raise TuneError(f"{where}: {flag!r} is not a train.py flag (expected --name)")
    base_flags = [f for f, _ in _flags_with_values(base)]
    # why refuse rather than let the last one win: append flags (--train-shar) would silently add up
    seen: dict[str, str] = {}
    for flag, part in [(f, "base") for f in base_flags] + [(f, "space") for f in space_raw] + \
            [(f, "budget") for f in budget_raw]:
        if flag == "--test-shar":
            raise TuneError(f"{where}: {part} gives --test-shar: a search never reads a test split (trials are "
                            "scored on --dev-shar)")
        if flag in TUNE_OWNED:
            raise TuneError(f"{where}: {part} gives {flag}, which tune sets for every trial (report_every, "
                            "<study-dir>/trial-N)")
        if flag in seen and (seen[flag] != part or flag not in _REPEATABLE):
            raise TuneError(f"{where}: {flag} is given in {seen[flag]} and in {part}; give it once")
        seen[flag] = part
    for flag, value in _flags_with_values(base):
        if flag in ("--train-shar", "--dev-shar") and value is not None and _looks_like_test_split(value):
            raise TuneError(f"{where}: {flag} {value} looks like a test split; a search never reads one (rename "
                            "the folder if it is not)")
    if "--dev-shar" not in base_flags:
        raise TuneError(f"{where}: base needs --dev-shar DIR: trials are scored on dev PER")

    space = [_parse_param(where, flag, spec) for flag, spec in space_raw.items()]
    budget = {}
    for flag, value in budget_raw.items():
        if isinstance(value, (dict, list)) or value is None:
            raise TuneError(f"{where}: budget {flag}: expected a number or string, got {value!r}")
        budget[flag] = str(value) if isinstance(value, float) else format_value(value)  # floats as written

    start = data.get("start", [])
    if not isinstance(start, list) or not all(isinstance(s, dict) for s in start):
        raise TuneError(f"{where}: start must be a list of {{flag: value}} objects")
    by_flag = {p.flag: p for p in space}
    start_params = []
    for i, point in enumerate(start):
        missing = sorted(set(by_flag) - set(point))
        extra = sorted(set(point) - set(by_flag))
        if missing or extra:
            raise TuneError(f"{where}: start[{i}] must give exactly the space's flags (missing {missing}, "
                            f"not in space {extra})")
        for flag, value in point.items():
            if not by_flag[flag].contains(value):
                raise TuneError(f"{where}: start[{i}] {flag} {value!r} is outside its range in space")
        start_params.append({by_flag[f].name: v for f, v in point.items()})

    pruner = data.get("pruner", {"n_startup_trials": 2, "n_warmup_steps": 0})
    if pruner is not False:
        if not isinstance(pruner, dict) or set(pruner) - {"n_startup_trials", "n_warmup_steps"} or \
                not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pruner.values()):
            raise TuneError(f"{where}: pruner must be false or {{\"n_startup_trials\": N, \"n_warmup_steps\": "
                            "BATCHES}} with counts >= 0")
        pruner = {"n_startup_trials": 2, "n_warmup_steps": 0, **pruner}
    else:
        pruner = None
    return SearchSpace(path=path, recipe=recipe, base=base, space=space, budget=budget,
                       report_every=report_every, start=start_params, pruner=pruner,
                       # as JSON sees it: recorded in the study and compared when the study is continued
                       raw=json.loads(json.dumps({k: data.get(k) for k in _STUDY_KEYS}, default=str)))


def recipe_flags(train_py: Path) -> set[str]:
    """Every ``--flag`` the recipe's train.py accepts, read from its ``--help`` (so a recipe of your own works)."""
    try:
        res = subprocess.run([sys.executable, str(train_py), "--help"], capture_output=True, text=True,
                             timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TuneError(f"{train_py}: could not run --help ({e})") from None
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise TuneError(f"{train_py} --help failed: {last}")
    return set(re.findall(r"(?<![\w-])(--[A-Za-z0-9][A-Za-z0-9_-]*)", res.stdout))


def check_flags(space: SearchSpace, known: set[str]) -> None:
    """Refuse, in one line, a flag the recipe's train.py does not have (a typo would fail every trial)."""
    flags = [f for f, _ in _flags_with_values(space.base)] + [p.flag for p in space.space] + list(space.budget)
    unknown = [f for f in flags if f not in known]
    if unknown:
        raise TuneError(f"{space.path}: {', '.join(unknown)}: not a flag of {space.recipe}'s train.py "
                        f"(see its --help)")


# ----------------------------------------------------------------------------------------------------------
# trials


@dataclass
class TrialRun:
    """What a runner gets for one trial.

    ``report(batch, dev_per)`` hands an intermediate dev PER (%) to the pruner and returns True when the trial
    should stop (pruned); ``stop`` is set when the study is being interrupted (finish cleanly, raise
    TrialInterrupted). ``continues`` is the number of an earlier trial whose work ``exp_dir`` holds (the
    training there resumes), or None.
    """

    number: int
    params: dict[str, Any]  # by flag: {"--base-lr": 0.03, ...}
    argv: list[str]  # train.py's flags
    exp_dir: Path
    report: Callable[[int, float], bool]
    stop: threading.Event
    continues: int | None = None


@dataclass
class TrialOutcome:
    """A runner's result: the last dev PER (%), the batch it was measured at, and whether the trial was pruned."""

    per: float
    batches: int
    pruned: bool = False


TrialRunner = Callable[[TrialRun], TrialOutcome]


class MetricsFollower:
    """Reads the dev PERs a training run appends to ``metrics.jsonl``, as they appear.

    Only complete lines are taken (the writer may be mid-line); a line that is not JSON is skipped.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.last: tuple[int, float] | None = None

    def new_valid(self) -> list[tuple[int, float]]:
        """[(batch, dev PER %)] appended since the last call."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        out = []
        for line in chunk[:end].splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("split") == "valid" and "err_rate" in rec and "batch" in rec:
                out.append((int(rec["batch"]), float(rec["err_rate"])))
        if out:
            self.last = out[-1]
        return out


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    return lines[-1][-300:] if lines else "no output"


def _end_process_group(proc: subprocess.Popen, sig: int, wait_s: float) -> None:
    """Send ``sig`` to the trial's process group (train.py and any DDP workers it spawned); kill after wait_s."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def train_runner(train_py: Path, poll_s: float = 0.5, term_wait_s: float = 600.0) -> TrialRunner:
    """The default runner: ``python train_py ARGV`` in its own process group, output to exp_dir/tune-output.txt.

    A pruned trial's training is killed at once (its model is not wanted). An interrupted study sends SIGTERM,
    so train.py finishes its step and saves a checkpoint (exit 3) before the trial is continued later.
    """

    def run(trial: TrialRun) -> TrialOutcome:
        trial.exp_dir.mkdir(parents=True, exist_ok=True)
        out_path = trial.exp_dir / "tune-output.txt"
        follower = MetricsFollower(trial.exp_dir / "metrics.jsonl")
        with open(out_path, "ab") as out:
            out.write(f"# {shlex.join([sys.executable, str(train_py), *trial.argv])}\n".encode())
            out.flush()
            # a session of its own: the terminal's Ctrl-C reaches tune, which stops the trial cleanly
            proc = subprocess.Popen([sys.executable, str(train_py), *trial.argv], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            while True:
                rc = proc.poll()  # before reading: once it has exited, this read sees every line it wrote
                for batch, per in follower.new_valid():
                    if trial.report(batch, per):
                        _end_process_group(proc, signal.SIGKILL, 30)
                        return TrialOutcome(per, batch, pruned=True)
                if rc is not None:
                    break
                if trial.stop.wait(poll_s):
                    _end_process_group(proc, signal.SIGTERM, term_wait_s)
                    raise TrialInterrupted(f"trial {trial.number} stopped; its checkpoint is in {trial.exp_dir}")
        except BaseException as e:
            if proc.poll() is None:
                # a second Ctrl-C means now (checkpoints are written atomically: the previous one stays whole)
                _end_process_group(proc, signal.SIGKILL if isinstance(e, KeyboardInterrupt) else signal.SIGTERM,
                                   term_wait_s)
            raise
        if rc == 3:  # train.py's "checkpointed on a signal": someone stopped it; continue it later
            raise TrialInterrupted(f"train.py was stopped by a signal (checkpoint in {trial.exp_dir})")
        if rc != 0:
            raise TrialFailed(f"train.py exited with status {rc}: {_last_line(out_path)} (see {out_path})")
        if follower.last is None:
            raise TrialFailed(f"train.py wrote no dev PER to {follower.path} (see {out_path})")
        batch, per = follower.last
        return TrialOutcome(per, batch)

    return run


# ----------------------------------------------------------------------------------------------------------
# the study


def _quiet_optuna():
    import optuna

    # Optuna logs a failed trial with its traceback; tune prints its own one-line summary of every trial.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def default_storage(study_dir: Path) -> str:
    return "sqlite:///" + str(Path(study_dir).resolve() / "study.db")


def _storage_errors() -> tuple[type[Exception], ...]:
    import optuna
    import sqlalchemy.exc

    return (ImportError, ValueError, OSError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.OptunaError)


@contextlib.contextmanager
def _sqlite_creation_lock(url: str):
    """Processes opening one SQLite file take turns while Optuna creates (or checks) its tables."""
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
    if not path or path.startswith(":memory:") or not Path(path).parent.is_dir():
        yield
        return
    import fcntl

    with open(path + ".open-lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _open_storage(url: str, heartbeat_interval: int, stale_after: int, on_stale: Callable) -> Any:
    optuna = _quiet_optuna()
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # several processes on one SQLite file wait for each other's writes instead of failing at once
        engine_kwargs["connect_args"] = {"timeout": 120}
    import sqlalchemy.exc

    for attempt in range(5):
        try:
            with _sqlite_creation_lock(url):
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                  heartbeat_interval=heartbeat_interval, grace_period=stale_after,
                                                  heartbeat_stale_trial_callback=on_stale)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as e:
            # workers started together on a new database race to create its tables: the loser finds them made
            # at its next try
            racing = isinstance(e, sqlalchemy.exc.IntegrityError) or "already exists" in str(e) or \
                "locked" in str(e)
            if attempt == 4 or not racing:
                raise TuneError(f"storage {url}: {(str(e).strip().splitlines() or ['?'])[0]}") from None
            time.sleep(0.5 * (attempt + 1))
        except _storage_errors() as e:  # a bad URL, a database that cannot be reached, a driver not installed
            msg = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
            raise TuneError(f"storage {url}: {msg}") from None
    raise AssertionError("unreachable")


def _check_study_dir(study_dir: Path, study_name: str) -> bool:
    """A study dir belongs to one study: its trial-N folders would otherwise be reused by another's trial N.
    Creates the folder (the default SQLite file lives there); returns whether it was created."""
    if study_dir.exists() and not study_dir.is_dir():
        raise TuneError(f"--study-dir {study_dir} is a file")
    marker = study_dir / "study.json"
    if marker.exists():
        try:
            owner = json.loads(marker.read_text())
        except (OSError, ValueError):
            raise TuneError(f"{marker}: unreadable; it should name this folder's study") from None
        if owner.get("study_name") != study_name:
            raise TuneError(f"--study-dir {study_dir} holds study {owner.get('study_name')!r} ({marker}); give "
                            f"study {study_name!r} a folder of its own")
    created = not study_dir.exists()
    study_dir.mkdir(parents=True, exist_ok=True)
    return created


def _trial_dir(study_dir: Path, number: int, continues: int | None, out: TextIO) -> Path:
    """trial-N; a continued trial takes over the earlier trial's folder (its checkpoints), a leftover folder of a
    deleted study is moved aside, never reused or removed."""
    path = study_dir / f"trial-{number}"
    if continues is not None:
        old = study_dir / f"trial-{continues}"
        if old.is_dir() and not path.exists():
            os.replace(old, path)
            print(f"tune: trial {number} continues trial {continues} (its folder moved to {path})", file=out,
                  flush=True)
            return path
    if path.exists():
        k = 1
        while path.with_name(f"{path.name}.old-{k}").exists():
            k += 1
        os.replace(path, path.with_name(f"{path.name}.old-{k}"))
        print(f"tune: {path} was left by an earlier study: moved to {path.name}.old-{k}", file=out, flush=True)
    return path


def _continued_numbers(study: Any) -> set[int]:
    return {int(t.user_attrs["continues"]) for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get("continues") is not None}


def _requeue_interrupted(study: Any, out: TextIO) -> None:
    """Enqueue (once) the parameters of trials stopped by Ctrl-C/SIGTERM, to continue from their checkpoints."""
    from optuna.trial import TrialState

    done = _continued_numbers(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.user_attrs.get("interrupted") and t.number not in done:
            study.enqueue_trial(t.params, user_attrs={"continues": t.number})
            print(f"tune: trial {t.number} was interrupted; it will continue with the same parameters", file=out,
                  flush=True)


def _budget_batches(space: SearchSpace) -> int | None:
    """The batch a trial ends at (its budget's --max-batches), if the budget gives one."""
    try:
        return int(space.budget["--max-batches"])
    except (KeyError, ValueError):
        return None


def _describe(params: dict[str, Any]) -> str:
    return " ".join(f"--{k} {format_value(v)}" for k, v in params.items())


def read_trials_table(path: str | os.PathLike, space: SearchSpace) -> list[dict[str, Any]]:
    """The rows of a ``trials.tsv`` that ``anyphone tune`` wrote, checked against ``space``: dicts with number,
    state, value, batches, params, note. Raises TuneError (one line naming the file and row) otherwise."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TuneError(f"{path}: cannot read the trials table ({e.__class__.__name__})") from None
    names = [p.name for p in space.space]
    expected = ["trial", "state", "dev_per", "batches", *names, "note"]
    if not lines or lines[0].split("\t") != expected:
        raise TuneError(f"{path}: not a trials table of this search space: expected the columns "
                        f"{' '.join(expected)}")
    rows = []
    for i, line in enumerate(lines[1:], start=2):
        cells = line.split("\t")
        if len(cells) != len(expected):
            raise TuneError(f"{path}:{i}: expected {len(expected)} tab-separated columns, got {len(cells)}")
        row = dict(zip(expected, cells))
        try:
            number = int(row["trial"])
            if number != len(rows):
                raise ValueError(f"trial {number} where trial {len(rows)} was expected")
            if row["state"] not in ("COMPLETE", "PRUNED", "FAIL"):
                raise ValueError(f"state {row['state']!r} (COMPLETE, PRUNED or FAIL)")
            value = float(row["dev_per"]) if row["dev_per"] else None
            if row["state"] != "FAIL" and (value is None or not math.isfinite(value)):
                raise ValueError(f"a {row['state']} trial without a dev PER")
            batches = int(row["batches"]) if row["batches"] else None
            params = {n: space.param(n).parse(row[n]) for n in names}
        except ValueError as e:
            raise TuneError(f"{path}:{i}: {e}") from None
        rows.append({"number": number, "state": row["state"], "value": value, "batches": batches,
                     "params": params, "note": row["note"]})
    return rows


def _add_table_trials(study: Any, space: SearchSpace, rows: list[dict[str, Any]], source: str) -> None:
    """Add a table's trials to an empty study, keeping their numbers. The table holds each trial's last dev PER
    only, so that is its one intermediate value (at its last batch): the pruner sees less than it did."""
    import optuna
    from optuna.trial import TrialState

    dists = {p.name: p.distribution() for p in space.space}
    for r in rows:
        attrs: dict[str, Any] = {"imported_from": source}
        if r["batches"] is not None:
            attrs["batches"] = r["batches"]
        note = r["note"]
        m = re.match(r"continues trial (\d+);? ?", note)
        if m:
            attrs["continues"] = int(m.group(1))
            note = note[m.end():]
        if note == "interrupted":
            attrs["interrupted"] = True
        elif note:
            attrs["error"] = note
        state = getattr(TrialState, r["state"])
        inter = {r["batches"]: r["value"]} if r["value"] is not None and r["batches"] is not None else None
        study.add_trial(optuna.trial.create_trial(
            params=r["params"], distributions=dists, state=state, user_attrs=attrs, intermediate_values=inter,
            value=r["value"] if state != TrialState.FAIL else None))


def _open_study(space: SearchSpace, study_name: str, study_dir: Path, storage: str, seed: int | None,
                heartbeat_interval: int, stale_after: int, out: TextIO,
                imported: tuple[str, list[dict[str, Any]]] | None = None) -> Any:
    """Create or load the study; check it was made from this search space; queue start points and the trials
    that were interrupted."""
    optuna = _quiet_optuna()

    def on_stale(study: Any, frozen: Any) -> None:
        # its process died (no heartbeat): run the same parameters again, resuming its training
        study.enqueue_trial(frozen.params, user_attrs={"continues": frozen.number})
        print(f"tune: trial {frozen.number} stopped sending heartbeats (its process died); it will continue "
              "with the same parameters", file=out, flush=True)

    rdb = _open_storage(storage, heartbeat_interval, stale_after, on_stale)
    pruner = (optuna.pruners.MedianPruner(**space.pruner) if space.pruner is not None
              else optuna.pruners.NopPruner())
    try:
        study = optuna.create_study(study_name=study_name, storage=rdb, load_if_exists=True, direction="minimize",
                                    sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)
    except _storage_errors() as e:
        raise TuneError(f"storage {storage}: cannot open study {study_name!r}: "
                        f"{(str(e).splitlines() or [e.__class__.__name__])[0]}") from None
    recorded = study.user_attrs.get("search_space")
    if recorded is None:
        study.set_user_attr("search_space", space.raw)
    elif recorded != space.raw:
        changed = [k for k in _STUDY_KEYS if recorded.get(k) != space.raw.get(k)]
        raise TuneError(f"{space.path}: study {study_name!r} was made with a different search space (differs in "
                        f"{', '.join(changed)}); its trials would not compare: use another --study-name")
    if imported is not None:
        source, rows = imported
        if study.get_trials(deepcopy=False):
            raise TuneError(f"--import-table {source}: study {study_name!r} already holds trials; the table "
                            "can only seed an empty study (drop --import-table to continue it)")
        _add_table_trials(study, space, rows, source)
        print(f"tune: added the {len(rows)} trials of {source} to study {study_name!r} (their last dev "
              "PER only: the pruner has fewer intermediate values for them)", file=out, flush=True)
    for params in space.start:
        study.enqueue_trial(params, skip_if_exists=True)
    _requeue_interrupted(study, out)
    return study


def run_study(space: SearchSpace, *, study_name: str, study_dir: str | os.PathLike, storage: str | None = None,
              n_trials: int = 20, n_jobs: int = 1, seed: int | None = None, runner: TrialRunner | None = None,
              heartbeat_interval: int = 30, stale_after: int = 120, max_failures: int = 3,
              out: TextIO | None = None, import_table: str | os.PathLike | None = None) -> Any:
    """Run (or continue) a study until it holds ``n_trials`` complete or pruned trials; returns the Optuna study.

    ``import_table`` seeds a new, empty study with the trials of a ``trials.tsv`` this module wrote (a study whose
    database was lost), keeping their numbers. ``runner`` runs one trial (default: :func:`train_runner` on the
    recipe's train.py). Raises TuneError for a storage or study-dir problem, a study made from a different
    search-space file, an unreadable table, or ``max_failures`` failed trials in a row; TuneInterrupted after
    Ctrl-C/SIGTERM (the study is saved; run again to continue).
    """
    out = out or sys.stdout
    optuna = _quiet_optuna()
    from optuna.trial import TrialState

    study_dir = Path(study_dir)
    storage = storage or default_storage(study_dir)
    imported = (str(import_table), read_trials_table(import_table, space)) if import_table is not None else None
    created = _check_study_dir(study_dir, study_name)
    try:
        study = _open_study(space, study_name, study_dir, storage, seed, heartbeat_interval, stale_after, out,
                            imported)
    except TuneError:
        if created:  # a refused start leaves nothing behind
            with contextlib.suppress(OSError):
                study_dir.rmdir()
        raise
    if not (study_dir / "study.json").exists():
        atomic_write_text(study_dir / "study.json",
                          json.dumps({"study_name": study_name, "storage": storage}, indent=1) + "\n")

    def n_done() -> int:
        return len(study.get_trials(deepcopy=False, states=tuple(getattr(TrialState, s) for s in _DONE_STATES)))

    stop = threading.Event()
    lock = threading.Lock()
    failures = {"in_a_row": 0, "last": ""}

    last_batch = _budget_batches(space)

    def objective(trial: Any) -> float:
        params = {p.name: p.suggest(trial) for p in space.space}
        continues = trial.user_attrs.get("continues")
        exp_dir = _trial_dir(study_dir, trial.number, continues, out)
        trial.set_user_attr("exp_dir", str(exp_dir))
        argv = space.trial_argv(params, exp_dir)
        reported: set[int] = set()

        def report(batch: int, per: float) -> bool:
            if batch not in reported:  # a resumed training validates some batches again
                reported.add(batch)
                trial.report(per, batch)
                trial.set_user_attr("batches", batch)
            # a trial that has done its whole budget is scored, not pruned: there is nothing left to save
            return (last_batch is None or batch < last_batch) and trial.should_prune()

        print(f"tune: trial {trial.number} starts: {_describe(params)} -> {exp_dir}", file=out, flush=True)
        run = TrialRun(trial.number, {space.param(k).flag: v for k, v in params.items()}, argv, exp_dir, report,
                       stop, continues)
        try:
            outcome = runner(run)
        except (TrialInterrupted, KeyboardInterrupt) as e:
            trial.set_user_attr("interrupted", True)
            stop.set()
            with contextlib.suppress(RuntimeError):
                study.stop()
            if isinstance(e, KeyboardInterrupt):
                raise
            raise TrialFailed(f"interrupted: {e}") from None
        except TrialFailed as e:
            trial.set_user_attr("error", str(e))
            raise
        trial.set_user_attr("batches", int(outcome.batches))
        if outcome.pruned:
            raise optuna.TrialPruned(f"dev PER {outcome.per:.2f}% at batch {outcome.batches}")
        if not math.isfinite(outcome.per):
            raise TrialFailed(f"dev PER is {outcome.per}")
        return float(outcome.per)

    def after_trial(study: Any, frozen: Any) -> None:
        state = frozen.state.name
        batches = frozen.user_attrs.get("batches", "?")
        if state == "COMPLETE":
            msg = f"dev PER {frozen.value:.2f}% at batch {batches}"
        elif state == "PRUNED":
            msg = f"pruned at batch {batches} (dev PER {frozen.value:.2f}%)" if frozen.value is not None \
                else "pruned"
        else:
            msg = "interrupted" if frozen.user_attrs.get("interrupted") else \
                f"failed: {frozen.user_attrs.get('error', 'see its tune-output.txt')}"
        print(f"tune: trial {frozen.number} {msg}", file=out, flush=True)
        with lock:
            if state == "FAIL" and not frozen.user_attrs.get("interrupted"):
                failures["in_a_row"] += 1
                failures["last"] = f"trial {frozen.number}: {frozen.user_attrs.get('error', 'failed')}"
            elif state in _DONE_STATES:
                failures["in_a_row"] = 0
            if failures["in_a_row"] >= max_failures or n_done() >= n_trials or stop.is_set():
                study.stop()

    done = n_done()
    if done >= n_trials:
        print(f"tune: study {study_name!r} has {done} finished trials" +
              (f" (--n-trials {n_trials}: nothing to run)" if n_trials else ""), file=out)
        return study
    runner = runner or train_runner(space.train_py())
    print(f"tune: study {study_name!r} in {storage}: {done} finished trials, running until {n_trials}", file=out,
          flush=True)

    previous: dict[int, Any] = {}

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():  # a second Ctrl-C: stop waiting for the trial to save its checkpoint
            raise KeyboardInterrupt
        print(f"tune: {signal.Signals(signum).name}: stopping the running trials (they save a checkpoint); "
              "again to stop at once", file=out, flush=True)
        stop.set()
        with contextlib.suppress(RuntimeError):
            study.stop()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        study.optimize(objective, n_jobs=n_jobs, callbacks=[after_trial], catch=(TrialFailed,),
                       gc_after_trial=False)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop.is_set():
        raise TuneInterrupted(f"study {study_name!r} interrupted with {n_done()} finished trials; run the same "
                              "command to continue")
    if failures["in_a_row"] >= max_failures:
        raise TuneError(f"{failures['in_a_row']} trials in a row failed; the last, {failures['last']}")
    return study


# ----------------------------------------------------------------------------------------------------------
# results


def _trial_rows(study: Any, space: SearchSpace) -> tuple[list[str], list[list[str]]]:
    names = [p.name for p in space.space]
    header = ["trial", "state", "dev_per", "batches", *names, "note"]
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "WAITING":
            continue
        note = ""
        if t.user_attrs.get("interrupted"):
            note = "interrupted"
        elif t.user_attrs.get("error"):
            note = str(t.user_attrs["error"]).replace("\t", " ")
        if t.user_attrs.get("continues") is not None:
            note = (f"continues trial {t.user_attrs['continues']}; " + note).rstrip("; ")
        rows.append([str(t.number), t.state.name, "" if t.value is None else f"{t.value:.2f}",
                     str(t.user_attrs.get("batches", "")),
                     *[format_value(t.params[n]) if n in t.params else "" for n in names], note])
    return header, rows


def _save_plot(ax: Any, path: Path) -> Path:
    fig = ax.figure
    fig.set_size_inches(7, 4.5)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_report(study: Any, space: SearchSpace, study_dir: str | os.PathLike,
                 out: TextIO | None = None) -> dict[str, Any]:
    """Print the trials table and the best trial as a train.py command; write trials.tsv and the plots.

    Returns {"table": Path, "plots": [Path], "best": FrozenTrial | None, "command": str | None}.
    """
    out = out or sys.stdout
    optuna = _quiet_optuna()
    import matplotlib

    matplotlib.use("Agg")
    study_dir = Path(study_dir)
    header, rows = _trial_rows(study, space)
    table = study_dir / "trials.tsv"
    atomic_write_text(table, "".join("\t".join(r) + "\n" for r in [header, *rows]))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)
    print(f"tune: table written to {table}", file=out)

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    plots: list[Path] = []
    from optuna.visualization import matplotlib as vis

    if complete:
        plots.append(_save_plot(vis.plot_optimization_history(study), study_dir / "optimization_history.png"))
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        plots.append(_save_plot(vis.plot_intermediate_values(study), study_dir / "intermediate_values.png"))
    varied = [p.name for p in space.space if len({repr(t.params.get(p.name)) for t in complete}) > 1]
    if len(complete) >= 2 and varied:
        try:
            # PED-ANOVA: needs no scikit-learn (fANOVA does, in some Optuna versions)
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            plots.append(_save_plot(vis.plot_param_importances(study, evaluator=evaluator),
                                    study_dir / "param_importances.png"))
        except (ValueError, RuntimeError) as e:
            print(f"tune: no parameter importance plot: {e}", file=out)
    else:
        print(f"tune: no parameter importance plot yet: it needs 2 complete trials with different parameters "
              f"(have {len(complete)})", file=out)
    if plots:
        print(f"tune: plots: {', '.join(str(p) for p in plots)}", file=out)

    best = command = None
    if complete:
        best = study.best_trial
        recipe_dir = Path(space.recipe).parent if space.recipe.endswith(".py") else Path(space.recipe)
        script = Path(space.recipe) if space.recipe.endswith(".py") else recipe_dir / "train.py"
        argv = space.trial_argv(best.params, recipe_dir / f"exp-tuned-{study.study_name}")
        command = shlex.join([f"./{script}" if not script.is_absolute() else str(script), *argv])
        print(f"tune: best: trial {best.number}, dev PER {best.value:.2f}% at batch "
              f"{best.user_attrs.get('batches', '?')} (its model: {best.user_attrs.get('exp_dir', '?')}); "
              f"to train it again:", file=out)
        print(command, file=out)
    else:
        print("tune: no complete trial yet", file=out)
    return {"table": table, "plots": plots, "best": best, "command": command}


# ----------------------------------------------------------------------------------------------------------
# command line


def add_tune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", help="Search-space file (JSON or YAML): recipe, base flags, space, budget, "
                   "report_every (see anyphone.tuning).")
    p.add_argument("--study-name", default=None, help="Study name (default: the file's name without extension). "
                   "The same name continues the study.")
    p.add_argument("--study-dir", default=None, help="Trial folders, study.db, trials.tsv and plots "
                   "(default: <recipe>/tune-<study-name>).")
    p.add_argument("--storage", default=None, help="Optuna storage URL shared by all workers (default "
                   "sqlite:///<study-dir>/study.db; e.g. postgresql://user@host/db for several machines).")
    p.add_argument("--n-trials", type=int, default=20, help="Finished (complete or pruned) trials the study "
                   "should hold; 0 only prints the table and draws the plots.")
    p.add_argument("--n-jobs", type=int, default=1, help="Trials run at once by this process (threads, each "
                   "running a train.py); more processes on one --storage add workers too.")
    p.add_argument("--seed", type=int, default=None, help="Seed of the TPE sampler (leave unset when several "
                   "workers share the study, or they propose the same parameters).")
    p.add_argument("--stale-after", type=int, default=120, help="Seconds without a heartbeat after which a "
                   "running trial counts as dead; it is then continued with the same parameters.")
    p.add_argument("--max-failures", type=int, default=3, help="Stop after this many failed trials in a row.")
    p.add_argument("--import-table", default=None, help="Seed a new study with the trials of a trials.tsv "
                   "that tune wrote (when its database was lost), then go on as usual.")


def tune_main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``anyphone tune``: check the space (and its flags against train.py), run the study, report."""
    out = out or sys.stdout
    if args.n_trials < 0 or args.n_jobs < 1 or args.stale_after < 2 or args.max_failures < 1:
        raise TuneError("--n-trials must be >= 0, --n-jobs and --max-failures >= 1, --stale-after >= 2")
    space = load_search_space(args.space)
    study_name = args.study_name or space.path.stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", study_name):
        raise TuneError(f"--study-name {study_name!r}: use letters, digits, '.', '_' and '-'")
    recipe_dir = Path(space.recipe).parent if space.recipe.endswith(".py") else Path(space.recipe)
    study_dir = Path(args.study_dir) if args.study_dir else recipe_dir / f"tune-{study_name}"
    if args.n_trials > 0:
        check_flags(space, recipe_flags(space.train_py()))
    # heartbeat at most every 30 s, and several times within --stale-after
    heartbeat = max(1, min(30, args.stale_after // 4))
    study = run_study(space, study_name=study_name, study_dir=study_dir, storage=args.storage,
                      n_trials=args.n_trials, n_jobs=args.n_jobs, seed=args.seed, heartbeat_interval=heartbeat,
                      stale_after=args.stale_after, max_failures=args.max_failures, out=out,
                      import_table=args.import_table)
    write_report(study, space, study_dir, out)
    return 0
