"""TrainingConfig (anyphone/training/config.py): the loop's knobs as a typed config, equal to the flags' defaults."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields, replace
from pathlib import Path

import pytest

from anyphone.data.config import DataConfig
from anyphone.training.config import TrainingConfig
from anyphone.training.loop import add_training_arguments, adjusted_batch_count, budget_eta, budget_progress
from anyphone.training.recipe import get_train_parser


@pytest.mark.parametrize("task", ["crctc", "transducer"])
def test_defaults_are_the_flags_defaults(task):
    parsed = get_train_parser(task).parse_args([])
    cfg = TrainingConfig.from_args(parsed)
    for f in fields(TrainingConfig):
        want = getattr(TrainingConfig(), f.name)
        assert getattr(cfg, f.name) == want, f.name
        # the Namespace holds the very same value and type (7500, not 7500.0: bitwise the same schedule)
        assert getattr(parsed, f.name) == want and type(getattr(parsed, f.name)) is type(want), f.name
    # the data knobs of the same parser are DataConfig's defaults, but for the task's own flag
    data = DataConfig.from_args(parsed)
    assert replace(data, use_unsup_cr_ctc=False) == DataConfig()


def test_every_training_flag_is_a_field():
    p = argparse.ArgumentParser()
    add_training_arguments(p)
    flags = set(vars(p.parse_args([])))
    # the two data flags the loop also reads (--seed, --max-duration) come from the data module's parser
    assert {f.name for f in fields(TrainingConfig)} == flags | {"seed", "max_duration"}


def test_from_args_reads_declared_attributes_and_types_them():
    parsed = get_train_parser("crctc").parse_args(
        [
            "--exp-dir",
            "runs/a",
            "--max-batches",
            "40",
            "--use-fp16",
            "1",
            "--init-from",
            "x.pt",
            "--seed",
            "7",
            "--max-duration",
            "30",
            "--world-size",
            "2",
            "--accum-grad",
            "3",
            "--ref-duration",
            "60",
        ]
    )
    cfg = TrainingConfig.from_args(parsed)
    assert cfg.exp_dir == Path("runs/a") and cfg.init_from == Path("x.pt") and cfg.max_batches == 40
    assert cfg.use_fp16 is True and cfg.seed == 7 and cfg.max_duration == 30.0
    # a Namespace without a flag (an API caller's) keeps the field default; other attributes are not read
    bare = TrainingConfig.from_args(argparse.Namespace(exp_dir="e", not_a_knob=1))
    assert bare == TrainingConfig(exp_dir=Path("e"))
    # the loop's helpers read the config
    assert adjusted_batch_count(10, cfg) == 10 * 30.0 * 2 * 3 / 60
    assert budget_progress(10, 0.0, cfg) == 0.25 and budget_eta(cfg, 10, 60.0, 10).startswith(
        ", batch 10 of 40"
    )
    assert budget_progress(10, 0.0, TrainingConfig()) is None


def test_round_trip_and_one_line_errors():
    cfg = TrainingConfig(
        exp_dir=Path("exp/x"), init_from=Path("/m/best.pt"), max_minutes=90, cooldown_fraction=0.2
    )
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["exp_dir"] == "exp/x" and d["init_from"] == "/m/best.pt"
    assert TrainingConfig.from_dict(d) == cfg
    with pytest.raises(ValueError) as e:
        TrainingConfig.from_dict({"max_batches": 10, "max_batchs": 20}, where="train.json")
    assert str(e.value).startswith("train.json: training config: unknown key(s) ['max_batchs']")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"^training config: use_bf16='no', expected true or false$"):
        TrainingConfig.from_dict({"use_bf16": "no"})
    with pytest.raises(ValueError, match=r"^training config: accum_grad=1\.5, expected an integer$"):
        TrainingConfig(accum_grad=1.5)
    with pytest.raises(ValueError, match=r"^training config: exp_dir=3, expected a path$"):
        TrainingConfig.from_dict({"exp_dir": 3})
