"""Many nodes (issue 12 item 5): two torchrun launches on this machine stand in for two nodes (c10d rendezvous
on loopback, gloo). They train together, each rank reading its own shards; rank 0 writes the checkpoints into
the shared exp dir with every rank's reader state; a kill of the whole job followed by the same command, and
then an elastic restart (--max-restarts 1) after one worker is killed, end bitwise equal to a job that was
never interrupted.

Tiny model, one process per "node", --num-workers 0, 10 batches: about a minute on 2 cores (marked slow).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from training_fixtures import REPO as ROOT
from training_fixtures import write_tone_corpus

MAX_BATCHES = 10
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# the two-stack Zipformer of tests/faults/test_exact_resume.py (0.17M parameters)
SMALL_MODEL = [
    "--model-size", "tiny", "--num-encoder-layers", "1,1", "--downsampling-factor", "1,2",
    "--encoder-dim", "32,48", "--feedforward-dim", "64,96", "--num-heads", "2,2", "--query-head-dim", "8",
    "--value-head-dim", "4", "--pos-head-dim", "2", "--pos-dim", "8", "--encoder-unmasked-dim", "24,32",
    "--cnn-module-kernel", "15,15",
]
NOT_COMPARED = {"train_minutes", "sha256"}  # wall-clock time, and the checksum that covers it


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """24 utterances in 8 shards: each of the two readers gets 4 per epoch."""
    return write_tone_corpus(tmp_path_factory.mktemp("multinode_corpus"), shard_size=3, durations=(0.5, 1.0))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(corpus: Path, exp: Path, *, max_restarts: int = 0) -> list[subprocess.Popen]:
    """Both "nodes": one torchrun each, its own session (so a kill takes its workers along)."""
    port, job = _free_port(), f"job{time.monotonic_ns()}"
    train = [str(a) for a in [
        ROOT / "zipformer_crctc" / "train.py", "--exp-dir", exp, "--lang-dir", ROOT / "ipa_simplified",
        "--train-shar", corpus / "train", "--max-duration", "3", "--num-buckets", "2", "--num-workers", "0",
        "--num-threads", "1", "--tensorboard", "0", "--seed", "11", "--max-batches", MAX_BATCHES,
        "--num-epochs", "100", "--save-every-n", "2", "--average-period", "3", "--log-interval", "1000",
        "--device", "cpu", *SMALL_MODEL,
    ]]
    # a fresh store for each rendezvous round: with the one store torchrun shares across rounds by default, the
    # restarted workers read the previous round's gloo addresses and never connect (torch 2.4+)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    procs = []
    for node in (0, 1):
        cmd = [*TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", job, "--max-restarts", str(max_restarts),
               "--monitor-interval", "0.5", *train]
        log = open(exp.parent / f"{exp.name}-node{node}.log", "ab")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
        log.close()
    return procs


def _wait(procs: list[subprocess.Popen], exp: Path, timeout: float = 240) -> None:
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    except subprocess.TimeoutExpired:
        _kill(procs)
        raise
    if codes != [0, 0]:
        tail = (exp.parent / f"{exp.name}-node0.log").read_text(errors="replace")[-3000:]
        pytest.fail(f"torchrun exit codes {codes}; node 0 log ends:\n{tail}")


def _kill(procs: list[subprocess.Popen]) -> None:
    """SIGKILL both torchruns and every process under them (torchrun starts its workers in sessions of their
    own, so killing the launcher's process group would leave them running)."""
    pids, todo = [], [p.pid for p in procs]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(_children(pid))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in procs:
        p.wait()


def _checkpoints(exp: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in exp.glob("checkpoint-*.pt"))


def _wait_for(cond, what: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def _differences(a, b, where: str = "") -> list[str]:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) - NOT_COMPARED != set(b) - NOT_COMPARED:
            return [f"{where}: keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a if k not in NOT_COMPARED for d in _differences(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


@pytest.mark.slow
def test_two_nodes_train_resume_and_survive_a_killed_worker(corpus, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    launched: list[subprocess.Popen] = []
    try:
        _run(corpus, straight, killed, launched)
    finally:
        _kill(launched)  # nothing left running whatever failed


def _run(corpus: Path, straight: Path, killed: Path, launched: list[subprocess.Popen]) -> None:
    launched += (procs := _launch(corpus, straight))
    _wait(procs, straight)
    final = f"checkpoint-{MAX_BATCHES}.pt"
    ref = torch.load(straight / final, map_location="cpu", weights_only=True)
    logs = [(straight / "log" / f"log-train-{r}.txt").read_text() for r in (0, 1)]
    for rank, text in enumerate(logs):
        assert f"world size 2 (rank {rank}" in text
        assert f"readers: rank {rank} of 2 reads 1/2 of the shards" in text
    # rank 0 wrote it, with both ranks' readers: each reads 4 of the 8 shards
    readers = ref["sampler"]["readers"]
    assert [r["rank"] for r in readers] == [0, 1] and [r["shards"] for r in readers] == [[4], [4]]
    assert not (straight / "log" / "log-train-1.txt").read_text().count("Saved ")

    # the whole job killed (both nodes, SIGKILL) once a checkpoint is on disk, then the same command again
    launched += (procs := _launch(corpus, killed, max_restarts=1))
    _wait_for(lambda: _checkpoints(killed) and _checkpoints(killed)[-1] >= 4, "checkpoint-4")
    _kill(procs)
    assert _checkpoints(killed)[-1] < MAX_BATCHES
    launched += (procs := _launch(corpus, killed, max_restarts=1))
    # ... and in that run one worker (rank 1, on "node" 1) is killed after the next save: torchrun restarts
    # the workers of both nodes, which resume from the newest checkpoint
    resumed_at = _checkpoints(killed)[-1]
    _wait_for(lambda: _checkpoints(killed)[-1] > resumed_at, "a checkpoint after the resume")
    if _checkpoints(killed)[-1] < MAX_BATCHES:
        workers = _children(procs[1].pid)
        assert workers, "no worker process under node 1's torchrun"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
    _wait(procs, killed)
    text = (killed / "log" / "log-train-0.txt").read_text()
    assert text.count("Resuming from") >= 2, text[-2000:]  # after the job kill, and after the elastic restart
    assert "resuming the training sampler" in (killed / "log" / "log-train-1.txt").read_text()

    got = torch.load(killed / final, map_location="cpu", weights_only=True)
    for part in ("model", "model_avg", "optimizer", "scheduler", "sampler", "train_state"):
        assert ref.get(part) is not None, f"{final} has no {part}"
    diffs = _differences(ref, got)
    assert not diffs, f"{len(diffs)} differences; first: {diffs[:8]}"
