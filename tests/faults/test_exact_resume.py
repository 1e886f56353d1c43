"""Kill a training run anywhere, again and again, restart the same command each time, and it ends bitwise
equal to a run that was never interrupted.

Default flags: speed and volume perturbation, noise, silence padding and empty cuts in the dataloader workers,
CR-CTC with its SpecAugment views in the model, dropout and layer skipping, shuffled shards and a bucketing
sampler; with 0, 1 and 2 dataloader workers. Each case kills the run (SIGKILL, the run and its workers) 10
times, each kill drawn at random: at a random moment after the start (start-up, resume, sampler replay), at a
random moment within a random training step (forward, backward, optimizer step, the save after it, waiting for
the workers), or inside a checkpoint save at a random stage (before the write, half-way through it, before the
rename, after the rename). The schedule is seeded. The final checkpoints are compared tensor by tensor, bit
for bit: model, running average, optimizer, scheduler, sampler position, counters and RNG states.

The runs are forked from a forkserver that has torch and anyphone imported, so a restart costs a fork rather
than 3 s of imports; each run is its own session so that a kill takes its dataloader workers with it.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import random
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from training_fixtures import REPO as ROOT
from training_fixtures import write_tone_corpus

# A two-stack Zipformer of 0.17M parameters (109 tensors): a step takes a fraction of a second on one thread
# and a checkpoint loads fast, so the many restarts stay cheap. Dropout, layer skipping, bypasses, Balancer
# and Whiten are all there, as in every size.
SMALL_MODEL = [
    "--model-size", "tiny", "--num-encoder-layers", "1,1", "--downsampling-factor", "1,2",
    "--encoder-dim", "32,48", "--feedforward-dim", "64,96", "--num-heads", "2,2", "--query-head-dim", "8",
    "--value-head-dim", "4", "--pos-head-dim", "2", "--pos-dim", "8", "--encoder-unmasked-dim", "24,32",
    "--cnn-module-kernel", "15,15",
]
MAX_BATCHES = 12
SAVE_EVERY = 2
KILLS = 10
# what may differ between the two runs' checkpoints: the wall-clock time spent, and the file's checksum (it
# covers that time)
NOT_COMPARED = {"train_minutes", "sha256"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """24 utterances of 0.5-1 s in 4 shards (their order is shuffled per epoch), each text its own tone."""
    return write_tone_corpus(tmp_path_factory.mktemp("exact_resume_corpus"), shard_size=6, durations=(0.5, 1.0))


def _argv(corpus: Path, exp: Path, workers: int) -> list[str]:
    # everything that shapes the randomness stays at its default; only the sizes are made small. CPU: CUDA's
    # CTC loss and scatter kernels are not deterministic, so two uninterrupted GPU runs differ already
    return [str(a) for a in [
        "--exp-dir", exp, "--lang-dir", ROOT / "ipa_simplified", "--train-shar", corpus / "train",
        "--max-duration", "3", "--num-buckets", "2", "--num-workers", workers, "--num-threads", "1",
        "--tensorboard", "0", "--seed", "11", "--max-batches", MAX_BATCHES, "--num-epochs", "100",
        "--save-every-n", SAVE_EVERY,
        "--average-period", "3", "--log-interval", "1000", "--device", "cpu", *SMALL_MODEL,
    ]]


# ---------------------------------------------------------------------------------------------- the runs
# A kill plan, carried out inside the run (which is its own session, so the kill takes its workers along):
#   ("step", k, delay)      SIGKILL `delay` s after the run's k-th training step began: in the forward or
#                           backward pass, the optimizer step, a save, or fetching the next batch
#   ("save", n, stage)      SIGKILL in the run's n-th checkpoint save at `stage`
# and, from outside, ("start", delay): SIGKILL `delay` s after the run was started (start-up, resume, replay).
SAVE_STAGES = ("before-write", "mid-write", "before-replace", "after-replace")


def _die() -> None:
    os.killpg(0, signal.SIGKILL)


def _arm_step_kill(step: int, delay: float) -> None:
    from anyphone.families.crctc import CrCtcFamily

    real_loss, seen = CrCtcFamily.compute_loss, {"steps": 0}

    def compute_loss(self, model, batch, args, batch_idx_train, is_training):
        if is_training:
            seen["steps"] += 1
            if seen["steps"] == step:
                threading.Timer(delay, _die).start()
        return real_loss(self, model, batch, args, batch_idx_train, is_training)

    CrCtcFamily.compute_loss = compute_loss


def _arm_save_kill(save_number: int, stage: str) -> None:
    real_save, real_replace = torch.save, os.replace
    seen = {"saves": 0}

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "model" in obj:
            seen["saves"] += 1
            if seen["saves"] == save_number and stage == "before-write":
                _die()
            if seen["saves"] == save_number and stage == "mid-write":
                buf = io.BytesIO()
                real_save(obj, buf, *args, **kwargs)
                half = buf.getvalue()[: len(buf.getvalue()) // 2]
                if isinstance(f, (str, os.PathLike)):
                    Path(f).write_bytes(half)
                else:
                    f.write(half)
                    f.flush()
                _die()
        return real_save(obj, f, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        ours = seen["saves"] == save_number and str(dst).endswith(".pt")
        if ours and stage == "before-replace":
            _die()
        real_replace(src, dst, *args, **kwargs)
        if ours and stage == "after-replace":
            _die()

    torch.save, os.replace = save, replace


def _child(argv: list[str], plan: tuple | None) -> None:
    os.setsid()
    # the dataloader workers start as they do under `python train.py` (fork), not through this forkserver
    mp.set_start_method("fork", force=True)
    if plan is not None and plan[0] == "step":
        _arm_step_kill(*plan[1:])
    if plan is not None and plan[0] == "save":
        _arm_save_kill(*plan[1:])
    from anyphone.families import get_family
    from anyphone.training.loop import run
    from anyphone.training.recipe import get_train_parser

    run(get_train_parser("crctc").parse_args(argv), get_family("crctc"))


def _context():
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "lhotse", "anyphone.training.loop",
                                "anyphone.families.crctc", "anyphone.training.recipe", "anyphone.data.module",
                                "anyphone.models.ctc"])
    return ctx


def _start(argv: list[str], plan: tuple | None):
    p = _context().Process(target=_child, args=(argv, plan))
    p.start()
    return p


def _kill(p) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:  # not yet in its own session (or already gone)
        p.kill()
    p.join()


def _log_tail(exp: Path) -> str:
    logs = sorted((exp / "log").glob("log-train-*"))
    return logs[-1].read_text()[-3000:] if logs else "(no log)"


def _newest(exp: Path) -> int:
    found = [re.fullmatch(r"checkpoint-(\d+)\.pt", p.name) for p in exp.glob("checkpoint-*.pt")]
    return max((int(m.group(1)) for m in found if m), default=0)


def _straight(argv: list[str], exp: Path) -> tuple[float, float]:
    """The uninterrupted run; returns the seconds from its start to its first step, and of one step."""
    warm = _context().Process(target=time.sleep, args=(0,))  # start the forkserver outside the timing
    warm.start()
    warm.join()
    start = time.time()
    p = _start(argv, None)
    p.join(300)
    if p.exitcode is None:
        _kill(p)
        pytest.fail("the uninterrupted run did not finish in 300 s")
    assert p.exitcode == 0, f"the uninterrupted run failed ({p.exitcode}):\n{_log_tail(exp)}"
    first, second = (os.stat(exp / f"checkpoint-{n * SAVE_EVERY}.pt").st_mtime for n in (1, 2))
    step = (second - first) / SAVE_EVERY
    return max(first - start - SAVE_EVERY * step, step), step


def _plan(rng: random.Random, remaining: int, startup: float, step: float, kind: str | None = None) -> tuple:
    """A random kill (of ``kind`` if given and possible) for a run with ``remaining`` batches to go."""
    kind = kind or rng.choice(["start", "step", "step", "save", "save"])
    if kind == "start" and remaining > SAVE_EVERY:
        return ("start", rng.uniform(0.0, 1.5 * startup))
    if kind == "step" and remaining > 3:
        return ("step", rng.randint(1, min(2 * SAVE_EVERY, remaining - 3)), rng.uniform(0.0, step))
    saves_left = remaining // SAVE_EVERY
    n = rng.randint(1, min(2, saves_left))
    # a save that may be the final checkpoint must not complete while kills are due: the run would be over
    stages = SAVE_STAGES if n < saves_left else SAVE_STAGES[:-1]
    return ("save", n, rng.choice(stages))


def _with_kills(argv: list[str], exp: Path, rng: random.Random, startup: float, step: float) -> list[tuple]:
    """Run the command again and again until it completes, SIGKILLing it KILLS times first; returns the
    kills."""
    kills: list[tuple] = []
    # the first kill is a timed one (the run has all its batches to go, so it can be), the second in a save
    first = [rng.choice(["start", "step"]), "save"]
    for _ in range(4 * KILLS):
        plan = None
        if len(kills) < KILLS:
            kind = first[len(kills)] if len(kills) < len(first) else None
            plan = _plan(rng, MAX_BATCHES - _newest(exp), startup, step, kind)
        p = _start(argv, plan if plan and plan[0] != "start" else None)
        deadline = time.time() + (plan[1] if plan and plan[0] == "start" else 300.0)
        while p.exitcode is None and time.time() < deadline:
            # a timed kill comes at once if the run reaches its last stretch first (on a machine that got
            # faster since the timing): the run must not finish while kills are due
            if plan and plan[0] != "save" and _newest(exp) >= MAX_BATCHES - SAVE_EVERY:
                break
            p.join(0.05)
        if p.exitcode is None:
            _kill(p)
            if not plan or plan[0] == "save":
                pytest.fail(f"a run did not finish in 300 s:\n{_log_tail(exp)}")
        elif p.exitcode == 0:
            assert plan is None, f"the run finished before its kill {plan}"
            return kills
        else:
            assert p.exitcode == -signal.SIGKILL, f"a run failed ({p.exitcode}):\n{_log_tail(exp)}"
        kills.append(plan)
    pytest.fail(f"the run did not complete after {len(kills)} kills")


# ---------------------------------------------------------------------------------------------- comparing
def _differences(a, b, where: str = "") -> list[str]:
    """Every place where two loaded checkpoints differ; tensors must match bit for bit (and dtype, shape)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return [f"{where}: {type(a).__name__} vs {type(b).__name__}"]
        if a.dtype != b.dtype or a.shape != b.shape:
            return [f"{where}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"]
        same = torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
        return [] if same else [f"{where}: values differ"]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(map(str, a.keys() ^ b.keys()))} in one only"]
        return [d for k in a if k not in NOT_COMPARED for d in _differences(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1, 2])
def test_killed_anywhere_and_restarted_the_run_ends_bitwise_equal(corpus, tmp_path, workers):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    startup, step = _straight(_argv(corpus, straight, workers), straight)
    kills = _with_kills(_argv(corpus, killed, workers), killed, random.Random(100 + workers), startup, step)
    assert len(kills) == KILLS, kills

    # the restarts resumed from checkpoints (a run that started over each time would also end equal)
    log = (killed / "log" / "log-train-0.txt").read_text()
    resumed_at = [int(b) for b in re.findall(r"Resumed at epoch \d+, batch (\d+)", log)]
    assert len({b for b in resumed_at if b > 0}) >= 2, (resumed_at, kills)
    assert kills[0][0] in ("start", "step") and kills[1][0] == "save", kills

    final = f"checkpoint-{MAX_BATCHES}.pt"
    a = torch.load(straight / final, map_location="cpu", weights_only=True)
    b = torch.load(killed / final, map_location="cpu", weights_only=True)
    for part in ("model", "model_avg", "optimizer", "scheduler", "sampler", "train_state"):
        assert a.get(part) is not None, f"{final} has no {part}"
    diffs = _differences(a, b)
    assert not diffs, f"{len(diffs)} differences after kills {kills}; first: {diffs[:8]}"


# ---------------------------------------------------------------------------------------------- the pieces
def _loader(corpus: Path, workers: int, state: dict | None = None):
    from anyphone.data.module import PhoneDataModule
    from anyphone.training.recipe import get_train_parser

    # default augmentation, plus SpecAugment in the data pipeline, which is off by default
    args = get_train_parser("crctc").parse_args(
        [str(a) for a in ["--train-shar", corpus / "train", "--max-duration", "3", "--num-buckets", "2",
                          "--num-workers", workers, "--seed", "5", "--enable-spec-aug", "1"]])
    return PhoneDataModule(args).train_dataloader(_tokenizer(), sampler_state_dict=state)


def _tokenizer():
    from anyphone.text.tokenizer import IpaTokenizer

    return IpaTokenizer.from_dir(ROOT / "ipa_simplified")


def _same_batches(a: list[dict], b: list[dict]) -> None:
    assert [x["cut_ids"] for x in a] == [y["cut_ids"] for y in b]
    for x, y in zip(a, b):
        assert x["position"] == y["position"] and x["token_ids"] == y["token_ids"]
        assert torch.equal(x["feature_lens"], y["feature_lens"])
        assert torch.equal(x["features"].view(torch.int32), y["features"].view(torch.int32)), x["cut_ids"]


def test_a_resumed_loader_continues_after_the_last_batch_received_with_the_same_augmentation(corpus):
    """The sampler state counts the batches the training loop received, not the ones the workers prefetched,
    and a batch's augmentation depends on its position only: not on the worker, nor on the process."""
    dl = _loader(corpus, workers=2)
    dl.sampler.set_epoch(1)  # not the first epoch: the shard order of the epoch is restored too
    it = iter(dl)
    head = [next(it) for _ in range(2)]
    state = dl.sampler.state_dict()
    tail = list(it)
    assert len(tail) >= 2 and state["batches"] == 2 and state["epoch"] == 1
    assert [b["position"] for b in head + tail] == [(1, i) for i in range(len(head) + len(tail))]

    # another process layout, same batches: dataloader workers compute with one torch thread, so the main
    # process does too here (fbank's sums come out differently rounded with another thread count)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed = list(_loader(corpus, workers=0, state=state))
    finally:
        torch.set_num_threads(threads)
    _same_batches(tail, resumed)
    again = _loader(corpus, workers=1)
    again.sampler.set_epoch(1)
    _same_batches(head + tail, list(again))
    # the augmentation is on: a speed-perturbed cut and noise make the features differ from the clean ones
    assert any("_sp" in cid for b in head + tail for cid in b["cut_ids"])


def test_sampler_state_from_older_checkpoints_and_mismatched_flags(corpus):
    from lhotse.dataset import find_pessimistic_batches

    from anyphone.data.module import ResumableSampler, derive_seed

    dl = _loader(corpus, workers=0)
    batches, _ = find_pessimistic_batches(dl.sampler)  # the GPU start-up scan reads the numbered batches
    assert batches and all(len(cuts) > 0 for cuts in batches.values())
    it = iter(dl)
    for _ in range(3):
        next(it)
    lhotse_state = dl.sampler.sampler.state_dict()  # what checkpoints held before positions were kept
    old = _loader(corpus, workers=0, state=lhotse_state).sampler
    assert isinstance(old, ResumableSampler) and (old.epoch, old.received) == (0, 3)
    with pytest.raises(ValueError, match=r"saved with --seed 6, this run has 5; resume with the flags"):
        _loader(corpus, workers=0, state={**dl.sampler.state_dict(), "seed": 6})
    with pytest.raises(ValueError, match="not one this version can read"):
        _loader(corpus, workers=0, state={"epoch": 0})
    assert derive_seed("augment", 5, 0, 1, 2) == derive_seed("augment", 5, 0, 1, 2)
    assert len({derive_seed("augment", 5, 0, 1, 2), derive_seed("train-step", 5, 0, 1, 2),
                derive_seed("augment", 5, 0, 2, 1), derive_seed("augment", -5, 0, 1, 2)}) == 4


def test_a_resume_with_another_seed_is_refused_in_one_line_naming_the_checkpoint(corpus, tmp_path):
    from anyphone.families import get_family
    from anyphone.training.loop import train
    from anyphone.training.recipe import get_train_parser

    exp = tmp_path / "exp"
    argv = _argv(corpus, exp, workers=0)
    argv[argv.index("--max-batches") + 1] = "2"
    threads = torch.get_num_threads()  # the run sets --num-threads 1 in this process
    try:
        train(get_train_parser("crctc").parse_args(argv), get_family("crctc"))
        argv[argv.index("--seed") + 1] = "12"
        with pytest.raises(SystemExit, match=r"checkpoint-2\.pt: the checkpoint's sampler was saved with --seed "
                           r"11, this run has 12; resume with the flags it was trained with$"):
            train(get_train_parser("crctc").parse_args(argv), get_family("crctc"))
    finally:
        torch.set_num_threads(threads)
