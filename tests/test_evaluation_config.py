"""The decode service's typed boundary: EvaluationConfig from decode.py's flags and back through plain dicts, and
``evaluate`` run from a config built in Python (no argparse) scoring exactly as decode.py's command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from training_fixtures import NO_AUG, SMALL_MODEL, write_tone_corpus
from training_fixtures import REPO as ROOT

from anyphone.data.config import DataConfig
from anyphone.decoding.options import DecodeOptions
from anyphone.evaluation.config import EvaluationConfig, WeightChoice
from anyphone.evaluation.recipe import decode_main_cli, get_decode_parser, model_flag_names


def _from_argv(argv: list[str], family: str = "crctc") -> EvaluationConfig:
    return EvaluationConfig.from_args(get_decode_parser(family, None, argv).parse_args(argv),
                                      model_flags=model_flag_names())


def test_defaults_agree_with_decode_py_flags():
    assert _from_argv([]) == EvaluationConfig()
    assert _from_argv([], "transducer") == EvaluationConfig()


def test_round_trip_through_flags_and_dicts(tmp_path):
    argv = ["--exp-dir", str(tmp_path / "exp"), "--iter", "6", "--avg", "2", "--use-averaged-model", "0",
            "--lang-dir", "lang", "--decoding-method", "ctc-prefix-beam-search", "--beam-size", "8",
            "--blank-penalty", "0.5", "--pfer", "0", "--device", "cpu", "--num-threads", "2",
            "--save-decode-options", "1", "--test-shar", "dev=data/dev", "--test-shar", "test=data/test",
            "--max-duration", "8", "--num-workers", "0", "--family", "crctc", *SMALL_MODEL]
    cfg = _from_argv(argv)
    assert cfg.weights == WeightChoice(exp_dir=tmp_path / "exp", iter=6, avg=2, use_averaged_model=False)
    assert cfg.weights.label == "iter-6-avg-2"
    assert cfg.decode == DecodeOptions(method="ctc-prefix-beam-search", beam_size=8, blank_penalty=0.5)
    assert (cfg.lang_dir, cfg.pfer, cfg.device, cfg.num_threads, cfg.save_decode_options, cfg.family) == (
        Path("lang"), False, "cpu", 2, True, "crctc")
    assert cfg.data.test_shar == ("dev=data/dev", "test=data/test") and cfg.data.max_duration == 8.0
    assert cfg.data.num_workers == 0
    # the model flags given, valued as the command line gives them; the family's training flags are not kept
    assert cfg.model_flags["model_size"] == "tiny" and cfg.model_flags["encoder_dim"] == "48,64,64,96,64,48"
    assert cfg.model_flags["pos_dim"] == 16 and len(cfg.model_flags) == len(SMALL_MODEL) // 2
    assert "use_cr_ctc" not in cfg.model_flags
    plain = json.loads(json.dumps(cfg.to_dict()))
    assert plain["weights"]["exp_dir"] == str(tmp_path / "exp") and plain["decode"]["beam_size"] == 8
    assert EvaluationConfig.from_dict(plain) == cfg
    # keys left out keep their defaults; the parts may be given as objects
    part = EvaluationConfig.from_dict({"decode": {"blank_penalty": 1.0}, "data": DataConfig(num_workers=0)})
    assert part.decode == DecodeOptions(blank_penalty=1.0) and part.weights == WeightChoice()


def test_bad_values_are_one_line():
    with pytest.raises(ValueError, match=r"^conf.json: evaluation config: unknown key\(s\) \['beam'\]"):
        EvaluationConfig.from_dict({"beam": 3}, "conf.json")
    with pytest.raises(ValueError, match=r"^weight choice: iter='six', expected an integer$"):
        EvaluationConfig.from_dict({"weights": {"iter": "six"}})
    with pytest.raises(ValueError, match=r"^evaluation config: decode: beam_size=0, expected an integer >= 1$"):
        EvaluationConfig.from_dict({"decode": {"beam_size": 0}})
    with pytest.raises(ValueError, match=r"^evaluation config: pfer='yes', expected true or false$"):
        EvaluationConfig(pfer="yes")
    with pytest.raises(ValueError, match=r"^evaluation config: model_flags=\['tiny'\]"):
        EvaluationConfig(model_flags=["tiny"])
    with pytest.raises(SystemExit, match=r"^decode options: beam_size=0, expected an integer >= 1$"):
        decode_main_cli("crctc", ["--beam-size", "0", "--iter", "1"])


@pytest.fixture(scope="module")
def exp_dir(tmp_path_factory) -> tuple[Path, Path]:
    """(tone corpus, an exp dir of 6 CR-CTC training batches with checkpoints at 2, 4 and 6)."""
    from anyphone.families import get_family
    from anyphone.training.loop import train
    from anyphone.training.recipe import get_train_parser

    corpus = write_tone_corpus(tmp_path_factory.mktemp("corpus"), dev=6)
    exp = tmp_path_factory.mktemp("eval") / "exp"
    args = get_train_parser("crctc").parse_args([
        "--exp-dir", str(exp), "--lang-dir", str(ROOT / "ipa_simplified"), "--train-shar", str(corpus / "train"),
        "--max-duration", "8", "--tensorboard", "0", "--num-threads", "1", "--average-period", "1", "--seed", "7",
        "--num-epochs", "5", "--max-batches", "6", "--save-every-n", "2", "--base-lr", "0.05", *SMALL_MODEL,
        *NO_AUG])
    train(args, get_family("crctc"))
    return corpus, exp


def test_evaluate_from_python_scores_as_decode_py(exp_dir):
    from anyphone.evaluation.run import evaluate

    corpus, exp = exp_dir
    cfg = EvaluationConfig(
        weights=WeightChoice(exp_dir=exp, iter=6, avg=2, use_averaged_model=True),
        lang_dir=ROOT / "ipa_simplified",
        decode=DecodeOptions(method="ctc-prefix-beam-search", beam_size=2, blank_penalty=3.0),
        data=DataConfig(test_shar=(f"dev={corpus / 'dev'}",), num_workers=0, max_duration=8.0),
        num_threads=1,
    )
    res = exp / "ctc-prefix-beam-search"
    recogs = res / "recogs-dev-iter-6-avg-2-use-averaged-model.txt"
    typed = evaluate(cfg, "crctc")
    typed_recogs = recogs.read_text(encoding="utf-8")
    assert set(typed) == {"dev"} and set(typed["dev"]) == {"PER", "PFER"}
    hyps = [line.split("hyp=", 1)[1] for line in typed_recogs.splitlines() if "hyp=" in line]
    assert len(hyps) == 6 and any(h.strip(" []'\"") for h in hyps)  # the penalty makes it emit phones
    cli = decode_main_cli("crctc", [
        "--exp-dir", str(exp), "--iter", "6", "--avg", "2", "--use-averaged-model", "1",
        "--lang-dir", str(ROOT / "ipa_simplified"), "--decoding-method", "ctc-prefix-beam-search",
        "--beam-size", "2", "--blank-penalty", "3.0", "--test-shar", f"dev={corpus / 'dev'}",
        "--num-workers", "0", "--max-duration", "8", "--num-threads", "1"])
    assert cli == typed
    assert recogs.read_text(encoding="utf-8") == typed_recogs
    # no method: the family's greedy search, written under its name
    greedy = evaluate(EvaluationConfig(weights=cfg.weights, lang_dir=cfg.lang_dir, data=cfg.data, pfer=False), "crctc")
    assert set(greedy["dev"]) == {"PER"}
    assert (exp / "ctc-greedy-search" / "errs-dev-iter-6-avg-2-use-averaged-model.txt").is_file()
    # the model flags are checked against config.json as decode.py's are
    with pytest.raises(SystemExit, match=r"config.json: the model was trained with --model-size tiny, not "
                                         r"--model-size small"):
        evaluate(EvaluationConfig(weights=cfg.weights, lang_dir=cfg.lang_dir, data=cfg.data,
                                  model_flags={"model_size": "small"}), "crctc")
    with pytest.raises(SystemExit, match="not --family transducer"):
        evaluate(EvaluationConfig(weights=cfg.weights, lang_dir=cfg.lang_dir, data=cfg.data, family="transducer"))
    # a search of another family is refused with the family's own one-line message
    with pytest.raises(SystemExit, match=r"^--decoding-method greedy_search: crctc models decode with "
                                         r"ctc-greedy-search or ctc-prefix-beam-search$"):
        evaluate(EvaluationConfig(weights=cfg.weights, lang_dir=cfg.lang_dir, data=cfg.data,
                                  decode=DecodeOptions(method="greedy_search")), "crctc")
