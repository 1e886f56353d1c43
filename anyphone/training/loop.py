"""The training loop shared by every recipe: explicit, top to bottom, no trainer framework.

A recipe supplies a *task*, its model family (`anyphone.families`): how to build the model from the arguments and
how to turn a batch into a loss. Everything else lives here once: DDP (mp.spawn or torchrun; NCCL on GPU, gloo on CPU),
fp16/bf16 autocast, gradient accumulation, ScaledAdam + Eden, the running model average, atomic checkpoints
every --save-every-n batches, resume (explicit --start-batch or the newest checkpoint in --exp-dir), skipping
non-finite losses, validation, TensorBoard/wandb/metrics.jsonl and a PNG of the curves.

Faults a long run meets, and what it does about them:

- One run per exp dir: the run takes ``EXP_DIR/.lock`` (its host and pid; rank 0, or the process that spawns
  the --world-size workers) and a second run on the same exp dir is refused in one line naming the holder. A
  lock left by a dead process on this host is taken over with a note; the lock is an ``O_EXCL`` file, so it
  also holds on storage that several nodes share.
- A refused start changes nothing: config.json and tokens.txt are written (atomically) only once the resumed
  checkpoint has loaded and the data has opened.
- Checkpoints carry a checksum of their contents; a damaged newest one is named and skipped for the one
  before.
  Temporary files of saves that were killed are removed at the next start. A full disk stops the run with one
  line saying what could not be written and which checkpoint is intact.
- SIGTERM or SIGUSR1 (a batch system's notice before it ends a job): every rank finishes its current step,
  they agree to stop at the same one, rank 0 saves a checkpoint, and the run exits with status 3
  (EXIT_CHECKPOINTED_ON_SIGNAL), so a job script can requeue itself; running the same command continues.
  Exit status: 0 finished (budget or epochs done), 1 an error, 3 checkpointed on a signal.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from anyphone.data.config import DataConfig
from anyphone.data.shar import DataError
from anyphone.fileio import DirLock, LockedError, atomic_write_bytes, is_disk_full
from anyphone.training.config import TrainingConfig
from anyphone.training.dist import (
    DistInfo,
    agree_on_batches,
    all_gather_objects,
    all_ranks_true,
    all_reduce_max,
    all_reduce_sum,
    any_rank,
    barrier,
    cleanup_distributed,
    init_distributed,
    launched_by_torchrun,
)
from anyphone.training.monitor import Monitor, setup_logging
from anyphone.utils import str2bool

if TYPE_CHECKING:
    from typing_extensions import Self

    from anyphone.data.module import PhoneDataModule

log = logging.getLogger("anyphone.train")

# Exit status of a run that a stop signal (SIGTERM, SIGUSR1) ended after saving a checkpoint: a job script can
# requeue on it (0: finished, 1: an error, 3: checkpointed on a signal: run the same command again to
# continue).
EXIT_CHECKPOINTED_ON_SIGNAL = 3
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGUSR1") if hasattr(signal, n))


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    T = TrainingConfig()  # the defaults live there
    g = parser.add_argument_group(
        "training (icefall names)",
        "One run per --exp-dir (EXP_DIR/.lock). SIGTERM or SIGUSR1 make the run finish its step, save a "
        "checkpoint and exit with status 3, so a job script can requeue; the same command then continues. "
        "Exit status: 0 finished, 1 an error, 3 checkpointed on a signal.")
    g.add_argument("--world-size", type=int, default=T.world_size,
                   help="Number of processes (GPUs, or CPU workers) for DDP.")
    g.add_argument("--master-port", type=int, default=T.master_port,
                   help="Rendezvous port for --world-size > 1.")
    g.add_argument("--exp-dir", type=Path, default=T.exp_dir, help="Checkpoints, logs and curves go here.")
    g.add_argument("--lang-dir", type=Path, default=T.lang_dir, help="Holds tokens.txt.")
    g.add_argument("--num-epochs", type=int, default=T.num_epochs)
    g.add_argument("--start-epoch", type=int, default=T.start_epoch,
                   help="Resume from epoch-(N-1).pt when N > 1.")
    g.add_argument(
        "--start-batch",
        type=int,
        default=T.start_batch,
        help="Resume from checkpoint-N.pt in --exp-dir. With 0, the newest checkpoint-*.pt is used if "
        "--auto-resume is true.",
    )
    g.add_argument("--auto-resume", type=str2bool, default=T.auto_resume,
                   help="Resume from the newest checkpoint.")
    g.add_argument("--init-from", type=Path, default=T.init_from,
                   help="Fine-tune: initialise the weights from this checkpoint or ZIPA .pth (optimizer not loaded).")
    g.add_argument("--base-lr", type=float, default=T.base_lr)
    g.add_argument("--lr-batches", type=float, default=T.lr_batches,
                   help="Eden: batches over which lr starts to decay.")
    g.add_argument("--lr-epochs", type=float, default=T.lr_epochs,
                   help="Eden: epochs over which lr starts to decay.")
    g.add_argument("--warmup-batches", type=float, default=T.warmup_batches,
                   help="Eden's linear warm-up from 0.5x.")
    g.add_argument("--ref-duration", type=float, default=T.ref_duration,
                   help="Seconds of audio in a reference batch; schedules count batches of this size.")
    g.add_argument("--use-fp16", type=str2bool, default=T.use_fp16,
                   help="float16 autocast with a grad scaler.")
    g.add_argument("--use-bf16", type=str2bool, default=T.use_bf16,
                   help="bfloat16 autocast (no scaler needed).")
    g.add_argument("--accum-grad", type=int, default=T.accum_grad, help="Batches per optimizer step.")
    g.add_argument("--average-period", type=int, default=T.average_period,
                   help="Update the averaged model every N batches.")
    g.add_argument("--save-every-n", type=int, default=T.save_every_n,
                   help="Save checkpoint-N.pt every N batches.")
    g.add_argument("--keep-last-k", type=int, default=T.keep_last_k,
                   help="Keep this many checkpoint-*.pt files.")
    g.add_argument("--valid-interval", type=int, default=T.valid_interval, help="Validate every N batches.")
    g.add_argument("--log-interval", type=int, default=T.log_interval)
    g.add_argument("--valid-every-epoch", type=str2bool, default=T.valid_every_epoch,
                   help="Also validate at each epoch end.")
    g.add_argument("--keep-best", type=str2bool, default=T.keep_best,
                   help="Save the weights with the best dev PER so far as best-valid.pt.")
    g.add_argument("--max-batches", type=int, default=T.max_batches,
                   help="Stop after this many batches (0: no limit).")
    g.add_argument("--max-minutes", type=float, default=T.max_minutes,
                   help="Stop after this many minutes of training, counted over resumes (0: no limit).")
    g.add_argument("--cooldown-fraction", type=float, default=T.cooldown_fraction,
                   help="Lower the learning rate linearly to 0 over this last fraction of the budget set by "
                   "--max-batches or --max-minutes (warm-up, stable, decay; for fixed-length runs). 0: off.")
    g.add_argument("--max-bad-batches", type=int, default=T.max_bad_batches,
                   help="Stop when this many batches in a row give a non-finite loss.")
    g.add_argument("--tensorboard", type=str2bool, default=T.tensorboard)
    g.add_argument("--wandb", type=str2bool, default=T.wandb,
                   help="Log to wandb (offline unless configured).")
    g.add_argument("--wandb-project", type=str, default=T.wandb_project)
    g.add_argument("--scan-pessimistic-batches", type=str2bool, default=T.scan_pessimistic_batches,
                   help="On GPU, try the largest batches first so an out-of-memory shows up at once.")
    g.add_argument("--num-threads", type=int, default=T.num_threads,
                   help="torch CPU threads per process (0: torch default).")
    g.add_argument("--device", type=str, default=T.device, help="auto, cpu or cuda.")


# ----------------------------------------------------------------------------------------------------------
# helpers


def tune_cpu_allocator() -> None:
    """Back PyTorch's large CPU tensors with transparent huge pages.

    Training allocates its activations afresh every step; with 4 KiB pages the kernel faults in and zeroes
    each one, and on the 2-core demo machine that took most of the step (the tiny CR-CTC model went from
    13 to 20 s of audio per second with huge pages; memory stays bounded, unlike keeping freed memory in
    glibc's heap, which fragmented past 20 GiB). PyTorch reads THP_MEM_ALLOC_ENABLE at its first large
    allocation, so this must run before the model is built. A user's own setting wins.
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def fix_random_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def seed_step_rngs(seed: int, rank: int, batch_idx_train: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs (CPU and every CUDA device) for one training step.

    Dropout, layer skipping, the Balancer/Whiten coin flips and CR-CTC's SpecAugment views draw from them.
    Seeding from (--seed, rank, batch count) before each step makes a resumed run draw exactly what an
    uninterrupted one draws, on any device and whatever ran in between, with no RNG state to carry over.
    """
    from anyphone.data.module import derive_seed

    fix_random_seed(derive_seed("train-step", seed, rank, batch_idx_train))


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DDP) else model


def adjusted_batch_count(batch_idx_train: int, cfg: TrainingConfig) -> float:
    """Zipformer's schedules (dropout, skip rates, balancer limits) count batches of --ref-duration seconds.
    (``cfg``: a TrainingConfig, or anything with its max_duration, world_size, accum_grad and ref_duration.)"""
    return batch_idx_train * (cfg.max_duration * cfg.world_size * cfg.accum_grad) / cfg.ref_duration


def budget_progress(batch_idx_train: int, train_minutes: float, cfg: TrainingConfig) -> float | None:
    """How much of the run's fixed budget (--max-batches, --max-minutes; the nearer limit) is spent, in [0, 1];
    None when neither is set."""
    parts = []
    if cfg.max_batches > 0:
        parts.append(batch_idx_train / cfg.max_batches)
    if cfg.max_minutes > 0:
        parts.append(train_minutes / cfg.max_minutes)
    return min(1.0, max(parts)) if parts else None


def budget_eta(cfg: TrainingConfig, batch_idx_train: int, window_seconds: float, window_batches: int,
               work: Callable[[int, int], float] | None = None) -> str:
    """``", batch N of M (P%), about X min left"`` for a --max-batches budget, from the last logging window's
    pace; empty without that budget. ``work(first, last)`` is the relative cost of those batches (CR-CTC's with
    two views count twice), so the estimate holds across a change of phase; a window of under 10 batches gives no
    estimate. Only the message uses the clock: the work done does not depend on it."""
    if cfg.max_batches <= 0 or window_batches <= 0:
        return ""
    done = f", batch {batch_idx_train} of {cfg.max_batches} ({100 * batch_idx_train / cfg.max_batches:.0f}%)"
    if window_batches < 10:
        # the first log of an epoch can cover a few batches and the dataloader's start (it said 83 min for 29)
        return done
    work = work or (lambda first, last: float(max(last - first + 1, 0)))
    window = work(batch_idx_train - window_batches + 1, batch_idx_train)
    to_do = work(batch_idx_train + 1, cfg.max_batches)
    left = to_do * window_seconds / max(window, 1e-9) / 60
    return f"{done}, about {left:.0f} min left"


def cooldown_factor(progress: float | None, fraction: float) -> float:
    """The learning-rate multiplier of the end-of-budget decay: 1 until the last ``fraction`` of the budget,
    then linear down to 0 at its end."""
    if progress is None or fraction <= 0:
        return 1.0
    return min(1.0, max(0.0, (1.0 - progress) / fraction))


def set_batch_count(model: nn.Module, count: float) -> None:
    for m in unwrap(model).modules():
        if hasattr(m, "batch_count"):
            m.batch_count = count


def adaptive_module_state(model: nn.Module) -> dict[str, float]:
    """Plain attributes that training adapts outside the state_dict (Whiten's current probability), so a
    resumed run continues exactly; kept out of the state_dict so ZIPA checkpoints still load strictly."""
    return {name: float(m.prob) for name, m in unwrap(model).named_modules()
            if hasattr(m, "min_prob") and isinstance(getattr(m, "prob", None), float)}


def load_adaptive_module_state(model: nn.Module, state: dict[str, float]) -> None:
    modules = dict(unwrap(model).named_modules())
    for name, prob in state.items():
        if name in modules:
            modules[name].prob = float(prob)


def batch_seconds(batch: dict) -> float:
    if "audio_lens" in batch:
        return float(batch["audio_lens"].sum()) / 16000.0
    return float(batch["feature_lens"].sum()) / 100.0


_FBANK_ON_DEVICE: dict = {}


def move_batch(batch: dict, device: torch.device) -> dict:
    """Move tensors to `device`; with --fbank-on-device the batch holds audio and fbank is computed here."""
    batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
    if "audio" in batch and "features" not in batch:
        from anyphone.data.fbank import FbankModule

        if device not in _FBANK_ON_DEVICE:
            _FBANK_ON_DEVICE[device] = FbankModule().to(device)
        batch["features"], batch["feature_lens"] = _FBANK_ON_DEVICE[device](batch["audio"], batch["audio_lens"])
    return batch


def autocast_context(cfg: TrainingConfig, device: torch.device):
    if cfg.use_fp16 or cfg.use_bf16:
        dtype = torch.float16 if cfg.use_fp16 else torch.bfloat16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return nullcontext()


def resolve_device(cfg: TrainingConfig, info: DistInfo) -> torch.device:
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", info.local_rank)


# ----------------------------------------------------------------------------------------------------------
# the loop


class TrainState:
    """Counters that checkpoints carry (plain ints/floats so torch.load(weights_only=True) can read them)."""

    def __init__(self) -> None:
        self.epoch = 1
        self.batch_idx_train = 0  # optimizer-independent count of batches seen, over all epochs
        self.bad_in_a_row = 0
        self.bad_total = 0
        self.best_valid_loss = math.inf
        self.best_valid_err = math.inf
        self.audio_seconds = 0.0
        self.train_minutes = 0.0  # wall time spent training, over all resumes (what --max-minutes counts)

    def to_dict(self) -> dict:
        # stopped_on_signal (set at the very end of a run) says how this process ended, not where training is
        return {k: v for k, v in self.__dict__.items() if k != "stopped_on_signal"}

    def load(self, d: dict) -> None:
        for k, v in d.items():
            if hasattr(self, k):
                setattr(self, k, v)


class StopSignals:
    """Turns SIGTERM / SIGUSR1 into a request to stop after the current step (a context manager).

    The handler only records the signal (and calls ``on_signal``, which the spawning parent uses to pass it
    on); the loop reads ``received`` at the end of every step. Handlers can only be installed from the main
    thread (elsewhere this records nothing); the previous ones are restored on exit.
    """

    def __init__(self, on_signal: Callable[[int], None] | None = None) -> None:
        self.received: int | None = None
        self.stopping = False  # set by the loop once the ranks agreed to stop on a signal
        self._on_signal = on_signal
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum
        if self._on_signal is not None:
            self._on_signal(signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a signal on another rank"

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()


class _WorkerIgnoresStopSignals:
    """A dataloader ``worker_init_fn`` wrapper: workers ignore SIGTERM / SIGUSR1. A batch system signals every
    process of the job, and torch's workers die of SIGTERM, which took the run down with a traceback instead
    of letting it save; the main process handles the signal, and the workers end with it as usual."""

    def __init__(self, inner: Callable[[int], None] | None) -> None:
        self.inner = inner

    def __call__(self, worker_id: int) -> None:
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        if self.inner is not None:
            self.inner(worker_id)


_HELD_EXP_DIRS: dict[str, DirLock] = {}


@contextlib.contextmanager
def hold_exp_dir(exp_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive lock of an exp dir (``EXP_DIR/.lock``, see :class:`anyphone.fileio.DirLock`).

    Re-entrant within one process (``anyphone finetune`` holds it around data preparation and training).
    Raises LockedError, one line naming the holder's host and pid.
    """
    key = os.path.realpath(exp_dir)
    if key in _HELD_EXP_DIRS:
        yield
        return
    lock = DirLock(exp_dir, name=".lock", what="this exp dir").acquire()
    _HELD_EXP_DIRS[key] = lock
    try:
        yield
    finally:
        _HELD_EXP_DIRS.pop(key, None)
        lock.release()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _lock_exp_dir(cfg: TrainingConfig, info: DistInfo, device: torch.device,
                  stack: contextlib.ExitStack, parent_holds_lock: bool) -> list[str]:
    """Rank 0 takes the exp dir's lock for the whole run (unless the spawning parent holds it), before
    anything is written there. Every rank learns the outcome, so under torchrun the others stop too rather
    than wait for rank 0. Returns the lock's notes (a stale lock taken over), to be logged once the log is
    open."""
    error, notes = None, _Collect()
    if info.is_main and not parent_holds_lock:
        fileio_log = logging.getLogger("anyphone.fileio")
        propagate = fileio_log.propagate
        fileio_log.addHandler(notes)
        fileio_log.propagate = False  # the log of this run is not open yet: keep the note for it
        try:
            stack.enter_context(hold_exp_dir(cfg.exp_dir))
        except LockedError as e:
            error = str(e)
        finally:
            fileio_log.removeHandler(notes)
            fileio_log.propagate = propagate
    if not all_ranks_true(error is None, device):
        raise SystemExit(error or f"rank {info.rank}: stopping, rank 0 could not lock {cfg.exp_dir}")
    return notes.messages


def run(args: argparse.Namespace, task: Any) -> None:
    """Entry point for recipes: spawn --world-size processes, or run under torchrun, or run in-process.

    Exits with EXIT_CHECKPOINTED_ON_SIGNAL (3) when SIGTERM / SIGUSR1 stopped the run after a checkpoint.
    ``args`` (the parsed flags) go to the task as they are; the loop's own knobs are read from them once, here,
    into a :class:`TrainingConfig`.
    """
    cfg = TrainingConfig.from_args(args)
    if launched_by_torchrun():
        _worker(int(os.environ["RANK"]), cfg.world_size, args, task, config=cfg)
    elif cfg.world_size > 1:
        _spawn(args, task, cfg)
    else:
        _worker(0, 1, args, task, config=cfg)


def _spawn(args: argparse.Namespace, task: Any, cfg: TrainingConfig) -> None:
    """--world-size N on one machine. This process holds the exp dir's lock for its workers, passes SIGTERM /
    SIGUSR1 on to them (a batch system may signal only the process it started) and exits as they did."""
    from torch.multiprocessing.spawn import ProcessExitedException

    try:
        with hold_exp_dir(cfg.exp_dir):
            ctx = mp.spawn(_worker, args=(cfg.world_size, args, task, True, cfg), nprocs=cfg.world_size,
                           join=False)

            def forward(signum: int) -> None:
                for p in ctx.processes:
                    if p.is_alive():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(p.pid, signum)

            with StopSignals(on_signal=forward):
                try:
                    # a grace period, so ranks that end on their own (status 3 after a signal) are not killed
                    while not ctx.join(grace_period=120):
                        pass
                except ProcessExitedException as e:
                    if e.exit_code == EXIT_CHECKPOINTED_ON_SIGNAL:
                        raise SystemExit(EXIT_CHECKPOINTED_ON_SIGNAL) from None
                    # the worker printed its own message above; one line here, not a second traceback
                    raise SystemExit(f"training stopped: {e}") from None
    except LockedError as e:
        raise SystemExit(str(e)) from None


def _worker(rank: int, world_size: int, args: argparse.Namespace, task: Any,
            parent_holds_lock: bool = False, config: TrainingConfig | None = None) -> None:
    cfg = config if config is not None else TrainingConfig.from_args(args)
    info = init_distributed(rank, world_size, cfg.master_port)
    args.world_size = info.world_size  # the flags, which the task reads, say what the job is
    cfg = dataclasses.replace(cfg, world_size=info.world_size)
    try:
        state = train(args, task, info, parent_holds_lock=parent_holds_lock, config=cfg)
    finally:
        cleanup_distributed()
    if getattr(state, "stopped_on_signal", None):
        raise SystemExit(EXIT_CHECKPOINTED_ON_SIGNAL)


def train(args: argparse.Namespace, task: Any, info: DistInfo | None = None,
          parent_holds_lock: bool = False, config: TrainingConfig | None = None) -> TrainState:
    """Train in this process (one rank). Holds the exp dir's lock (rank 0, unless ``parent_holds_lock``) and
    handles SIGTERM / SIGUSR1 for the whole run; the returned state has ``stopped_on_signal`` (the signal's
    name) when a signal stopped it after a checkpoint. Errors on bad input are SystemExit with one line.

    ``args``: the parsed flags, which the task reads. The loop reads its own knobs from ``config`` (default:
    ``TrainingConfig.from_args(args)``) and the data module's from ``DataConfig.from_args(args)``."""
    info = info or DistInfo()
    cfg = config if config is not None else TrainingConfig.from_args(args)
    cfg.exp_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        # the lock comes first: a refused run must not write a byte in the exp dir, not even a log line
        notes = _lock_exp_dir(cfg, info, resolve_device(cfg, info), stack, parent_holds_lock)
        setup_logging(cfg.exp_dir, info.rank)
        for note in notes:
            log.warning(note)
        stop_signals = stack.enter_context(StopSignals())
        try:
            state = _train(args, cfg, task, info, stop_signals)
        except DataError as e:  # refused or damaged data, found at start-up or while reading: one line
            raise SystemExit(_one_line(e)) from None
        if stop_signals.stopping:
            state.stopped_on_signal = stop_signals.name
        return state


def _one_line(e: BaseException) -> str:
    """The message of an error, also when a DataLoader worker raised it: torch then re-raises the same type
    with the worker's whole traceback as its message, whose last line is the original one."""
    text = str(e).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def _train(args: argparse.Namespace, cfg: TrainingConfig, task: Any, info: DistInfo,
           stop_signals: StopSignals) -> TrainState:
    from anyphone.data.module import PhoneDataModule, SamplerStateError
    from anyphone.optim import Eden, ScaledAdam
    from anyphone.text.tokenizer import IpaTokenizer
    from anyphone.weights import checkpoint as ckpt

    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    tune_cpu_allocator()
    device = resolve_device(cfg, info)
    if cfg.use_fp16 and cfg.use_bf16:
        raise SystemExit("choose one of --use-fp16 and --use-bf16")
    if cfg.cooldown_fraction > 0 and budget_progress(0, 0.0, cfg) is None:
        raise SystemExit("--cooldown-fraction needs a fixed budget: --max-batches or --max-minutes")
    if not 0.0 <= cfg.cooldown_fraction <= 1.0:
        raise SystemExit(f"--cooldown-fraction {cfg.cooldown_fraction}: expected a fraction in [0, 1]")
    data = DataConfig.from_args(args)
    _check_data_dirs(data)
    log.info("Training %s on %s, world size %d (rank %d, pid %d)", task.name, device, info.world_size,
             info.rank, os.getpid())
    log.info("Arguments: %s", {k: str(v) for k, v in sorted(vars(args).items())})
    if info.is_main:
        # we hold the lock, so no save of this exp dir is running: these are left by killed saves
        removed = ckpt.remove_stale_checkpoint_temporaries(cfg.exp_dir)
        if removed:
            mb = sum(p.stat().st_size if p.exists() else 0 for p in removed) / 2**20
            log.warning("Removed %d temporary file(s) of interrupted saves: %s", len(removed),
                        ", ".join(p.name for p in removed) + (f" ({mb:.0f} MB)" if mb >= 1 else ""))

    fix_random_seed(cfg.seed + info.rank)
    tokenizer = IpaTokenizer.from_dir(cfg.lang_dir)
    model = task.build_model(args, tokenizer)
    num_params = sum(p.numel() for p in model.parameters())
    log.info("Model %s: %s parameters", type(model).__name__, f"{num_params:,}")

    if cfg.init_from is not None:
        _init_weights_from(model, cfg.init_from)

    state = TrainState()
    resume_path = _find_resume_checkpoint(cfg, ckpt)
    model_avg = copy.deepcopy(model).to(torch.float64) if info.is_main else None

    model.to(device)
    # named parameters so the optimizer's warnings can name a tensor whose gradient is not finite
    optimizer = ScaledAdam(
        [(n, p) for n, p in model.named_parameters() if p.requires_grad], lr=cfg.base_lr, clipping_scale=2.0
    )
    scheduler = Eden(optimizer, cfg.lr_batches, cfg.lr_epochs, warmup_batches=cfg.warmup_batches)
    # fp16: start the loss scale at 1 (as icefall does); the default 65536 overflows Zipformer's first steps
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.use_fp16, init_scale=1.0)

    sampler_state = None
    if resume_path is not None:
        log.info("Resuming from %s", resume_path)
        try:
            saved = ckpt.load_checkpoint(
                resume_path, model=model, model_avg=model_avg, optimizer=optimizer, scheduler=scheduler,
                scaler=scaler,
            )
        except ckpt.CheckpointMismatchError as e:  # the flags build another model
            raise SystemExit(f"{e}; resume with the flags it was trained with, or use another --exp-dir "
                             "(or --auto-resume 0)") from None
        except ckpt.CorruptCheckpointError as e:  # only an explicit --start-batch/--start-epoch gets here
            raise SystemExit(f"{e}; resume from another one (--start-batch N), or delete it") from None
        state.load(saved.get("train_state", {}))
        # each rank's own adaptive state where the checkpoint has every rank's (Whiten adapts to its rank's data)
        per_rank = saved.get("module_state_ranks") or []
        load_adaptive_module_state(model, per_rank[info.rank] if info.rank < len(per_rank)
                                   else saved.get("module_state", {}))
        sampler_state = saved.get("sampler")
        log.info("Resumed at epoch %d, batch %d", state.epoch, state.batch_idx_train)
    elif cfg.start_epoch > 1:
        state.epoch = cfg.start_epoch

    train_model: nn.Module = model
    if info.enabled:
        # Zipformer skips layers at random while training, so some parameters get no gradient in a step.
        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                          find_unused_parameters=True)

    datamodule = PhoneDataModule(data, output_downsampling_factor=task.output_downsampling_factor)
    try:
        train_dl = datamodule.train_dataloader(tokenizer, sampler_state_dict=sampler_state)
        dev_dl = datamodule.dev_dataloader(tokenizer) if data.dev_shar else None
    except SamplerStateError as e:  # resumed with another --seed or --world-size
        raise SystemExit(f"{resume_path}: {e}") from None
    except FileNotFoundError as e:  # a shard named in a Shar folder that is gone
        raise SystemExit(str(e)) from None
    for dl in (train_dl, dev_dl):
        if dl is not None and dl.num_workers > 0:
            dl.worker_init_fn = _WorkerIgnoresStopSignals(dl.worker_init_fn)
    if info.is_main:
        # only now, with the checkpoint loaded and the data open: a refused start leaves the exp dir as it was
        _write_model_card(cfg.exp_dir, model, task, tokenizer, num_params)

    monitor = Monitor(cfg.exp_dir, info.is_main, cfg.tensorboard, cfg.wandb_project if cfg.wandb else None,
                      {k: str(v) for k, v in vars(args).items()})
    if device.type == "cuda" and cfg.scan_pessimistic_batches and resume_path is None:
        _scan_pessimistic_batches(train_model, train_dl, task, args, cfg, device, optimizer)

    # the clock runs over resumes: --max-minutes and the cool-down count all the time spent training
    start_time = time.time() - 60.0 * state.train_minutes
    stop = budget_progress(state.batch_idx_train, state.train_minutes, cfg) == 1.0
    if stop:
        log.info("The budget (--max-batches / --max-minutes) is already spent at batch %d; nothing to train",
                 state.batch_idx_train)
    empty_epochs = 0  # fresh epochs in a row that gave no batch
    try:
        while state.epoch <= cfg.num_epochs and not stop:
            scheduler.step_epoch(state.epoch - 1)
            if sampler_state is None:
                fix_random_seed(cfg.seed + state.epoch + 1000 * info.rank)
                if hasattr(train_dl.sampler, "set_epoch"):
                    train_dl.sampler.set_epoch(state.epoch - 1)
            # else: a resumed epoch goes on from the checkpoint's sampler position (each step seeds its RNGs)
            fresh_epoch, batches_before = sampler_state is None, state.batch_idx_train
            sampler_state = None
            stop = _train_one_epoch(
                args, cfg, task, info, device, train_model, model_avg, optimizer, scheduler, scaler,
                train_dl, dev_dl, monitor, state, start_time, ckpt, tokenizer,
                stop_signals=stop_signals,
            )
            if fresh_epoch and not stop and state.batch_idx_train == batches_before:
                # One reader sees the same durations every epoch, so every later epoch would be empty too and
                # the loop would only write epoch checkpoints. Ranks that are dealt shards afresh each epoch
                # can have an empty one (a rank with too few cuts ends it for all) and go on.
                empty_epochs += 1
                if empty_epochs >= (1 if info.world_size == 1 else 5):
                    raise SystemExit(_empty_epoch_message(data, datamodule, state.epoch, empty_epochs))
            elif state.batch_idx_train != batches_before:
                empty_epochs = 0
            if not stop:
                if dev_dl is not None and cfg.valid_every_epoch:
                    validate(args, cfg, task, info, device, train_model, dev_dl, monitor, state, tokenizer)
                ranks_modules = _gather_rank_states(train_dl, model)
                if info.is_main:
                    _save_or_exit(
                        cfg, cfg.exp_dir / f"epoch-{state.epoch}.pt", model=model, model_avg=model_avg,
                        optimizer=optimizer, scheduler=scheduler, scaler=scaler, sampler=None,
                        params={"train_state": _next_epoch_state(state),
                                "module_state": adaptive_module_state(model),
                                **({"module_state_ranks": ranks_modules} if ranks_modules else {})},
                    )
                state.epoch += 1
        # the newest state always ends up on disk, so nothing done is lost when the run stops early
        final = cfg.exp_dir / f"checkpoint-{state.batch_idx_train}.pt"
        ranks_modules = _gather_rank_states(train_dl, model)
        if info.is_main and state.batch_idx_train > 0 and not final.exists():
            _save_batch_checkpoint(cfg, state, model, model_avg, optimizer, scheduler, scaler, train_dl, ckpt,
                                   ranks_modules)
        # no rank ends before rank 0 has saved (a rank that exits with status 3 first would get the others
        # terminated by the spawning parent)
        barrier()
        if stop_signals.stopping and info.is_main:
            log.info("Stopped on %s at batch %d with a checkpoint saved; exiting with status %d (run the "
                     "same command again to continue)", stop_signals.name, state.batch_idx_train,
                     EXIT_CHECKPOINTED_ON_SIGNAL)
    finally:
        if info.is_main:
            png = monitor.plot()
            if png is not None:
                log.info("Training curves: %s", png)
        monitor.close()
    log.info("Done: %d batches, %.0f s of audio, %d skipped non-finite batches", state.batch_idx_train,
             state.audio_seconds, state.bad_total)
    return state


def _empty_epoch_message(data: DataConfig, datamodule: PhoneDataModule, epoch: int, in_a_row: int) -> str:
    """Why epochs gave no batch, in one line: no cut was read, the filters removed every cut, or no bucket
    filled a batch. The filter's counts are this rank's, since the run started."""
    dirs = ", ".join(str(d) for d in data.train_shar)
    filt = datamodule.train_filter
    removed = ", ".join(f"{k}: {v}" for k, v in filt.removed.items() if v)
    why = (f"{filt.kept} cuts passed the filters but no batch filled up" if filt.kept
           else f"the filters removed every cut ({removed})" if removed else "no cut was read")
    hint = (f"with --drop-last true a batch is dropped unless it reaches --max-duration {data.max_duration:g} s "
            f"within one of the --num-buckets {data.num_buckets} duration buckets: lower either, or pass "
            "--drop-last false" if data.drop_last else "check the cuts' durations and labels")
    which = f"epoch {epoch}" if in_a_row == 1 else f"epochs {epoch - in_a_row + 1}-{epoch}"
    return f"--train-shar {dirs}: {which} gave no training batch: {why}; {hint}"


def _write_model_card(exp_dir: Path, model: nn.Module, task, tokenizer, num_params: int) -> None:
    """config.json and tokens.txt beside the checkpoints, so `anyphone recognize -m EXP_DIR` and
    `load_model(EXP_DIR)` rebuild the model without being told its size."""
    from anyphone.weights.expdir import CONFIG_FILE, write_config

    cfg = model.cfg.to_dict() if hasattr(model, "cfg") else {}
    tokens = Path(str(getattr(tokenizer, "source", "") or ""))
    src = tokens if tokens.is_file() else Path("ipa_simplified") / "tokens.txt"
    target = exp_dir / CONFIG_FILE
    try:  # atomic: a reader (or a killed run) never leaves a half-written file behind
        write_config(exp_dir, model=cfg, family=task.name, num_params=num_params,
                     tokens="tokens.txt" if src.is_file() else None)
        if src.is_file() and src.resolve() != (exp_dir / "tokens.txt").resolve():
            target = exp_dir / "tokens.txt"
            atomic_write_bytes(target, src.read_bytes())
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise SystemExit(f"{target}: could not be written: no space left on device; the checkpoints are as "
                         "they were. Free some space and run the same command again") from None


def _next_epoch_state(state: TrainState) -> dict:
    d = state.to_dict()
    d["epoch"] = state.epoch + 1
    return d


def _find_resume_checkpoint(cfg: TrainingConfig, ckpt) -> Path | None:
    if cfg.start_batch > 0:
        path = cfg.exp_dir / f"checkpoint-{cfg.start_batch}.pt"
        if not path.is_file():
            raise SystemExit(f"--start-batch {cfg.start_batch}: {path} does not exist")
        return path
    if cfg.start_epoch > 1:
        path = cfg.exp_dir / f"epoch-{cfg.start_epoch - 1}.pt"
        if not path.is_file():
            raise SystemExit(f"--start-epoch {cfg.start_epoch}: {path} does not exist")
        return path
    if cfg.auto_resume:
        return ckpt.latest_checkpoint(cfg.exp_dir)
    return None


def _init_weights_from(model: nn.Module, path: Path) -> None:
    from anyphone.weights.safe_load import load_state_dict

    sd = load_state_dict(path)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    own = model.state_dict()
    usable = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(sd) - set(usable))
    missing = sorted(set(own) - set(usable))
    model.load_state_dict(usable, strict=False)
    log.info("Initialised %d tensors from %s (%d skipped: shape or name differs; %d left as initialised)",
             len(usable), path, len(skipped), len(missing))
    if skipped:
        log.info("Not loaded from %s: %s", path, ", ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else ""))


def _save_batch_checkpoint(cfg: TrainingConfig, state, model, model_avg, optimizer, scheduler, scaler, train_dl,
                           ckpt, ranks_modules: list | None = None) -> None:
    path = cfg.exp_dir / f"checkpoint-{state.batch_idx_train}.pt"
    sampler = train_dl.sampler if hasattr(train_dl.sampler, "state_dict") else None
    _save_or_exit(
        cfg, path, model=model, model_avg=model_avg, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
        sampler=sampler, params={"train_state": state.to_dict(), "module_state": adaptive_module_state(model),
                                 **({"module_state_ranks": ranks_modules} if ranks_modules else {})},
    )
    ckpt.remove_old_checkpoints(cfg.exp_dir, cfg.keep_last_k)
    log.info("Saved %s", path)


def _gather_rank_states(train_dl, model: nn.Module) -> list[dict[str, float]] | None:
    """What rank 0's checkpoint must hold of every rank: its reader (position, shards read; given to rank 0's
    sampler) and its adaptive module state (returned; Whiten adapts to the rank's own activations, so the
    ranks' states differ). A collective: every rank calls it at the same step. None for a single process."""
    sampler = train_dl.sampler
    mine = {"reader": sampler.reader_state() if hasattr(sampler, "reader_state") else None,
            "modules": adaptive_module_state(model)}
    every = all_gather_objects(mine)
    if hasattr(sampler, "set_reader_states"):
        sampler.set_reader_states([r["reader"] for r in every])
    return [r["modules"] for r in every] if len(every) > 1 else None


def _save_or_exit(cfg: TrainingConfig, path: Path, **kwargs: Any) -> None:
    """``save_checkpoint``, with a full disk turned into one line (SystemExit) that says what could not be
    written and which checkpoint is intact (the save is atomic, so nothing older was touched)."""
    from anyphone.weights import checkpoint as ckpt

    try:
        ckpt.save_checkpoint(path, **kwargs)
    except (OSError, RuntimeError) as e:
        if not is_disk_full(e):
            raise
        if path.name.startswith(("checkpoint-", "epoch-")):
            prev = ckpt.latest_checkpoint(cfg.exp_dir)
            kept = (f"the previous checkpoint {prev} is intact" if prev is not None
                    else f"there is no earlier checkpoint in {cfg.exp_dir}")
        else:
            kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        raise SystemExit(f"{path}: could not be written: no space left on device; {kept}. Free some space "
                         "and run the same command again to continue from it") from None


def _check_data_dirs(data: DataConfig) -> None:
    """One line for a --train-shar / --dev-shar folder that is missing or holds no shards, before any work."""
    from anyphone.data.shar import parse_weighted_dir, shar_fields

    if not data.train_shar:
        raise SystemExit("no training data: pass --train-shar DIR[:WEIGHT] at least once")
    specs = [("--train-shar", s) for s in data.train_shar]
    specs += [("--dev-shar", s) for s in data.dev_shar]
    for flag, spec in specs:
        try:
            shar_fields(parse_weighted_dir(spec)[0] if flag == "--train-shar" else spec)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"{flag} {spec}: {e}") from None


def _train_one_epoch(
    args, cfg: TrainingConfig, task, info, device, train_model, model_avg, optimizer, scheduler, scaler,
    train_dl, dev_dl, monitor, state: TrainState, start_time: float, ckpt,
    tokenizer=None, stop_signals: StopSignals | None = None,
) -> bool:
    """Returns True when training must stop (limits reached, a stop signal, or too many bad batches)."""
    model = unwrap(train_model)
    model.train()
    tot = {"loss": 0.0, "frames": 0.0}
    terms: dict[str, float] = {}
    window_start, window_audio = time.time(), 0.0
    window_batches = 0
    # ranks reading their own shards hold different numbers of batches: the epoch ends for all at once
    for batch in agree_on_batches(train_dl, device):
        state.batch_idx_train += 1
        seed_step_rngs(cfg.seed, info.rank, state.batch_idx_train)
        state.train_minutes = (time.time() - start_time) / 60
        set_batch_count(model, adjusted_batch_count(state.batch_idx_train, cfg))
        if cfg.cooldown_fraction > 0:
            # every rank must set the same rate, so they share the slowest clock
            minutes = all_reduce_max(state.train_minutes, device) if cfg.max_minutes > 0 else 0.0
            progress = budget_progress(state.batch_idx_train - 1, minutes, cfg)
            scheduler.set_budget_factor(cooldown_factor(progress, cfg.cooldown_fraction))
        batch = move_batch(batch, device)
        last_in_step = state.batch_idx_train % cfg.accum_grad == 0
        sync = nullcontext() if (last_in_step or not info.enabled) else train_model.no_sync()
        with sync:
            with autocast_context(cfg, device):
                loss, loss_info = task.compute_loss(train_model, batch, args, state.batch_idx_train, True)
            finite = all_ranks_true(bool(torch.isfinite(loss).item()), device)
            if finite:
                scaler.scale(loss / cfg.accum_grad).backward()
            elif info.enabled:
                # Every rank must still join the gradient all-reduce: back-propagate an exact zero instead.
                zero = sum((p * 0.0).sum() for p in train_model.parameters())
                zero.backward()
        if not finite:
            state.bad_in_a_row += 1
            state.bad_total += 1
            optimizer.zero_grad(set_to_none=True)
            log.warning("Batch %d: non-finite loss (%s), skipped (%d in a row, %d in all); cuts: %s",
                        state.batch_idx_train, loss.item(), state.bad_in_a_row, state.bad_total,
                        ", ".join(batch.get("cut_ids", [])[:5]))
            if state.bad_in_a_row >= cfg.max_bad_batches:
                raise RuntimeError(
                    f"{state.bad_in_a_row} batches in a row gave a non-finite loss (last at batch "
                    f"{state.batch_idx_train}); stopping. Try a lower --base-lr, --use-fp16 0, or check the data."
                )
            # no step for this batch, but it counts: the average, checkpoints, validation and the budget
            # checks below still run (skipping them let a run of bad batches go past --max-batches)
        else:
            state.bad_in_a_row = 0
            if last_in_step:
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step_batch(state.batch_idx_train)

            secs = batch_seconds(batch)
            state.audio_seconds += secs * info.world_size
            window_audio += secs
            window_batches += 1
            tot["loss"] += float(loss.detach())
            tot["frames"] += float(loss_info["frames"])
            for k, v in loss_info.items():
                if k.endswith("_loss"):
                    terms[k] = terms.get(k, 0.0) + float(v)

        if info.is_main and state.batch_idx_train % cfg.average_period == 0:
            ckpt.update_averaged_model(model, model_avg, cfg.average_period, state.batch_idx_train)

        if state.batch_idx_train % cfg.log_interval == 0:
            elapsed = time.time() - window_start
            throughput = window_audio * info.world_size / max(elapsed, 1e-9)
            loss_pf = tot["loss"] / max(tot["frames"], 1.0)
            lr = scheduler.get_last_lr()[0]
            scale = f", grad scale {scaler.get_scale():.1f}" if cfg.use_fp16 else ""
            extra = ", ".join(f"{k} {v / max(tot['frames'], 1.0):.4f}" for k, v in terms.items())
            log.info(
                "Epoch %d, batch %d: loss %.4f per frame (%s), lr %.2e%s, %.0f s of audio per second, "
                "%.1f min elapsed%s",
                state.epoch, state.batch_idx_train, loss_pf, extra, lr, scale, throughput,
                (time.time() - start_time) / 60,
                budget_eta(cfg, state.batch_idx_train, elapsed, window_batches,
                           lambda first, last: task.work_between(args, first, last)),
            )
            window_batches = 0
            monitor.log("train", state.batch_idx_train,
                        {"loss": loss_pf, "lr": lr, "audio_per_sec": throughput,
                         **{k: v / max(tot["frames"], 1.0) for k, v in terms.items()}})
            tot = {"loss": 0.0, "frames": 0.0}
            terms = {}
            window_start, window_audio = time.time(), 0.0

        if dev_dl is not None and state.batch_idx_train % cfg.valid_interval == 0:
            validate(args, cfg, task, info, device, train_model, dev_dl, monitor, state, tokenizer)
            model.train()

        if state.batch_idx_train % cfg.save_every_n == 0:
            ranks_modules = _gather_rank_states(train_dl, model)  # every rank takes part; rank 0 saves them
        if info.is_main and state.batch_idx_train % cfg.save_every_n == 0:
            _save_batch_checkpoint(cfg, state, model, model_avg, optimizer, scheduler, scaler, train_dl, ckpt,
                                   ranks_modules)
        if cfg.save_every_n > 0 and state.batch_idx_train % cfg.save_every_n == 0:
            barrier()

        state.train_minutes = (time.time() - start_time) / 60
        out_of_batches = cfg.max_batches > 0 and state.batch_idx_train >= cfg.max_batches
        out_of_time = cfg.max_minutes > 0 and state.train_minutes >= cfg.max_minutes
        signalled = stop_signals is not None and stop_signals.received is not None
        # one collective for both, so every rank stops at the same step whichever rank had the reason
        budget_spent, stop_requested = any_rank([out_of_batches or out_of_time, signalled], device)
        if budget_spent:
            log.info("Stopping: %s", "--max-batches reached" if out_of_batches else "--max-minutes reached")
            if dev_dl is not None and state.batch_idx_train % cfg.valid_interval != 0:
                validate(args, cfg, task, info, device, train_model, dev_dl, monitor, state, tokenizer)
            return True
        if stop_requested:
            stop_signals.stopping = True
            log.info("Stopping on %s after batch %d: saving a checkpoint", stop_signals.name,
                     state.batch_idx_train)
            return True
    return False


@torch.no_grad()
def validate(args, cfg: TrainingConfig, task, info, device, train_model, dev_dl, monitor, state,
             tokenizer=None) -> dict[str, float]:
    """Loss per frame and phone error rate (greedy decoding) on the dev set, summed over ranks. ``args`` go to
    the task; the loop's knobs come from ``cfg``."""
    from anyphone.decoding.scoring import ErrorStats, utterance_stats

    model = unwrap(train_model)
    model.eval()
    tot_loss = tot_frames = 0.0
    stats = ErrorStats()
    for batch in dev_dl:
        batch = move_batch(batch, device)
        with autocast_context(cfg, device):
            loss, loss_info, hyps = task.validation_step(model, batch, args, state.batch_idx_train)
        if torch.isfinite(loss):
            tot_loss += float(loss)
            tot_frames += float(loss_info["frames"])
        if hyps is None:
            hyps = task.greedy_decode(model, batch)
        for ref, hyp in zip(batch["texts"], hyps):
            stats.add(utterance_stats(ref, tokenizer.decode(hyp), pfer=False))
    tot_loss, tot_frames, errs, ref_len = all_reduce_sum(
        [tot_loss, tot_frames, float(stats.errors), float(stats.ref_phones)], device)
    result = {"loss": tot_loss / max(tot_frames, 1.0), "err_rate": 100.0 * errs / max(ref_len, 1.0)}
    state.best_valid_loss = min(state.best_valid_loss, result["loss"])
    improved = result["err_rate"] < state.best_valid_err
    state.best_valid_err = min(state.best_valid_err, result["err_rate"])
    log.info("Validation at epoch %d, batch %d: loss %.4f per frame, PER %.2f%% (best %.2f%%)",
             state.epoch, state.batch_idx_train, result["loss"], result["err_rate"], state.best_valid_err)
    monitor.log("valid", state.batch_idx_train, result)
    if info.is_main:
        monitor.plot()
        if improved and cfg.keep_best:
            # the best weights so far, as a plain state_dict that decode --checkpoint and load_model read
            _save_or_exit(cfg, cfg.exp_dir / "best-valid.pt", model=model,
                          params={"train_state": state.to_dict(), "valid": result})
            log.info("New best dev PER: saved %s", cfg.exp_dir / "best-valid.pt")
    return result


def _scan_pessimistic_batches(train_model, train_dl, task, args, cfg: TrainingConfig, device, optimizer) -> None:
    """Run forward+backward on the longest and the most numerous batches before training starts (GPU only), so
    an out-of-memory error appears in the first minute with advice instead of hours into the run."""
    from lhotse.dataset import find_pessimistic_batches

    sampler = train_dl.sampler
    try:
        batches, crit = find_pessimistic_batches(sampler)
    except (TypeError, ValueError, NotImplementedError, AttributeError) as e:
        # lazily opened Shar sets cannot always be scanned ahead
        log.info("Skipping the pessimistic batch scan: %s", e)
        return
    for name, cuts in batches.items():
        batch = move_batch(train_dl.dataset[cuts], device)
        try:
            with autocast_context(cfg, device):
                loss, _ = task.compute_loss(train_model, batch, args, 0, True)
            loss.backward()
            optimizer.zero_grad(set_to_none=True)
        except torch.OutOfMemoryError:
            raise SystemExit(
                f"Out of GPU memory on the pessimistic batch '{name}' ({crit[name]}); lower --max-duration"
            ) from None
    if device.type == "cuda":
        log.info("Pessimistic batches fit: peak memory %.1f GiB", torch.cuda.max_memory_allocated() / 2**30)
