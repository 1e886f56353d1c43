"""Fixed work, not fixed time (the demo's contract): the same command twice gives the same model, the same dev
PERs along the way and the same decoded test output, however long each run took.

Both runs go through the recipe's own scripts as a user runs them (train.py, then decode.py), with the demo's
kind of flags: a --max-batches budget with a cool-down, CR-CTC from a start batch, and the data-side
randomness on (noise, volume, silence padding, empty cuts) in a dataloader worker. The second run is slowed
down on purpose (a busy-looping neighbour process), so a schedule that read the clock would show up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_fixtures import REPO as ROOT
from training_fixtures import SMALL_MODEL, write_tone_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_tone_corpus(tmp_path_factory.mktemp("fixed_work"), dev=6)


def _train_and_decode(corpus: Path, exp: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    train = [
        sys.executable, str(ROOT / "zipformer_crctc" / "train.py"), *SMALL_MODEL,
        "--exp-dir", str(exp), "--train-shar", str(corpus / "train"), "--dev-shar", str(corpus / "dev"),
        "--max-duration", "8", "--num-buckets", "2", "--min-duration", "0", "--num-workers", "1",
        "--num-threads", "1", "--num-epochs", "100", "--max-batches", "12", "--cooldown-fraction", "0.25",
        "--cr-start-batch", "6", "--warmup-batches", "2", "--lr-batches", "8", "--base-lr", "0.05",
        "--noise-prob", "0.5", "--silence-pad-prob", "0.5", "--empty-prob", "0.1", "--speed-perturb", "0",
        "--valid-interval", "6", "--valid-every-epoch", "0", "--save-every-n", "6", "--keep-last-k", "2",
        "--average-period", "2", "--tensorboard", "0", "--log-interval", "3", "--seed", "11",
    ]
    subprocess.run(train, check=True, env=env, capture_output=True, timeout=600)
    decode = [
        sys.executable, str(ROOT / "zipformer_crctc" / "decode.py"), "--exp-dir", str(exp), "--iter", "12",
        "--avg", "1", "--use-averaged-model", "1", "--test-shar", f"test={corpus / 'dev'}",
        "--decoding-method", "ctc-greedy-search", "--num-workers", "0", "--num-threads", "1",
    ]
    subprocess.run(decode, check=True, env=env, capture_output=True, timeout=600)


def _dev_pers(exp: Path) -> list[tuple[int, float]]:
    recs = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    return [(r["batch"], r["err_rate"]) for r in recs if r.get("split") == "valid" and "err_rate" in r]


def test_the_same_command_twice_gives_the_same_model_and_results(corpus, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _train_and_decode(corpus, a)
    # a neighbour that keeps one core busy: the second run takes longer, and must not learn differently
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        _train_and_decode(corpus, b)
    finally:
        hog.kill()
        hog.wait()

    last_a = torch.load(a / "checkpoint-12.pt", map_location="cpu", weights_only=True)
    last_b = torch.load(b / "checkpoint-12.pt", map_location="cpu", weights_only=True)
    assert last_a["train_state"]["batch_idx_train"] == 12
    for part in ("model", "model_avg"):
        assert last_a[part].keys() == last_b[part].keys()
        differ = [k for k in last_a[part] if not torch.equal(last_a[part][k], last_b[part][k])]
        assert not differ, f"{part}: {len(differ)} tensors differ, e.g. {differ[:3]}"

    pers = _dev_pers(a)
    assert [batch for batch, _ in pers] == [6, 12], pers
    assert pers == _dev_pers(b)

    res_a = sorted((a / "ctc-greedy-search").glob("recogs-test-*.txt"))
    assert res_a, "decode.py wrote no recogs file"
    for f in res_a:
        assert f.read_text() == (b / "ctc-greedy-search" / f.name).read_text(), f.name
