"""Training faults (issue 11, training part; issue 12 item 6): what a run does when things go wrong around it.

One test per case, each checking the one-line message and that nothing already done was lost:
a second run on a locked exp dir, a lock left by a dead process, a restart with flags that do not fit the
checkpoints, a damaged newest checkpoint, a full disk during a save, an empty --train-shar folder, a run of
non-finite batches at the end of the budget, the running model average through a checkpoint, and SIGTERM /
SIGUSR1 (one process, and two DDP ranks of which only one is signalled; that case shares its training with
the lock's, to keep the file under a minute).

The trainings are a ~1M-parameter Zipformer on 24 synthetic utterances (3 batches an epoch), a few batches each.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn
from training_fixtures import NO_AUG, SMALL_MODEL, write_tone_corpus
from training_fixtures import REPO as ROOT

from anyphone.families import get_family
from anyphone.training.loop import EXIT_CHECKPOINTED_ON_SIGNAL, train
from anyphone.training.recipe import get_train_parser
from anyphone.weights import checkpoint as ckpt

HOST = socket.gethostname()
# a process that takes an exp dir's lock and waits (to be SIGKILLed, leaving the lock behind)
HOLD_LOCK = """import sys, time
from anyphone.fileio import DirLock
DirLock(sys.argv[1], name='.lock').acquire()
print('locked', flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_tone_corpus(tmp_path_factory.mktemp("faults_corpus"), noise=0.0)


def _argv(corpus: Path, exp: Path, *extra: str) -> list[str]:
    return [str(a) for a in [
        "--exp-dir", exp, "--lang-dir", ROOT / "ipa_simplified", "--train-shar", corpus / "train",
        "--max-duration", "8", "--tensorboard", "0", "--log-interval", "1", "--num-threads", "1",
        "--average-period", "1", "--seed", "7", "--num-epochs", "50", *SMALL_MODEL, *NO_AUG, *extra,
    ]]


def _args(corpus: Path, exp: Path, *extra: str):
    return get_train_parser("crctc").parse_args(_argv(corpus, exp, *extra))


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    """An exp dir after 2 batches: checkpoint-1.pt, checkpoint-2.pt, config.json, tokens.txt, a log."""
    exp = tmp_path_factory.mktemp("faults_trained") / "exp"
    state = train(_args(corpus, exp, "--max-batches", "2", "--save-every-n", "1"), get_family("crctc"))
    assert state.batch_idx_train == 2
    return exp


def _copy(trained: Path, tmp_path: Path) -> Path:
    exp = tmp_path / "exp"
    shutil.copytree(trained, exp)
    return exp


def _snapshot(exp: Path) -> dict[str, bytes]:
    return {str(p.relative_to(exp)): p.read_bytes() for p in sorted(exp.rglob("*")) if p.is_file()}


def _log(exp: Path) -> str:
    return (exp / "log" / "log-train-0.txt").read_text()


def _stopped_at(log: str) -> int:
    found = re.findall(r"Stopping on SIG\w+ after batch (\d+)|Stopping on a signal on another rank after "
                       r"batch (\d+)", log)
    assert len(found) == 1, log[-3000:]
    return int(found[0][0] or found[0][1])


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, f"training ended before {path.name} (status {proc.returncode})"
        assert time.time() < deadline, f"no {path.name} within {seconds} s"
        time.sleep(0.05)


def _recipe(corpus: Path, exp: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "zipformer_crctc" / "train.py"), *_argv(corpus, exp, *extra)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


# ---------------------------------------------------------------------------------------------- the lock
def test_running_training_holds_its_exp_dir_and_all_ranks_stop_on_a_signal_to_one(corpus, tmp_path):
    """A real DDP training (2 gloo ranks spawned by --world-size 2): the spawning parent holds the exp dir's
    lock, and a second training is refused in one line naming its host and pid, writing nothing (the first is
    paused meanwhile, so every file it has can be compared byte for byte). Then only rank 1 and its dataloader
    worker get SIGTERM (as a batch system signals every process it started): both ranks stop after the same
    batch, rank 0 saves it, and the run exits with status 3 (torch's workers used to die of SIGTERM and take
    the run down with a traceback)."""
    exp = tmp_path / "exp"
    # batches of 4 s: each rank's first epoch holds several, so no epoch ends (and restarts its worker) here
    first = _recipe(corpus, exp, "--world-size", "2", "--max-batches", "1000", "--save-every-n", "2",
                    "--max-duration", "4", "--num-workers", "1", "--master-port", str(29600 + os.getpid() % 1000))
    try:
        _wait_for(exp / "checkpoint-2.pt", first)
        assert json.loads((exp / ".lock").read_text())["pid"] == first.pid
        os.killpg(first.pid, signal.SIGSTOP)  # the parent and both ranks
        before = _snapshot(exp)
        with pytest.raises(SystemExit) as e:
            train(_args(corpus, exp, "--max-batches", "4"), get_family("crctc"))
        msg = str(e.value)
        assert f"{exp}: this exp dir is in use by pid {first.pid} on host {HOST}" in msg, msg
        assert "\n" not in msg
        assert _snapshot(exp) == before, "the refused run changed the first run's files"
        os.killpg(first.pid, signal.SIGCONT)

        rank1 = re.search(r"rank 1, pid (\d+)", (exp / "log" / "log-train-1.txt").read_text())
        assert rank1, "rank 1 did not log its pid"
        worker = _children(int(rank1.group(1)))
        assert len(worker) == 1 or not Path("/proc").is_dir(), worker
        for pid in [int(rank1.group(1)), *worker]:
            os.kill(pid, signal.SIGTERM)
        _, err = first.communicate(timeout=180)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == EXIT_CHECKPOINTED_ON_SIGNAL, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    log0, log1 = _log(exp), (exp / "log" / "log-train-1.txt").read_text()
    batch = _stopped_at(log1)
    assert "Stopping on SIGTERM" in log1 and "Stopping on a signal on another rank" in log0
    assert _stopped_at(log0) == batch
    assert f"Stopped on a signal on another rank at batch {batch} with a checkpoint saved; exiting with " \
           "status 3" in log0
    assert ckpt.latest_checkpoint(exp) == exp / f"checkpoint-{batch}.pt"
    saved = ckpt.load_checkpoint(exp / f"checkpoint-{batch}.pt")  # verifies the checksum
    assert saved["train_state"]["batch_idx_train"] == batch
    assert not (exp / ".lock").exists()


def test_lock_left_by_a_dead_process_is_taken_over(corpus, trained, tmp_path):
    exp = _copy(trained, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(exp)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()  # SIGKILL: no chance to remove its lock
    holder.wait()
    assert json.loads((exp / ".lock").read_text())["pid"] == holder.pid
    state = train(_args(corpus, exp, "--max-batches", "3"), get_family("crctc"))
    assert state.batch_idx_train == 3
    log = _log(exp)
    assert (f"taking over a lock left by pid {holder.pid} on {HOST}, which is no longer running" in log), log
    assert (exp / "checkpoint-3.pt").is_file()
    assert not (exp / ".lock").exists(), "the run did not release its lock"


# ---------------------------------------------------------------------------------------------- restarts
def test_refused_restart_changes_nothing(corpus, trained, tmp_path):
    """--encoder-dim that does not fit the checkpoints: refused in one line, config.json (and every other
    file but the log) unchanged byte for byte, so the exp dir still loads."""
    exp = _copy(trained, tmp_path)
    before = _snapshot(exp)
    other = [a if a != "48,64,64,96,64,48" else "48,64,64,128,64,48"
             for a in _argv(corpus, exp, "--max-batches", "4")]
    with pytest.raises(SystemExit) as e:
        train(get_train_parser("crctc").parse_args(other), get_family("crctc"))
    msg = str(e.value)
    assert msg.startswith(f"{exp / 'checkpoint-2.pt'}: this checkpoint does not fit the model"), msg
    assert "\n" not in msg
    after = _snapshot(exp)
    assert after["config.json"] == before["config.json"]
    assert {k: v for k, v in after.items() if not k.startswith("log")} == \
        {k: v for k, v in before.items() if not k.startswith("log")}
    assert json.loads(after["config.json"])["model"]["encoder_dim"] == "48,64,64,96,64,48"
    assert not (exp / ".lock").exists()


def _overwrite_tensor_bytes(path: Path, fill: bytes = b"\xff" * 64) -> None:
    """Overwrite bytes in the middle of the largest tensor stored in a torch.save file (0xFF.. is a float NaN)."""
    with zipfile.ZipFile(path) as z:  # tensors are the records under data/; data.pkl is the pickled structure
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    raw[start: start + len(fill)] = fill
    path.write_bytes(bytes(raw))


def test_corrupt_newest_checkpoint_is_named_and_skipped(corpus, trained, tmp_path, caplog):
    """Bytes overwritten inside checkpoint-2.pt: the run names it in one line, resumes from checkpoint-1.pt,
    stays finite and stops at --max-batches. Temporary files of killed saves are removed at the start."""
    exp = _copy(trained, tmp_path)
    bad = exp / "checkpoint-2.pt"
    _overwrite_tensor_bytes(bad)
    torch.load(bad, weights_only=True)  # torch itself reads it without complaint: only the checksum catches it
    with pytest.raises(ckpt.CorruptCheckpointError) as e:
        ckpt.load_checkpoint(bad)
    assert str(e.value) == f"{bad}: corrupt checkpoint: its contents do not match the sha256 checksum saved with it"
    # what killed saves leave behind (this release's name and the one before), and a file that is not ours
    (exp / ".tmp-checkpoint-2.pt.k1l2m3").write_bytes(os.urandom(1 << 20))
    (exp / ".checkpoint-2.pt.tmp-4242").write_bytes(os.urandom(1 << 20))
    (exp / ".tmp-notes.txt.x").write_text("someone else's")

    state = train(_args(corpus, exp, "--max-batches", "2", "--save-every-n", "1"), get_family("crctc"))
    assert state.batch_idx_train == 2
    log = _log(exp)
    assert f"{bad}: corrupt checkpoint: its contents do not match the sha256 checksum saved with it; skipping " \
           "it for an older checkpoint" in log
    assert f"Resuming from {exp / 'checkpoint-1.pt'}" in log
    assert "Removed 2 temporary file(s) of interrupted saves" in log
    assert not (exp / ".tmp-checkpoint-2.pt.k1l2m3").exists() and not (exp / ".checkpoint-2.pt.tmp-4242").exists()
    assert (exp / ".tmp-notes.txt.x").exists()
    # batch 2 trained again from checkpoint-1.pt, and saved over the damaged file
    saved = ckpt.load_checkpoint(exp / "checkpoint-2.pt")
    assert saved["train_state"]["batch_idx_train"] == 2
    final = torch.load(exp / "checkpoint-2.pt", weights_only=True)
    for part in ("model", "model_avg"):
        assert all(torch.isfinite(v.double()).all() for v in final[part].values()), part
    assert not (exp / "checkpoint-3.pt").exists()


class _FullDisk:
    """A file whose disk fills up after ``room`` bytes (write raises ENOSPC, as the kernel's would)."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def test_disk_full_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(corpus, trained, tmp_path,
                                                                             monkeypatch):
    exp = _copy(trained, tmp_path)
    real_save = torch.save

    def save_on_a_full_disk(obj, f, *args, **kwargs):
        return real_save(obj, _FullDisk(f, room=1 << 20), *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    with pytest.raises(SystemExit) as e:
        train(_args(corpus, exp, "--max-batches", "4", "--save-every-n", "1"), get_family("crctc"))
    monkeypatch.setattr(torch, "save", real_save)
    msg = str(e.value)
    assert msg == (f"{exp / 'checkpoint-3.pt'}: could not be written: no space left on device; the previous "
                   f"checkpoint {exp / 'checkpoint-2.pt'} is intact. Free some space and run the same command "
                   "again to continue from it"), msg
    assert e.value.code != 0
    assert sorted(p.name for p in exp.glob("*.pt")) == ["checkpoint-1.pt", "checkpoint-2.pt"]
    assert not list(exp.glob(".tmp-*")), "a temporary file was left behind"
    assert ckpt.load_checkpoint(exp / "checkpoint-2.pt")["train_state"]["batch_idx_train"] == 2
    assert not (exp / ".lock").exists()


def test_empty_train_shar_is_one_line(corpus, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    exp = tmp_path / "exp"
    args = _args(corpus, exp, "--max-batches", "2")
    args.train_shar = [str(empty)]
    with pytest.raises(SystemExit) as e:
        train(args, get_family("crctc"))
    msg = str(e.value)
    assert msg.startswith(f"--train-shar {empty}: ") and str(empty) in msg[len("--train-shar") + 1:], msg
    assert "\n" not in msg
    assert sorted(p.name for p in exp.iterdir()) == ["log"]  # no config.json, no checkpoint


def test_refused_data_ends_training_in_one_line(corpus, tmp_path):
    """A training set whose cuts load their audio through a shell command stops train() with one line naming
    the shard and the cut (not a traceback), and the command never runs."""
    import gzip

    from lhotse import AudioSource, MonoCut, Recording, SupervisionSegment

    marker = tmp_path / "ran"
    shar = tmp_path / "hostile"
    shar.mkdir()
    with gzip.open(shar / "cuts.000000.jsonl.gz", "wt", encoding="utf-8") as f:
        for i in range(3):
            rec = Recording(id=f"r{i}", sources=[AudioSource(type="command", channels=[0],
                                                             source=f"touch {marker}; cat x.wav")],
                            sampling_rate=16000, num_samples=16000, duration=1.0)
            sup = SupervisionSegment(id=f"h{i}", recording_id=f"r{i}", start=0, duration=1.0, text="aba")
            cut = MonoCut(id=f"h{i}", start=0, duration=1.0, channel=0, recording=rec, supervisions=[sup])
            f.write(json.dumps(cut.to_dict()) + "\n")
    args = _args(corpus, tmp_path / "exp", "--max-batches", "2")
    args.train_shar = [str(shar)]
    with pytest.raises(SystemExit) as e:
        train(args, get_family("crctc"))
    msg = str(e.value)
    assert "cuts.000000.jsonl.gz: cut 'h0': its audio source is a shell command" in msg, msg
    assert "\n" not in msg
    assert not marker.exists()


def test_non_finite_batches_do_not_run_past_max_batches(corpus, trained, tmp_path, monkeypatch):
    """Every batch from the resumed one on gives NaN: the run still stops at --max-batches (it used to skip the
    budget check for such batches and go on until --max-bad-batches), and saves its checkpoints."""
    exp = _copy(trained, tmp_path)
    task = get_family("crctc")
    real = task.compute_loss

    def nan_loss(model, batch, args, batch_idx, is_training):
        loss, info = real(model, batch, args, batch_idx, is_training)
        return loss * float("nan"), info

    monkeypatch.setattr(task, "compute_loss", nan_loss)
    state = train(_args(corpus, exp, "--max-batches", "4", "--save-every-n", "1", "--max-bad-batches", "50"),
                  task)
    assert state.batch_idx_train == 4 and state.bad_total == 2
    assert sorted(p.name for p in exp.glob("checkpoint-*.pt")) == [f"checkpoint-{i}.pt" for i in (1, 2, 3, 4)]
    a, b = (torch.load(exp / f"checkpoint-{i}.pt", weights_only=True)["model"] for i in (2, 4))
    assert all(torch.equal(a[k], b[k]) for k in a), "a skipped batch changed the weights"


# ---------------------------------------------------------------------------------------------- the average
def test_model_average_round_trips_bitwise(tmp_path):
    """The running average is kept in float64; a checkpoint stores it as it is, so a resumed run continues from
    exactly the same average (it was stored as float32 and came back up to 1e-7 off). A checkpoint written
    before checksums existed still loads, unverified."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
    avg = copy.deepcopy(model).to(torch.float64)
    for batch in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) / 3)
        ckpt.update_averaged_model(model, avg, 1, batch)
    assert any(not torch.equal(v, v.float().double()) for v in avg.state_dict().values() if v.is_floating_point())
    path = ckpt.save_checkpoint(tmp_path / "checkpoint-5.pt", model, model_avg=avg, params={"batch_idx_train": 5})
    fresh = copy.deepcopy(model).to(torch.float64)
    ckpt.load_checkpoint(path, model=copy.deepcopy(model), model_avg=fresh)
    for k, v in avg.state_dict().items():
        assert fresh.state_dict()[k].dtype == v.dtype and torch.equal(fresh.state_dict()[k], v), k

    old = tmp_path / "checkpoint-1.pt"
    torch.save({"model": model.state_dict(), "batch_idx_train": 1}, old)
    target = copy.deepcopy(model)
    rest = ckpt.load_checkpoint(old, model=target)
    assert rest["batch_idx_train"] == 1 and ckpt.latest_checkpoint(tmp_path) == path


# ---------------------------------------------------------------------------------------------- signals
def _children(pid: int) -> list[int]:
    """Pids of a process's children (Linux /proc; empty elsewhere)."""
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            pids += [int(x) for x in (task / "children").read_text().split()]
    return pids


def test_sigusr1_finishes_the_step_saves_and_exits_with_status_3(corpus, trained, tmp_path):
    """A real SIGUSR1 to this process while it trains, through the recipe's entry point (one process): the step
    ends, a checkpoint of it is saved, the exit status is 3, and the previous signal handlers are back."""
    from anyphone.training.loop import run

    exp = _copy(trained, tmp_path)
    caught = []
    guard = signal.signal(signal.SIGUSR1, lambda *a: caught.append("guard"))  # pytest survives a missed one
    sent = threading.Event()

    def send_when_training() -> None:
        deadline = time.time() + 120
        while not (exp / "checkpoint-3.pt").exists() and time.time() < deadline:
            time.sleep(0.02)
        sent.set()
        os.kill(os.getpid(), signal.SIGUSR1)

    sender = threading.Thread(target=send_when_training, daemon=True)
    ours = signal.getsignal(signal.SIGUSR1)
    try:
        sender.start()
        with pytest.raises(SystemExit) as e:
            run(_args(corpus, exp, "--max-batches", "1000", "--save-every-n", "1"), get_family("crctc"))
        sender.join(10)
        assert signal.getsignal(signal.SIGUSR1) is ours, "the previous SIGUSR1 handler was not restored"
    finally:
        signal.signal(signal.SIGUSR1, guard)
    assert sent.is_set() and not caught, "the signal was not handled by the training"
    assert e.value.code == EXIT_CHECKPOINTED_ON_SIGNAL
    log = _log(exp)
    batch = _stopped_at(log)
    assert batch >= 3
    assert f"Stopped on SIGUSR1 at batch {batch} with a checkpoint saved; exiting with status 3" in log
    assert ckpt.load_checkpoint(exp / f"checkpoint-{batch}.pt")["train_state"]["batch_idx_train"] == batch
    assert not (exp / f"checkpoint-{batch + 1}.pt").exists()
    assert not (exp / ".lock").exists()
