"""The third model family, BLSTM-CTC, through the same recipes, API and ONNX path as the Zipformer families:
train with ``zipformer_crctc``'s entry point and ``--family blstm_ctc``, then decode, export and recognise with no
model flag (the exp dir's config.json names the family)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from training_fixtures import NO_AUG, write_tone_corpus
from training_fixtures import REPO as ROOT

BLSTM = ["--family", "blstm_ctc", "--model-size", "tiny", "--blstm-layers", "1", "--blstm-hidden-dim", "48",
         "--blstm-conv-channels", "8", "--blstm-dropout", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    from anyphone.training.recipe import train_main

    corpus = write_tone_corpus(tmp_path_factory.mktemp("corpus"), dev=6)
    exp = tmp_path_factory.mktemp("blstm") / "exp"
    train_main("crctc", [
        "--exp-dir", str(exp), "--lang-dir", str(ROOT / "ipa_simplified"), "--train-shar", str(corpus / "train"),
        "--max-duration", "8", "--tensorboard", "0", "--log-interval", "3", "--num-threads", "1",
        "--average-period", "1", "--seed", "7", "--num-epochs", "30", "--max-batches", "30", "--base-lr", "0.05",
        "--warmup-batches", "5", "--save-every-n", "30", *BLSTM, *NO_AUG])
    return corpus, exp


def _metrics(exp: Path, key: str) -> list[float]:
    recs = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in recs if r["split"] == "train" and key in r]


def test_blstm_trains_through_the_crctc_recipe_and_records_its_family(trained):
    _, exp = trained
    losses = _metrics(exp, "loss")
    assert len(losses) == 10 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2]), losses
    card = json.loads((exp / "config.json").read_text())
    assert card["family"] == "blstm_ctc"
    assert card["model"]["num_layers"] == 1 and card["model"]["hidden_dim"] == 48 and card["model"]["vocab_size"] == 127
    sd = torch.load(exp / "checkpoint-30.pt", weights_only=True)["model"]
    from anyphone.families import detect_family

    assert detect_family(sd).name == "blstm_ctc"


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> tuple[Path, dict]:
    """export.py of the CTC recipe on the BLSTM exp dir, with no model flag."""
    from anyphone.export.recipe import export_main, get_export_parser

    _, exp = trained
    out = tmp_path_factory.mktemp("export")
    argv = ["--exp-dir", str(exp), "--iter", "30", "--avg", "1", "--use-averaged-model", "0",
            "--lang-dir", str(ROOT / "ipa_simplified"), "--output-dir", str(out)]
    return out, export_main(get_export_parser("crctc", None, argv).parse_args(argv), "crctc")


def test_decode_and_export_need_no_model_flags(trained, exported):
    from anyphone.evaluation.recipe import decode_main_cli

    corpus, exp = trained
    summary = decode_main_cli("crctc", [
        "--exp-dir", str(exp), "--iter", "30", "--avg", "1", "--use-averaged-model", "0",
        "--lang-dir", str(ROOT / "ipa_simplified"), "--test-shar", f"dev={corpus / 'dev'}", "--num-workers", "0",
        "--max-duration", "8", "--decoding-method", "ctc-prefix-beam-search", "--pfer", "0"])
    assert 0.0 <= summary["dev"]["PER"] <= 100.0
    assert (exp / "ctc-prefix-beam-search" / "recogs-dev-iter-30-avg-1.txt").read_text().count("hyp=") == 6
    with pytest.raises(SystemExit, match="not --family transducer"):
        decode_main_cli("crctc", ["--exp-dir", str(exp), "--iter", "30", "--use-averaged-model", "0", "--family", "transducer",
                                  "--test-shar", f"dev={corpus / 'dev'}"])

    out, written = exported
    onnx_path = written["model"][0]
    assert [p.name for p in written["model"]] == ["model-iter-30-avg-1.onnx"]

    import onnxruntime as ort

    from anyphone.families import get_family

    family = get_family("blstm_ctc")
    sd = torch.load(out / "pretrained.pt", weights_only=True)
    cfg, options = family.config_from_state_dict(sd, json.loads((out / "config.json").read_text())["model"])
    model = family.build(cfg, **options)
    model.load_state_dict(sd)
    model.eval()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert (meta["family"], meta["model_type"], meta["vocab_size"]) == ("blstm_ctc", "ctc", "127")
    # another batch size and length than the export's example (2 x 200)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 157, 80, generator=g)
    lens = torch.tensor([157, 120, 31])
    x[1, 120:] = 0.0
    x[2, 31:] = 0.0
    lp, lp_lens = sess.run(None, {"x": x.numpy(), "x_lens": lens.numpy()})
    with torch.no_grad():
        ref, ref_lens = model(x, lens)
    assert lp_lens.tolist() == ref_lens.tolist() == [(n - 7) // 2 for n in (157, 120, 31)]
    for i, n in enumerate(ref_lens.tolist()):
        np.testing.assert_allclose(lp[i, :n], ref[i, :n].numpy(), atol=1e-4)


def test_load_model_recognises_a_wav_with_torch_and_onnx(trained, exported, tmp_path):
    from anyphone.inference.api import load_model

    _, exp = trained
    rec = load_model(exp, iter=30, use_averaged_model=False)  # the weights exported above
    assert rec.family == "blstm_ctc" and rec.model_family.has_ctc and rec.frame_shift == pytest.approx(0.02)
    t = np.arange(16000) / 16000
    wav = tmp_path / "tone.wav"
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 160 * t) * np.sin(np.pi * t)).astype(np.float32), 16000)
    res = rec.recognize(wav, return_result=True)
    assert res.duration == pytest.approx(1.0) and res.frame_shift == pytest.approx(0.02)
    lp, dur = rec.frame_log_probs(wav)
    from anyphone.data.fbank import num_frames

    assert lp.shape == ((num_frames(16000) - 7) // 2, 127) and dur == pytest.approx(1.0)
    assert np.allclose(np.exp(lp).sum(-1), 1.0, atol=1e-4)
    # the same model exported: the ONNX recogniser names the family from the metadata and agrees
    _, written = exported
    rec_onnx = load_model(written["model"][0])
    assert rec_onnx.family == "blstm_ctc"
    assert rec_onnx.recognize(wav) == res.format()


def test_train_parser_takes_the_family_flag_and_its_flags():
    from anyphone.training.recipe import get_train_parser

    argv = ["--family", "blstm_ctc", "--blstm-hidden-dim", "8"]
    args = get_train_parser("crctc", None, argv).parse_args(argv)
    assert args.family == "blstm_ctc" and args.blstm_hidden_dim == 8
    with pytest.raises(SystemExit):  # a flag of another family is refused
        get_train_parser("crctc", None, argv).parse_args([*argv, "--use-cr-ctc", "1"])
