"""Noisy-student training: the three kinds of cut in batches and in the CR-CTC loss, the pseudo-labelling
service (confidence, filters, Shar round trip, resume) and the whole path from a teacher to a student."""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from training_fixtures import NO_AUG, SMALL_MODEL, write_tone_corpus
from training_fixtures import REPO as ROOT

from anyphone.data.module import PhoneDataModule
from anyphone.data.shar import DataError, label_kind, make_cut, open_shar, write_shar
from anyphone.families import get_family
from anyphone.text.tokenizer import IpaTokenizer
from anyphone.training.pseudo_label import (
    PseudoLabelConfig,
    Teacher,
    judge,
    label_confidences,
    pseudo_label_shar,
    read_shar_texts,
)
from anyphone.training.recipe import get_train_parser

TOK = IpaTokenizer.default()


def _tone(seconds: float, f0: float = 200.0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * f0 * t)).astype(np.float32)


# ------------------------------------------------------------------------------------------------------
# the loss


@functools.cache
def _model():
    from anyphone.models.ctc import CtcModel
    from anyphone.models.presets import get_preset

    torch.manual_seed(0)
    # eval mode: no dropout, and the Balancer/Whiten gradient terms (computed over the whole batch) are off,
    # so a row's gradient comes from the loss alone
    return CtcModel(get_preset("fixture_tiny")).eval()


def _crctc_args(*argv: str) -> argparse.Namespace:
    return get_train_parser("crctc").parse_args(["--cr-warmup-batches", "0", *argv])


def _batch(kinds: list[str], t: int = 60) -> dict:
    torch.manual_seed(1)
    x = torch.randn(len(kinds), t, 80).requires_grad_(True)
    return {"features": x, "feature_lens": torch.full((len(kinds),), t),
            "token_ids": [[] if k == "unlabelled" else [5, 6, 7] for k in kinds],
            "cut_ids": [f"{k}{i}" for i, k in enumerate(kinds)],
            "unsupervised": [k == "unlabelled" for k in kinds], "pseudo": [k == "pseudo" for k in kinds]}


def _grad_rows(args, kinds: list[str]) -> tuple[torch.Tensor, dict]:
    batch = _batch(kinds)
    torch.manual_seed(2)
    loss, info = get_family("crctc").compute_loss(_model(), batch, args, 10, True)
    loss.backward()
    return batch["features"].grad.abs().sum(dim=(1, 2)), info


def test_unlabelled_cut_gets_no_ctc_gradient_but_the_consistency_term():
    # CTC alone (CR weight 0): the unlabelled row gets no gradient at all, not the gradient of a silence target
    grads, info = _grad_rows(_crctc_args("--use-unsup-cr-ctc", "1", "--cr-loss-scale", "0"),
                             ["labelled", "unlabelled"])
    assert grads[0] > 0
    assert grads[1] == 0
    assert info["ctc_loss"] > 0
    # the consistency term alone (CTC weight 0): the unlabelled row does learn from it
    grads, info = _grad_rows(_crctc_args("--use-unsup-cr-ctc", "1", "--ctc-loss-scale", "0"),
                             ["labelled", "unlabelled"])
    assert grads[0] > 0 and grads[1] > 0
    assert info["cr_loss"] > 0
    # a batch of unlabelled cuts only: CTC is exactly 0 (a silence target would have a positive loss)
    _, info = _grad_rows(_crctc_args("--use-unsup-cr-ctc", "1"), ["unlabelled", "unlabelled"])
    assert info["ctc_loss"] == 0.0 and info["cr_loss"] > 0


def test_weights_of_unlabelled_consistency_and_pseudo_ctc():
    task = get_family("crctc")

    def loss_of(kinds, *argv):
        torch.manual_seed(3)
        loss, info = task.compute_loss(_model(), _batch(kinds), _crctc_args(*argv), 10, True)
        return float(loss), info

    full, _ = loss_of(["unlabelled"], "--use-unsup-cr-ctc", "1", "--unsup-cr-ctc-loss-scale", "1.0")
    half, _ = loss_of(["unlabelled"], "--use-unsup-cr-ctc", "1", "--unsup-cr-ctc-loss-scale", "0.5")
    assert full > 0 and half == pytest.approx(0.5 * full, rel=1e-5)
    # pseudo-labelled cuts: CTC weighted by --pseudo-ctc-loss-scale (plain CTC, no masks: deterministic)
    plain = ("--use-cr-ctc", "0", "--enable-model-spec-aug", "0")
    one, _ = loss_of(["pseudo"], *plain)
    low, _ = loss_of(["pseudo"], *plain, "--pseudo-ctc-loss-scale", "0.3")
    lab, _ = loss_of(["labelled"], *plain, "--pseudo-ctc-loss-scale", "0.3")
    assert low == pytest.approx(0.3 * one, rel=1e-5)
    assert lab == pytest.approx(one, rel=1e-6)  # labelled cuts keep weight 1


def test_a_batch_with_unlabelled_cuts_is_refused_when_the_flag_is_off():
    with pytest.raises(ValueError, match="unlabelled1.*--use-unsup-cr-ctc is off"):
        get_family("crctc").compute_loss(_model(), _batch(["labelled", "unlabelled"]), _crctc_args(), 10, True)


# ------------------------------------------------------------------------------------------------------
# cut kinds and batches


def test_label_kind_of_a_cut():
    w = _tone(0.5)
    assert label_kind(make_cut("a", w, "aba")) == "labelled"
    assert label_kind(make_cut("b", w, "")) == "unlabelled"  # no transcript and no kind: never silence
    assert label_kind(make_cut("c", w, "", custom={"label_kind": "labelled"})) == "labelled"  # silence, on purpose
    assert label_kind(make_cut("d", w, "aba", custom={"label_kind": "pseudo"})) == "pseudo"
    with pytest.raises(DataError, match="'e'.*'gold'"):
        label_kind(make_cut("e", w, "aba", custom={"label_kind": "gold"}))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """4 labelled, 2 pseudo-labelled, 2 unlabelled (one marked, one only without text) cuts, two folders."""
    root = tmp_path_factory.mktemp("mixed")
    lab = [make_cut(f"lab{i}", _tone(1.0, 150 + 30 * i), "aba", "eng") for i in range(4)]
    other = [make_cut("ps0", _tone(1.1), "mama", "eng", custom={"label_kind": "pseudo", "pseudo_confidence": 0.9}),
             make_cut("ps1", _tone(1.2), "goʊ", "eng", custom={"label_kind": "pseudo", "pseudo_confidence": 0.8}),
             make_cut("un0", _tone(1.3), "", "eng", custom={"label_kind": "unlabelled"}),
             make_cut("un1", _tone(0.9), "", "eng")]
    write_shar(lab, root / "lab", shard_size=4)
    write_shar(other, root / "other", shard_size=4)
    return root


def _data_args(root: Path, *extra: str, unsup: bool | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    PhoneDataModule.add_arguments(p)
    plain = ["--speed-perturb", "0", "--noise-prob", "0", "--volume-perturb-prob", "0", "--silence-pad-prob", "0",
             "--empty-prob", "0", "--num-workers", "0", "--num-buckets", "2", "--min-duration", "0",
             "--drop-last", "0", "--max-duration", "100"]
    args = p.parse_args(["--train-shar", f"{root / 'lab'}:1", "--train-shar", f"{root / 'other'}:1", *plain, *extra])
    if unsup is not None:  # the CR-CTC task's flag
        args.use_unsup_cr_ctc = unsup
    return args


def test_flag_off_drops_unlabelled_cuts_with_a_count(mixed, caplog):
    dm = PhoneDataModule(_data_args(mixed, unsup=False))
    with caplog.at_level("WARNING", logger="anyphone.data.module"):
        batches = list(dm.train_dataloader(TOK))
    seen = sorted(c for b in batches for c in b["cut_ids"])
    assert seen == ["lab0", "lab1", "lab2", "lab3", "ps0", "ps1"]
    assert dm.train_filter.removed["unlabelled"] == 2
    assert any("unlabelled cut(s) dropped" in r.message for r in caplog.records)
    # a task without the flag (the transducer) drops them too
    dm = PhoneDataModule(_data_args(mixed))
    assert sorted(c for b in dm.train_dataloader(TOK) for c in b["cut_ids"]) == seen


def test_flag_on_batches_carry_the_masks(mixed):
    dm = PhoneDataModule(_data_args(mixed, unsup=True))
    rows = {}
    for b in dm.train_dataloader(TOK):
        assert len(b["label_kinds"]) == len(b["unsupervised"]) == len(b["pseudo"]) == len(b["cut_ids"])
        for i, cid in enumerate(b["cut_ids"]):
            rows[cid] = (b["label_kinds"][i], b["unsupervised"][i], b["pseudo"][i], b["texts"][i], b["token_ids"][i])
    assert set(rows) == {"lab0", "lab1", "lab2", "lab3", "ps0", "ps1", "un0", "un1"}
    assert dm.train_filter.removed["unlabelled"] == 0
    assert rows["lab0"][:3] == ("labelled", False, False)
    assert rows["ps0"][:4] == ("pseudo", False, True, "mama") and rows["ps0"][4] == TOK.encode_one("mama")
    for cid in ("un0", "un1"):
        assert rows[cid] == ("unlabelled", True, False, "", [])


def test_cuts_emptied_by_the_silence_augmentation_are_labelled_silence(mixed):
    dm = PhoneDataModule(_data_args(mixed, "--empty-prob", "1.0", unsup=True))
    for b in dm.train_dataloader(TOK):
        assert b["texts"] == [""] * len(b["texts"])
        assert b["label_kinds"] == ["labelled"] * len(b["texts"])  # the empty transcript is then true
        assert not any(b["unsupervised"])


def test_dev_set_drops_unlabelled_cuts(mixed):
    dm = PhoneDataModule(_data_args(mixed, "--dev-shar", str(mixed / "other"), unsup=True))
    seen = sorted(c for b in dm.dev_dataloader(TOK) for c in b["cut_ids"])
    assert seen == ["ps0", "ps1"]


# ------------------------------------------------------------------------------------------------------
# pseudo-labelling


def test_confidence_is_the_per_token_ctc_probability_of_the_label():
    # 2 frames, tokens {blank, 1, 2}: P([1]) = p1(1) p2(b) + p1(b) p2(1) + p1(1) p2(1)
    p = torch.tensor([[[0.2, 0.7, 0.1], [0.6, 0.3, 0.1]]])
    want = 0.7 * 0.6 + 0.2 * 0.3 + 0.7 * 0.3
    got = label_confidences(p.log(), torch.tensor([2]), [[1]])
    assert got[0] == pytest.approx(want, rel=1e-6)
    # two tokens: the square root of the label's probability (per-token geometric mean)
    got = label_confidences(p.log(), torch.tensor([2]), [[1, 2]])
    assert got[0] == pytest.approx(math.sqrt(0.7 * 0.1), rel=1e-6)
    # a label that cannot fit its frames
    assert label_confidences(p.log(), torch.tensor([2]), [[1, 1]]) == [0.0]


def test_judge_rules():
    cfg = PseudoLabelConfig(teacher="x", min_confidence=0.5)
    assert judge([], 50, 0.99, cfg) == "empty"
    assert judge([5, 6] * 20, 40, 0.99, cfg) == "length"  # 40 frames needed > 0.85 * 40
    assert judge([5, 6] * 17, 40, 0.99, cfg) is None      # 34 <= 34
    assert judge([5, 5, 5], 5, 0.99, cfg) == "length"      # repeats need a blank between them: 5 > 4.25
    assert judge([5, 6, 7], 5, 0.99, cfg) is None          # 3 <= 4.25
    assert judge([5, 6, 7], 40, 0.49, cfg) == "confidence"


class _ScriptedTeacher(torch.nn.Module):
    """Stands in for a CTC model: the posteriors depend on the utterance length, so each test cut meets one
    case: 1.0 s confident "aba", 1.3 s the same label unsure, 1.6 s all blank, 1.9 s a label on every frame."""

    def __init__(self, a: int, b: int, vocab: int) -> None:
        super().__init__()
        self.a, self.b, self.vocab = a, b, vocab

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor):
        out_lens = (x_lens - 7) // 2
        t_max = int(out_lens.max())
        probs = torch.full((len(x_lens), t_max, self.vocab), 1e-4)
        for n, t in enumerate(out_lens.tolist()):
            seconds = (t * 2 + 7) / 100
            case = min(((1.0, "sure"), (1.3, "unsure"), (1.6, "empty"), (1.9, "dense")),
                       key=lambda c: abs(c[0] - seconds))[1]
            probs[n, :, 0] = 0.99 if case != "unsure" else 0.9
            if case in ("sure", "unsure"):
                for frame, tok in ((10, self.a), (20, self.b), (30, self.a)):
                    probs[n, frame, 0] = 0.01 if case == "sure" else 0.3
                    probs[n, frame, tok] = 0.99 if case == "sure" else 0.5
            elif case == "dense":
                for frame in range(t):
                    probs[n, frame, 0] = 0.01
                    probs[n, frame, self.a if frame % 2 else self.b] = 0.99
        probs = probs / probs.sum(-1, keepdim=True)
        return probs.log(), out_lens


def _scripted() -> Teacher:
    a, b = TOK.encode_one("ab")
    from anyphone.families.base import CtcFamily

    # the CTC families' shared hook runs any module whose forward gives (log-probs, lengths)
    return Teacher(_ScriptedTeacher(a, b, TOK.vocab_size), CtcFamily(), TOK, "scripted", torch.device("cpu"))


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory) -> Path:
    """8 unlabelled cuts in 2 shards, each case twice (see _ScriptedTeacher)."""
    root = tmp_path_factory.mktemp("unlab")
    cuts = []
    for i, (seconds, case) in enumerate([(1.0, "sure"), (1.3, "unsure"), (1.6, "empty"), (1.9, "dense")] * 2):
        cuts.append(make_cut(f"{case}{i}", _tone(seconds, 120 + 20 * i), "", "deu",
                             custom={"label_kind": "unlabelled"}))
    write_shar(cuts, root / "in", shard_size=4)
    return root


def test_pseudo_labels_round_trip_with_confidences_and_counted_filters(unlabelled, tmp_path):
    out = tmp_path / "pseudo"
    cfg = PseudoLabelConfig(teacher="scripted", min_confidence=0.5, progress=False)
    refs = {f"sure{i}": "aba" for i in (0, 4)} | {f"unsure{i}": "abba" for i in (1, 5)}
    report = pseudo_label_shar(unlabelled / "in", out, cfg, teacher=_scripted(), references=refs)
    t = report.totals
    assert report.complete and sorted(report.done_now) == [0, 1]
    assert (t.cuts, t.kept, t.written, t.unreadable) == (8, 2, 8, 0)
    assert t.rejected == {"empty": 2, "length": 2, "confidence": 2}
    assert (t.ref_kept_errors, t.ref_kept_phones) == (0, 6)  # "aba" against "aba", twice
    assert (t.ref_rejected_errors, t.ref_rejected_phones) == (2, 8)  # "aba" against "abba": one deletion each
    assert "rejected: empty 2, length 2, confidence 2" in report.summary()
    saved = json.loads((out / "pseudo_label_report.json").read_text())
    assert saved["kept"] == 2 and saved["rejected"]["length"] == 2

    src = {c.id: c for c in open_shar(unlabelled / "in")}
    got = {c.id: c for c in open_shar(out)}
    assert set(got) == set(src)
    for cid, cut in got.items():
        case = cid.rstrip("0123456789")
        assert cut.custom["teacher"].startswith("scripted (ctc-greedy-search) sha256:")
        assert cut.custom["language"] == "deu"
        assert 0.0 <= cut.custom["pseudo_confidence"] <= 1.0
        np.testing.assert_allclose(cut.load_audio()[0], src[cid].load_audio()[0], atol=1e-4)  # FLAC, 16 bit
        if case == "sure":
            assert label_kind(cut) == "pseudo" and cut.supervisions[0].text == "aba"
            assert cut.custom["pseudo_confidence"] > 0.5
        else:
            assert label_kind(cut) == "unlabelled" and cut.supervisions[0].text == ""
            assert cut.custom["pseudo_rejected"] == {"unsure": "confidence", "empty": "empty",
                                                     "dense": "length"}[case]
    assert got["unsure1"].custom["pseudo_confidence"] < 0.5 < got["sure0"].custom["pseudo_confidence"]
    # the confidence written is the definition's (the teacher's own posteriors, the label's CTC probability)
    lp, lens = _scripted().log_probs([src["sure0"].load_audio()[0]])
    want = label_confidences(lp, lens, [TOK.encode_one("aba")])[0]
    assert got["sure0"].custom["pseudo_confidence"] == pytest.approx(want, abs=1e-6)

    # resume: nothing left to do; a lost progress record redoes that shard alone
    again = pseudo_label_shar(unlabelled / "in", out, cfg, teacher=_scripted())
    assert again.done_now == [] and again.done_before == [0, 1] and again.totals.kept == 2
    (out / "pseudo_label_progress" / "000001.json").unlink()
    again = pseudo_label_shar(unlabelled / "in", out, cfg, teacher=_scripted())
    assert again.done_now == [1] and again.complete and again.totals.rejected == t.rejected
    # other settings in the same folder are refused, not mixed in
    with pytest.raises(DataError, match="min_confidence 0.5"):
        pseudo_label_shar(unlabelled / "in", out, PseudoLabelConfig(teacher="scripted", min_confidence=0.7,
                                                                   progress=False), teacher=_scripted())


def test_rejected_cuts_can_be_left_out_and_shards_split_by_rank(unlabelled, tmp_path):
    out = tmp_path / "kept-only"
    for rank in (1, 0):  # two "processes" of a torchrun job, the second one finishes the run
        cfg = PseudoLabelConfig(teacher="scripted", min_confidence=0.5, keep_rejected=False, rank=rank,
                                world_size=2, progress=False)
        report = pseudo_label_shar(unlabelled / "in", out, cfg, teacher=_scripted())
        assert report.done_now == [rank]
        assert report.complete == (rank == 0)
    assert (report.totals.kept, report.totals.written) == (2, 2)
    assert report.totals.rejected == {"empty": 2, "length": 2, "confidence": 2}
    assert sorted(c.id for c in open_shar(out)) == ["sure0", "sure4"]
    assert read_shar_texts(out) == {"sure0": "aba", "sure4": "aba"}


def test_bad_inputs_are_one_line(unlabelled, tmp_path):
    with pytest.raises(DataError, match="is the input folder"):
        pseudo_label_shar(unlabelled / "in", unlabelled / "in", PseudoLabelConfig(teacher="x"), teacher=_scripted())
    with pytest.raises(ValueError, match="min_confidence 2"):
        PseudoLabelConfig(teacher="x", min_confidence=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pseudo_label_shar(tmp_path / "missing", tmp_path / "o", PseudoLabelConfig(teacher="x"), teacher=_scripted())


# ------------------------------------------------------------------------------------------------------
# end to end: teacher -> pseudo-labels (the command line, an exp dir) -> student


def test_teacher_pseudo_labels_student(tmp_path):
    from anyphone.training.loop import train

    sys.path.insert(0, str(ROOT / "local"))
    import pseudo_label as face
    import split_labelled

    corpus = write_tone_corpus(tmp_path / "corpus")
    ns = tmp_path / "ns"
    counts = split_labelled.split(str(corpus / "train"), ns, 1 / 3, seed=0, shard_size=8)
    assert counts["labelled"] + counts["unlabelled"] == 24 and min(counts.values()) > 0
    assert all(label_kind(c) == "unlabelled" and not c.supervisions[0].text for c in open_shar(ns / "unlabelled"))

    common = ["--lang-dir", str(ROOT / "ipa_simplified"), "--max-duration", "8", "--tensorboard", "0",
              "--num-threads", "1", "--average-period", "1", "--seed", "7", "--drop-last", "0",
              "--num-epochs", "50", "--save-every-n", "2", "--log-interval", "1", *SMALL_MODEL, *NO_AUG]
    teacher = tmp_path / "teacher"
    train(get_train_parser("crctc").parse_args(["--exp-dir", str(teacher), "--train-shar", str(ns / "labelled"),
                                                "--max-batches", "4", *common]), get_family("crctc"))
    rc = face.main(["--teacher", str(teacher), "--iter", "4", "--avg", "1", "--input", str(ns / "unlabelled"),
                    "--output", str(ns / "pseudo"), "--num-threads", "1", "--progress", "0",
                    "--reference-shar", str(corpus / "train")])
    assert rc == 0
    report = json.loads((ns / "pseudo" / "pseudo_label_report.json").read_text())
    assert report["cuts"] == counts["unlabelled"]
    assert report["kept"] + sum(report["rejected"].values()) == report["cuts"]
    assert "iter-4-avg-1-use-averaged-model" in report["teacher"]
    assert report["ref_kept_phones"] + report["ref_rejected_phones"] > 0

    student = tmp_path / "student"
    state = train(get_train_parser("crctc").parse_args(
        ["--exp-dir", str(student), "--train-shar", f"{ns / 'labelled'}:1", "--train-shar", f"{ns / 'pseudo'}:2",
         "--use-unsup-cr-ctc", "1", "--max-batches", "4", *common]), get_family("crctc"))
    assert state.batch_idx_train == 4
    log = (student / "log" / "log-train-0.txt").read_text()
    assert f"({counts['labelled']} labelled, " in log


def test_a_damaged_shard_is_named_and_left_for_a_rerun(unlabelled, tmp_path):
    import shutil

    src = tmp_path / "in"
    shutil.copytree(unlabelled / "in", src)
    tar = src / "recording.000001.tar"
    whole = tar.read_bytes()
    tar.write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    cfg = PseudoLabelConfig(teacher="scripted", progress=False)
    report = pseudo_label_shar(src, out, cfg, teacher=_scripted())
    assert report.done_now == [0] and list(report.failed) == [1] and not report.complete
    assert "cuts.000001.jsonl.gz" in report.failed[1]
    assert not (out / "pseudo_label_report.json").exists()
    tar.write_bytes(whole)  # repaired: the rerun does shard 1 alone and completes
    report = pseudo_label_shar(src, out, cfg, teacher=_scripted())
    assert report.done_now == [1] and report.complete and report.totals.cuts == 8
