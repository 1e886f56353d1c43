"""`anyphone finetune`: Kaldi dir -> Shar -> fine-tuning from a checkpoint -> best-valid.pt that load_model reads."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from training_fixtures import ZIPA_REF

from anyphone.cli import main as cli_main
from anyphone.models.presets import get_preset
from anyphone.training.finetune import (
    FinetuneError,
    build_parser,
    build_train_args,
    prepare_data,
    resolve_init_model,
    split_kaldi_dir,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ZIPA_REF
TOKENS = ROOT / "anyphone" / "text" / "tokens.txt"
TEXTS = ["a b a", "kʰ æ t", "ʃ iː", "m a m a", "ɡ o ʊ", "tʃ ɛ k", "n ɪ ŋ"]
# training flags passed through `finetune`: tiny batches, no augmentation, no worker processes
FAST = [
    "--max-batches", "30", "--num-workers", "0", "--tensorboard", "0", "--num-threads", "1",
    "--speed-perturb", "0", "--noise-prob", "0", "--volume-perturb-prob", "0", "--silence-pad-prob", "0",
    "--empty-prob", "0", "--min-duration", "0", "--log-interval", "1", "--seed", "3",
]


@pytest.fixture(autouse=True)
def _restore_logging():
    """Training installs root log handlers bound to this test's captured stderr; put the old ones back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)


@pytest.fixture(scope="module")
def kaldi_dir(tmp_path_factory) -> Path:
    """14 sine-tone utterances (relative paths in `wave`), plus one file that is not audio."""
    root = tmp_path_factory.mktemp("kaldi")
    (root / "wav").mkdir()
    rng = np.random.default_rng(0)
    wave, text, lang = [], [], []
    for i in range(14):
        dur = float(rng.uniform(0.9, 1.3))
        t = np.arange(int(dur * 16000)) / 16000
        x = 0.3 * np.sin(2 * np.pi * (150 + 40 * (i % len(TEXTS))) * t) + 0.003 * rng.standard_normal(len(t))
        sf.write(root / "wav" / f"u{i:02d}.wav", x.astype(np.float32), 16000)
        wave.append(f"u{i:02d} wav/u{i:02d}.wav")
        text.append(f"u{i:02d} {TEXTS[i % len(TEXTS)]}")
        lang.append(f"u{i:02d} eng")
    (root / "wav" / "bad.wav").write_bytes(b"RIFF this is not a wave file" * 20)
    wave.append("bad wav/bad.wav")
    text.append("bad a b")
    (root / "wave").write_text("\n".join(wave) + "\n", encoding="utf-8")
    (root / "text").write_text("\n".join(text) + "\n", encoding="utf-8")
    (root / "utt2lang").write_text("\n".join(lang) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory) -> Path:
    """A CR-CTC state_dict of the `fixture_tiny` shape (about 1M parameters) with tokens.txt beside it."""
    from anyphone.models.ctc import CtcModel

    d = tmp_path_factory.mktemp("init")
    torch.manual_seed(0)
    torch.save(CtcModel(get_preset("fixture_tiny")).state_dict(), d / "model.pt")
    shutil.copyfile(TOKENS, d / "tokens.txt")
    return d / "model.pt"


def _argv(kaldi_dir: Path, init: Path | str, exp: Path, *extra: str) -> list[str]:
    return ["finetune", "-i", str(kaldi_dir), "--init-from", str(init), "--exp-dir", str(exp),
            "--num-epochs", "2", "--max-duration", "4", "--dev-fraction", "0.25", "--device", "cpu",
            *FAST, *extra]


def test_finetune_end_to_end(kaldi_dir, init_ckpt, tmp_path, capsys):
    from anyphone.inference.api import load_model

    exp = tmp_path / "exp"
    assert cli_main(_argv(kaldi_dir, init_ckpt, exp)) == 0
    out = capsys.readouterr().out

    # 1. Shar written, the bad file named and skipped
    assert (exp / "data" / "train" / "cuts.000000.jsonl.gz").is_file()
    assert (exp / "data" / "dev" / "cuts.000000.jsonl.gz").is_file()
    prepared = json.loads((exp / "data" / "prepared.json").read_text())
    assert prepared["train"] + prepared["dev"] == 14 and prepared["dev"] >= 3
    assert prepared["skipped"] == ["bad (audio file cannot be decoded)"]
    assert "skipped 1 utterance(s): bad (audio file cannot be decoded)" in out

    # 2./3. initialised from the checkpoint, validated at each epoch end, best weights kept
    log = (exp / "log" / "log-train-0.txt").read_text()
    assert f"from {init_ckpt} (0 skipped" in log
    assert "Validation at epoch 1" in log and "Validation at epoch 2" in log
    # the small set was batched so that it trains (30 buckets with dropped partial batches would give 0)
    assert int(re.search(r"Done: (\d+) batches", log).group(1)) >= 4
    pers = [json.loads(line)["err_rate"] for line in (exp / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["split"] == "valid"]
    assert len(pers) == 2
    best = exp / "best-valid.pt"
    assert best.is_file()
    assert f"best dev PER {min(pers):.2f}%" in out
    assert f"anyphone recognize -i x.wav -m {best}" in out

    # best-valid.pt loads with load_model (config.json and tokens.txt beside it) and recognises audio
    rec = load_model(best)
    t = np.arange(16000) / 16000
    result = rec.recognize((0.3 * np.sin(2 * np.pi * 190 * t)).astype(np.float32), sample_rate=16000,
                           return_result=True)
    saved = torch.load(best, weights_only=True)["model"]  # the best weights themselves were loaded
    assert set(rec.model.state_dict()) == set(saved)
    assert all(torch.equal(v, saved[k]) for k, v in rec.model.state_dict().items())
    assert result.duration == pytest.approx(1.0) and result.text == " ".join(result.phones)
    assert rec.family == "crctc" and "fixture_tiny" in (exp / "config.json").read_text()

    # running the same command again converts nothing and loses nothing
    mtime = (exp / "data" / "train" / "cuts.000000.jsonl.gz").stat().st_mtime_ns
    assert cli_main(_argv(kaldi_dir, init_ckpt, exp)) == 0
    out = capsys.readouterr().out
    assert "data already prepared" in out
    assert (exp / "data" / "train" / "cuts.000000.jsonl.gz").stat().st_mtime_ns == mtime
    assert best.is_file() and "best dev PER" in out


def test_missing_init_model_is_a_one_line_error(kaldi_dir, tmp_path, capsys):
    exp = tmp_path / "exp"
    assert cli_main(_argv(kaldi_dir, tmp_path / "nope" / "model.pt", exp)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope/model.pt" in err and "--init-from" in err
    assert not (exp / "data").exists(), "data was converted although the model is missing"


def test_missing_data_dir_and_unknown_flag_are_one_line_errors(kaldi_dir, init_ckpt, tmp_path, capsys):
    assert cli_main(_argv(tmp_path / "no_data", init_ckpt, tmp_path / "e1")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no_data does not exist" in err
    assert cli_main(_argv(kaldi_dir, init_ckpt, tmp_path / "e2", "--no-such-flag", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--no-such-flag" in err


def test_dev_split_is_deterministic(kaldi_dir, tmp_path):
    a_train, a_dev = split_kaldi_dir(kaldi_dir, tmp_path / "a", 0.25)
    b_train, b_dev = split_kaldi_dir(kaldi_dir, tmp_path / "b", 0.25)
    dev_ids = [line.split()[0] for line in (a_dev / "text").read_text().splitlines()]
    train_ids = [line.split()[0] for line in (a_train / "text").read_text().splitlines()]
    assert (b_dev / "text").read_text() == (a_dev / "text").read_text()
    assert (b_train / "wav.scp").read_text() == (a_train / "wav.scp").read_text()
    # 14 usable utterances (bad.wav exists and is not empty, so 15): round(0.25 * 15) = 4 held out
    assert len(dev_ids) == 4 and not set(dev_ids) & set(train_ids)
    assert len(dev_ids) + len(train_ids) == 15
    for line in (a_train / "wav.scp").read_text().splitlines():
        assert Path(line.split(maxsplit=1)[1]).is_absolute()
    with pytest.raises(FinetuneError, match="dev-fraction"):
        split_kaldi_dir(kaldi_dir, tmp_path / "c", 1.5)


def test_non_preset_shape_comes_from_config_json(tmp_path):
    """A shape no preset has: config.json beside the checkpoint gives what the tensors cannot tell
    (encoder_unmasked_dim), and the training flags rebuild exactly that configuration."""
    from anyphone.models.ctc import CtcModel
    from anyphone.models.presets import config_from_args

    cfg = get_preset("fixture_tiny").replace(num_encoder_layers=(1, 1, 1, 1, 1, 1),
                                             encoder_unmasked_dim=(16, 32, 32, 48, 32, 16), name="custom")
    torch.save({"model": CtcModel(cfg).state_dict()}, tmp_path / "model.pt")
    (tmp_path / "config.json").write_text(json.dumps({"model": cfg.to_dict(), "family": "crctc"}))
    init = resolve_init_model(tmp_path / "model.pt")
    assert init.family == "crctc" and init.config.encoder_unmasked_dim == (16, 32, 32, 48, 32, 16)
    opts = build_parser().parse_args(["-i", "x", "--init-from", "y", "--exp-dir", str(tmp_path / "exp")])
    args = build_train_args(opts, init, ["--max-minutes", "5"])
    assert args.max_minutes == 5.0 and args.base_lr == 0.01 and args.valid_every_epoch and args.keep_best
    assert args.init_from == tmp_path / "model.pt" and args.warmup_batches == 100
    rebuilt = config_from_args(args).to_dict()
    want = cfg.to_dict()
    assert {k: v for k, v in rebuilt.items() if k != "name"} == {k: v for k, v in want.items() if k != "name"}


def test_transducer_fixture_picks_the_transducer_task(tmp_path):
    if not (SHARED / "tiny_transducer.pt").is_file():
        pytest.skip(f"ZIPA reference fixtures not found in {SHARED}")
    fx = torch.load(SHARED / "tiny_transducer.pt", map_location="cpu", weights_only=True)
    torch.save(fx["state_dict"], tmp_path / "zipa_tiny_t.pth")
    init = resolve_init_model(tmp_path / "zipa_tiny_t.pth")  # no tokens.txt: built-in ZIPA tokens (127)
    assert init.family == "transducer" and init.config.name == "fixture_tiny" and init.tokens is None
    opts = build_parser().parse_args(["-i", "x", "--init-from", "y", "--exp-dir", str(tmp_path / "exp")])
    args = build_train_args(opts, init, [])
    assert hasattr(args, "prune_range") and args.decoder_dim == 64 and args.use_ctc is False


def test_published_name_and_exp_dir_resolve(init_ckpt, tmp_path, monkeypatch):
    """A registry name is looked up in the Hugging Face cache (offline here); an exp dir gives best-valid.pt."""
    snap = tmp_path / "hub" / "models--anyspeech--zipa-small-crctc-500k" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0" * 40)
    shutil.copyfile(init_ckpt, snap / "zipa_small_crctc_500000_avg10.pth")  # stand-in weights, tiny shape
    shutil.copyfile(TOKENS, snap / "tokens.txt")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    init = resolve_init_model("zipa-cr-small-500k")
    assert init.checkpoint == snap / "zipa_small_crctc_500000_avg10.pth" and init.tokens == snap / "tokens.txt"
    assert init.family == "crctc" and init.label == "zipa-cr-small-500k"
    with pytest.raises(FinetuneError, match="zipa-t-large-500k.*HF_HUB_OFFLINE"):
        resolve_init_model("zipa-t-large-500k")

    exp = tmp_path / "exp"
    exp.mkdir()
    torch.save({"model": torch.load(init_ckpt, weights_only=True), "valid": {"err_rate": 12.5}}, exp / "best-valid.pt")
    torch.save({"model": torch.load(init_ckpt, weights_only=True)}, exp / "epoch-3.pt")
    assert resolve_init_model(exp).checkpoint == exp / "best-valid.pt"


def test_prepare_data_with_dev_dir_reuses_and_guards(kaldi_dir, tmp_path, capsys):
    dev = tmp_path / "dev_src"
    dev.mkdir()
    lines = (kaldi_dir / "wave").read_text().splitlines()[:3]
    (dev / "wav.scp").write_text("".join(f"{ln.split()[0]} {kaldi_dir / ln.split()[1]}\n" for ln in lines))
    (dev / "text").write_text("".join(ln + "\n" for ln in (kaldi_dir / "text").read_text().splitlines()[:3]))
    first = prepare_data(kaldi_dir, tmp_path / "data", dev_dir=dev, language="eng")
    assert (first.train_count, first.dev_count, first.reused) == (14, 3, False)
    again = prepare_data(kaldi_dir, tmp_path / "data", dev_dir=dev, language="eng")
    assert again.reused and again.train_count == 14 and abs(again.train_seconds - first.train_seconds) < 1e-6
    with pytest.raises(FinetuneError, match="other settings .*language"):
        prepare_data(kaldi_dir, tmp_path / "data", dev_dir=dev, language="fra")


def test_schedule_wrapper_pickles_for_ddp_and_delegates():
    import pickle

    from anyphone.families import get_family
    from anyphone.training.finetune import _PretrainedScheduleTask

    task = pickle.loads(pickle.dumps(_PretrainedScheduleTask(get_family("transducer"), 50000.0)))
    assert task.name == "transducer" and task.output_downsampling_factor == 2 and task.offset == 50000.0


def test_schedule_wrapper_starts_zipformer_schedules_past_warmup():
    from argparse import Namespace

    from anyphone.models.ctc import CtcModel
    from anyphone.models.scaling import ScheduledFloat
    from anyphone.training.finetune import _PretrainedScheduleTask

    class Inner:
        name = "crctc"

        @staticmethod
        def compute_loss(model, batch, args, batch_idx_train, is_training):
            return torch.zeros(()), {"frames": 1.0}

    model = CtcModel(get_preset("fixture_tiny"))
    args = Namespace(max_duration=100.0, world_size=1, accum_grad=1, ref_duration=600.0)
    _PretrainedScheduleTask(Inner(), 50000.0).compute_loss(model, {}, args, 6, True)
    counts = {m.batch_count for m in model.modules() if isinstance(m, ScheduledFloat)}
    assert counts == {50001.0}
