"""The shared training loop on CPU: loss falls, gloo DDP, kill-and-resume, non-finite batches, averaging."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from training_fixtures import NO_AUG, SMALL_MODEL, write_tone_corpus
from training_fixtures import REPO as ROOT

from anyphone.families import get_family
from anyphone.training.loop import train
from anyphone.training.recipe import get_train_parser
from anyphone.weights import checkpoint as ckpt


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """24 utterances where each text has its own tone, so there is something learnable; 6 of them as dev."""
    return write_tone_corpus(tmp_path_factory.mktemp("corpus"), dev=6)


def _args(corpus: Path, exp: Path, *extra: str):
    argv = [
        "--exp-dir", str(exp), "--lang-dir", str(ROOT / "ipa_simplified"),
        "--train-shar", str(corpus / "train"), "--max-duration", "8", "--tensorboard", "0",
        "--log-interval", "2", "--num-threads", "1", "--average-period", "1", "--seed", "7",
        *SMALL_MODEL, *NO_AUG, *extra,
    ]
    return get_train_parser("crctc").parse_args(argv)


def _metrics(exp: Path, split: str, key: str) -> list[float]:
    recs = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in recs if r["split"] == split and key in r]


def test_crctc_training_loss_falls(corpus, tmp_path):
    exp = tmp_path / "exp"
    args = _args(corpus, exp, "--num-epochs", "20", "--max-batches", "40", "--base-lr", "0.05",
                 "--dev-shar", str(corpus / "dev"), "--valid-interval", "20", "--save-every-n", "20",
                 "--valid-every-epoch", "0")
    state = train(args, get_family("crctc"))
    assert state.batch_idx_train == 40
    losses = _metrics(exp, "train", "loss")
    assert len(losses) >= 10
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:2]), losses
    assert _metrics(exp, "train", "cr_loss"), "CR-CTC term was not logged"
    assert len(_metrics(exp, "valid", "err_rate")) == 2  # at batches 20 and 40
    assert (exp / "best-valid.pt").is_file()
    assert (exp / "training_curves.png").stat().st_size > 1000
    assert (exp / "checkpoint-20.pt").is_file() and (exp / "checkpoint-40.pt").is_file()
    assert any((exp / "log").glob("log-train-0.txt"))


def _weights(path: Path, key: str = "model") -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)[key]


def test_kill_after_first_checkpoint_then_resume(corpus, tmp_path):
    """A run killed (SIGKILL) after its first checkpoint resumes from it and ends in the same state as an
    uninterrupted run: same weights, same averaged model."""
    # 3 batches per epoch: checkpoints at 2, 4 (mid-epoch) and 6 (an epoch boundary)
    common = ["--num-epochs", "50", "--save-every-n", "2", "--keep-last-k", "0"]
    straight = tmp_path / "straight"
    train(_args(corpus, straight, *common, "--max-batches", "8"), get_family("crctc"))

    killed = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "zipformer_crctc" / "train.py"),
           *[str(a) for a in _argv(corpus, killed, *common, "--max-batches", "1000")]]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not (killed / "checkpoint-2.pt").exists():
            assert proc.poll() is None, "training died before its first checkpoint"
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    first = ckpt.find_checkpoints(killed)
    assert first, "the killed run left no checkpoint"
    assert max(int(p.stem.split("-")[1]) for p in first) < 8, "the run went too far before the kill"

    state = train(_args(corpus, killed, *common, "--max-batches", "8"), get_family("crctc"))
    assert state.batch_idx_train == 8
    a, b = _weights(straight / "checkpoint-8.pt"), _weights(killed / "checkpoint-8.pt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    a, b = _weights(straight / "checkpoint-8.pt", "model_avg"), _weights(killed / "checkpoint-8.pt", "model_avg")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def _argv(corpus: Path, exp: Path, *extra: str) -> list[str]:
    return [
        "--exp-dir", exp, "--lang-dir", ROOT / "ipa_simplified", "--train-shar", corpus / "train",
        "--max-duration", "8", "--tensorboard", "0", "--log-interval", "2", "--num-threads", "1",
        "--average-period", "1", "--seed", "7", *SMALL_MODEL, *NO_AUG, *extra,
    ]


def test_non_finite_batches_are_skipped_and_counted(corpus, tmp_path, monkeypatch):
    task = get_family("crctc")
    real = task.compute_loss
    calls = {"n": 0}

    def sometimes_nan(model, batch, args, batch_idx, is_training):
        loss, info = real(model, batch, args, batch_idx, is_training)
        calls["n"] += 1
        if is_training and calls["n"] in (2, 3):
            loss = loss * float("nan")
        return loss, info

    monkeypatch.setattr(task, "compute_loss", sometimes_nan)
    exp = tmp_path / "exp"
    state = train(_args(corpus, exp, "--num-epochs", "10", "--max-batches", "6"), task)
    assert state.bad_total == 2 and state.batch_idx_train == 6
    for k, v in _weights(exp / "checkpoint-6.pt").items():
        assert torch.isfinite(v.float()).all(), f"{k} became non-finite"
    log = (exp / "log" / "log-train-0.txt").read_text()
    assert "non-finite loss" in log and "skipped" in log


def test_too_many_bad_batches_in_a_row_stop_the_run(corpus, tmp_path, monkeypatch):
    task = get_family("crctc")
    real = task.compute_loss
    def always_inf(*a):
        loss, info = real(*a)
        return loss * float("inf"), info

    monkeypatch.setattr(task, "compute_loss", always_inf)
    with pytest.raises(RuntimeError, match="3 batches in a row"):
        train(_args(corpus, tmp_path / "exp", "--num-epochs", "10", "--max-batches", "6",
                    "--max-bad-batches", "3"), task)


def test_gloo_ddp_two_processes(corpus, tmp_path):
    exp = tmp_path / "ddp"
    cmd = [sys.executable, str(ROOT / "zipformer_crctc" / "train.py"),
           *[str(a) for a in _argv(corpus, exp, "--world-size", "2", "--num-epochs", "20", "--max-batches", "4",
                                   # a time budget with a cool-down: the ranks share one clock (a collective)
                                   "--max-minutes", "30", "--cooldown-fraction", "0.5",
                                   "--master-port", str(29500 + os.getpid() % 1000))]]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    for rank in (0, 1):
        text = (exp / "log" / f"log-train-{rank}.txt").read_text()
        assert "world size 2" in text
    assert (exp / "checkpoint-4.pt").is_file()
    # DDP keeps the replicas identical: rank 0's saved weights are finite and were trained
    sd = _weights(exp / "checkpoint-4.pt")
    assert all(torch.isfinite(v.float()).all() for v in sd.values())


# reference phones of the tone corpus's dev cuts (write_tone_corpus(dev=6): aba kʰæt ʃiː mama goʊ tʃɛk)
DEV_PHONES = 3 + 3 + 2 + 4 + 3 + 4


def _per_of_errs(path: Path) -> tuple[float, int]:
    """(PER recomputed from the error counts in an errs-*.txt file, reference phones)."""
    m = re.search(r"Errors: (\d+) insertions, (\d+) deletions, (\d+) substitutions, over (\d+) reference",
                  path.read_text(encoding="utf-8"))
    assert m, path
    ins, dels, subs, n = map(int, m.groups())
    return 100.0 * (ins + dels + subs) / n, n


def test_transducer_training_loss_falls_and_decode_writes_results(corpus, tmp_path):
    from anyphone.evaluation.recipe import decode_main_cli

    exp = tmp_path / "exp"
    args = get_train_parser("transducer").parse_args([str(a) for a in _argv(corpus, exp)] + [
        "--num-epochs", "30", "--max-batches", "40", "--base-lr", "0.05", "--save-every-n", "20",
        "--warm-step", "20", "--rnnt-backend", "torch",
    ])
    state = train(args, get_family("transducer"))
    assert state.batch_idx_train == 40
    simple = _metrics(exp, "train", "simple_loss")
    assert np.mean(simple[-3:]) < 0.7 * np.mean(simple[:2]), simple
    assert _metrics(exp, "train", "pruned_loss")
    summary = decode_main_cli("transducer", [
        "--exp-dir", str(exp), "--iter", "40", "--avg", "1", "--use-averaged-model", "1",
        "--lang-dir", str(ROOT / "ipa_simplified"), "--test-shar", f"dev={corpus / 'dev'}", *SMALL_MODEL,
        "--num-workers", "0", "--max-duration", "8",
    ])
    res = exp / "greedy_search"
    per, phones = _per_of_errs(res / "errs-dev-iter-40-avg-1-use-averaged-model.txt")
    assert set(summary) == {"dev"} and summary["dev"]["PER"] == pytest.approx(per) and phones == DEV_PHONES
    errs = (res / "errs-dev-iter-40-avg-1-use-averaged-model.txt").read_text()
    recogs = (res / "recogs-dev-iter-40-avg-1-use-averaged-model.txt").read_text()
    assert errs.startswith("%PER = ") and "PER-UTT DETAILS" in errs
    assert recogs.count("ref=") == 6 and recogs.count("hyp=") == 6


def test_crctc_decode_averages_and_names_a_missing_checkpoint(corpus, tmp_path):
    from anyphone.evaluation.recipe import decode_main_cli

    exp = tmp_path / "exp"
    train(_args(corpus, exp, "--num-epochs", "10", "--max-batches", "6", "--save-every-n", "2"), get_family("crctc"))
    # no model flags: the exp dir's config.json describes the model
    common = ["--exp-dir", str(exp), "--lang-dir", str(ROOT / "ipa_simplified"),
              "--test-shar", f"dev={corpus / 'dev'}", "--num-workers", "0", "--max-duration", "8"]
    summary = decode_main_cli("crctc", [*common, "--iter", "6", "--avg", "2", "--use-averaged-model", "1",
                                        "--decoding-method", "ctc-prefix-beam-search", "--beam-size", "2",
                                        "--blank-penalty", "0.5", "--save-decode-options", "1"])
    assert "PFER" in summary["dev"]
    res = exp / "ctc-prefix-beam-search"
    assert (res / "per-summary-iter-6-avg-2-use-averaged-model.txt").is_file()
    per, phones = _per_of_errs(res / "errs-dev-iter-6-avg-2-use-averaged-model.txt")
    assert summary["dev"]["PER"] == pytest.approx(per) and phones == DEV_PHONES
    # the options are recorded for `anyphone recognize -m EXP` and load_model(EXP), the rest of config.json kept
    card = json.loads((exp / "config.json").read_text())
    assert card["decode"] == {"method": "ctc-prefix-beam-search", "beam_size": 2, "blank_penalty": 0.5,
                              "max_sym_per_frame": 1}
    assert card["family"] == "crctc" and card["model"]["name"] == "tiny"
    from anyphone.inference.api import load_model

    rec = load_model(exp, iter=6)
    assert rec.decode_options.blank_penalty == 0.5 and rec.decode_options.emit == pytest.approx(math.exp(0.5))
    # --avg 2 without the averaged model: the plain mean of checkpoint-6 and checkpoint-4
    summary = decode_main_cli("crctc", [*common, "--iter", "6", "--avg", "2", "--use-averaged-model", "0"])
    per, _ = _per_of_errs(exp / "ctc-greedy-search" / "errs-dev-iter-6-avg-2.txt")
    assert summary["dev"]["PER"] == pytest.approx(per)
    with pytest.raises(SystemExit, match="checkpoint-5.pt"):
        decode_main_cli("crctc", [*common, "--iter", "5", "--avg", "1"])
    # export.py reads config.json too: checkpoint-6's weights as pretrained.pt, and a config.json beside it
    from anyphone.export.recipe import export_main, get_export_parser

    out = tmp_path / "export"
    export_main(get_export_parser("crctc").parse_args([
        "--exp-dir", str(exp), "--iter", "6", "--avg", "1", "--use-averaged-model", "0", "--onnx", "0",
        "--lang-dir", str(ROOT / "ipa_simplified"), "--output-dir", str(out)]), "crctc")
    exported, trained = torch.load(out / "pretrained.pt", weights_only=True), _weights(exp / "checkpoint-6.pt")
    assert set(exported) == set(trained) and all(torch.equal(v, trained[k]) for k, v in exported.items())
    assert json.loads((out / "config.json").read_text())["model"] == card["model"]
    # a --model-size that config.json contradicts: one line naming config.json
    with pytest.raises(SystemExit) as e:
        decode_main_cli("crctc", [*common, "--iter", "6", "--model-size", "small"])
    assert str(e.value).startswith(f"{exp / 'config.json'}: the model was trained with --model-size tiny")
    assert "\n" not in str(e.value)


def test_cr_ctc_starts_at_cr_start_batch():
    """Before --cr-start-batch the step is plain CTC on the unmasked batch; from it on, two masked views and the
    CR term, ramped in from zero over --cr-warmup-batches."""
    from anyphone.models.ctc import CtcModel
    from anyphone.models.presets import get_preset

    task = get_family("crctc")
    parser = get_train_parser("crctc")
    args = parser.parse_args(["--cr-start-batch", "10", "--cr-warmup-batches", "4", "--time-mask-ratio", "1"])
    torch.manual_seed(0)
    model = CtcModel(get_preset("fixture_tiny"))
    seen = []
    model.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    batch = {"features": torch.randn(2, 150, 80), "feature_lens": torch.tensor([150, 120]),
             "token_ids": [[5, 6, 7], [8, 9]]}
    _, before = task.compute_loss(model, batch, args, 9, True)
    _, at_start = task.compute_loss(model, batch, args, 10, True)
    assert "cr_loss" not in before and "cr_loss" in at_start
    assert [x.shape[0] for x in seen] == [2, 4]
    assert torch.equal(seen[0], batch["features"])  # the warm-up batch goes in unmasked
    assert not torch.equal(seen[1][:2], batch["features"])
    # the CR weight ramps from 0 at the start batch, so the total loss is just the CTC term there
    args.ctc_loss_scale = 0.0
    loss_at_start, _ = task.compute_loss(model, batch, args, 10, True)
    loss_later, info_later = task.compute_loss(model, batch, args, 14, True)
    assert float(loss_at_start) == 0.0
    assert float(loss_later) == pytest.approx(0.15 * info_later["cr_loss"], rel=1e-5)


def test_an_epoch_without_a_batch_stops_with_one_line(corpus, tmp_path):
    # 24 train cuts of about a second never fill a 1000 s batch, and --drop-last drops the rest: every epoch
    # would be empty, and the loop used to write one epoch checkpoint after another without end
    exp = tmp_path / "exp"
    with pytest.raises(SystemExit) as e:
        train(_args(corpus, exp, "--max-duration", "1000", "--num-epochs", "1000"), get_family("crctc"))
    msg = str(e.value)
    assert f"--train-shar {corpus / 'train'}: epoch 1 gave no training batch: 24 cuts passed the filters" in msg
    assert "--drop-last false" in msg and "\n" not in msg
    assert not list(exp.glob("epoch-*.pt")) and not list(exp.glob("checkpoint-*.pt"))
    # every cut longer than --max-duration-per-cut: the message says the filters took them all
    with pytest.raises(SystemExit, match=r"epoch 1 gave no training batch: the filters removed every cut "
                                         r"\(duration: 24\); "):
        train(_args(corpus, exp, "--max-duration-per-cut", "0.1"), get_family("crctc"))
    # what the message suggests works
    state = train(_args(corpus, exp, "--max-duration", "1000", "--num-epochs", "2", "--drop-last", "false"),
                  get_family("crctc"))
    assert state.batch_idx_train == 4  # one short batch per duration bucket (2) and epoch


def test_resume_with_a_different_model_names_the_checkpoint(corpus, tmp_path):
    exp = tmp_path / "exp"
    train(_args(corpus, exp, "--max-batches", "2", "--save-every-n", "2"), get_family("crctc"))
    wider = _args(corpus, exp, "--max-batches", "4", "--embed-channels", "8,32,32")
    with pytest.raises(SystemExit, match=r"checkpoint-2\.pt: this checkpoint does not fit the model") as e:
        train(wider, get_family("crctc"))
    assert "\n" not in str(e.value)


def test_cooldown_factor_follows_the_nearer_budget():
    from anyphone.training.loop import budget_progress, cooldown_factor

    args = get_train_parser("crctc").parse_args(["--max-batches", "100", "--max-minutes", "10"])
    assert budget_progress(50, 2.0, args) == 0.5  # batches are the nearer limit
    assert budget_progress(10, 8.0, args) == 0.8  # minutes are
    assert budget_progress(500, 0.0, args) == 1.0
    assert budget_progress(5, 1.0, get_train_parser("crctc").parse_args([])) is None
    assert [cooldown_factor(p, 0.2) for p in (0.0, 0.8, 0.9, 1.0)] == pytest.approx([1.0, 1.0, 0.5, 0.0])
    assert cooldown_factor(0.95, 0.0) == 1.0 and cooldown_factor(None, 0.2) == 1.0


def test_cooldown_lowers_the_rate_to_zero_and_a_spent_budget_trains_nothing_more(corpus, tmp_path):
    exp = tmp_path / "exp"
    # a flat Eden (no warm-up, no decay), so the logged rate is base-lr times the cool-down factor
    flags = ["--max-batches", "8", "--cooldown-fraction", "0.5", "--base-lr", "0.04", "--warmup-batches", "0",
             "--lr-batches", "1e9", "--lr-epochs", "1e9", "--save-every-n", "4", "--num-epochs", "50"]
    state = train(_args(corpus, exp, *flags), get_family("crctc"))
    assert state.batch_idx_train == 8 and state.train_minutes > 0
    # the factor of batch b is set before its step from the budget spent so far, (b - 1) / 8
    assert _metrics(exp, "train", "lr") == pytest.approx([0.04, 0.04, 0.03, 0.01])  # batches 2, 4, 6, 8
    saved = torch.load(exp / "checkpoint-8.pt", map_location="cpu", weights_only=True)
    assert saved["scheduler"]["budget_factor"] == pytest.approx(0.25)
    # run again: the budget counts over resumes, so it is already spent and the weights stay as they were
    again = train(_args(corpus, exp, *flags), get_family("crctc"))
    assert again.batch_idx_train == 8
    assert not (exp / "checkpoint-9.pt").exists()
    with pytest.raises(SystemExit, match="needs a fixed budget"):
        train(_args(corpus, tmp_path / "other", "--cooldown-fraction", "0.2"), get_family("crctc"))
    with pytest.raises(SystemExit, match=r"--cooldown-fraction 1\.5: expected a fraction in \[0, 1\]"):
        train(_args(corpus, tmp_path / "other", "--max-batches", "4", "--cooldown-fraction", "1.5"),
              get_family("crctc"))


def test_budget_eta_reports_progress_of_a_batch_budget():
    import argparse

    from anyphone.training.loop import budget_eta

    args = argparse.Namespace(max_batches=100)
    # 10 batches took 60 s: 50 batches left are about 5 minutes
    assert budget_eta(args, 50, 60.0, 10) == ", batch 50 of 100 (50%), about 5 min left"
    assert budget_eta(args, 100, 60.0, 10) == ", batch 100 of 100 (100%), about 0 min left"
    assert budget_eta(argparse.Namespace(max_batches=0), 50, 60.0, 10) == ""
    # a new epoch's first log can cover 3 batches and the dataloader's start: no estimate from that
    assert budget_eta(args, 50, 30.0, 3) == ", batch 50 of 100 (50%)"


def test_budget_eta_counts_cr_ctc_batches_twice():
    """The demo's CR-CTC phase (two views a batch) takes twice as long a batch as the plain-CTC phase before
    it: the estimate made before the switch must include that, and the one made after it must not double it."""
    import argparse

    from anyphone.families import get_family
    from anyphone.training.loop import budget_eta

    family = get_family("crctc")
    args = argparse.Namespace(max_batches=100, use_cr_ctc=True, cr_start_batch=61)
    work = lambda first, last: family.work_between(args, first, last)
    assert [work(i, i) for i in (1, 60, 61, 100)] == [1.0, 1.0, 2.0, 2.0]
    assert work(1, 100) == 60 + 2 * 40 and work(55, 65) == 6 + 2 * 5 and work(71, 70) == 0
    # 10 plain batches took 60 s; then 10 plain (6 s each) and 40 two-view (12 s each): 540 s
    assert budget_eta(args, 50, 60.0, 10, work).endswith("about 9 min left")
    # in the CR phase, 10 batches took 120 s: 30 left are 6 minutes
    assert budget_eta(args, 70, 120.0, 10, work).endswith("about 6 min left")
    assert family.work_between(argparse.Namespace(use_cr_ctc=False, cr_start_batch=0), 1, 5) == 5.0
    assert get_family("transducer").work_between(args, 61, 80) == 20.0
