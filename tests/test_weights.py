"""Tests for the weights layer's exp-dir side (anyphone.weights.expdir: config.json, weight selection) and for
anyphone.decoding.options.DecodeOptions (the blank penalty and Allosaurus's emit as one knob)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from anyphone.decoding.options import DecodeOptions
from anyphone.families import infer_family_size
from anyphone.weights import checkpoint as ckpt
from anyphone.weights.expdir import (
    is_exp_dir,
    model_section,
    read_config,
    read_model_config,
    record_decode_options,
    select_state_dict,
    write_config,
)

# ---------------------------------------------------------------------------------------------- DecodeOptions


def test_decode_options_round_trip_and_the_emit_relation():
    opts = DecodeOptions(method="ctc-prefix-beam-search", beam_size=8, blank_penalty=0.5)
    assert DecodeOptions.from_dict(json.loads(json.dumps(opts.to_dict()))) == opts
    assert opts.emit == pytest.approx(math.exp(0.5))
    assert DecodeOptions().emit == 1.0
    back = opts.with_emit(opts.emit)
    assert back.blank_penalty == pytest.approx(0.5) and back.method == opts.method
    assert DecodeOptions().with_emit(0.01).blank_penalty == pytest.approx(math.log(0.01))


@pytest.mark.parametrize("bad, match", [
    ({"blank_penalty": float("nan")}, "blank_penalty=nan"),
    ({"beam_size": 0}, "beam_size=0"),
    ({"max_sym_per_frame": 1.5}, "max_sym_per_frame=1.5"),
    ({"beam": 4}, r"unknown decode option\(s\) \['beam'\]"),
])
def test_decode_options_refuse_bad_values_naming_where(bad, match):
    with pytest.raises(ValueError, match=f"^exp/config.json: decode: .*{match}"):
        DecodeOptions.from_dict(bad, "exp/config.json: decode")
    with pytest.raises(ValueError, match="emit=0"):
        DecodeOptions().with_emit(0)


# ---------------------------------------------------------------------------------------------- config.json


def test_config_json_written_read_and_decode_options_kept_for_the_same_model(tmp_path):
    model = {"name": "tiny", "encoder_dim": "48,64"}
    write_config(tmp_path, model=model, family="crctc", num_params=1000, tokens="tokens.txt")
    card = read_config(tmp_path)
    assert card == {"model": model, "family": "crctc", "num_params": 1000, "tokenizer": {"tokens": "tokens.txt"}}
    record_decode_options(tmp_path, DecodeOptions(blank_penalty=0.5).to_dict())
    assert read_config(tmp_path)["decode"]["blank_penalty"] == 0.5
    assert read_config(tmp_path)["num_params"] == 1000  # the rest of the file is kept
    write_config(tmp_path, model=model, family="crctc", num_params=1000)  # a resumed run: same model
    assert read_config(tmp_path)["decode"]["blank_penalty"] == 0.5
    write_config(tmp_path, model={**model, "encoder_dim": "64,64"}, family="crctc")  # another model
    assert "decode" not in read_config(tmp_path)
    assert not list(tmp_path.glob(".tmp*")) and not list(tmp_path.glob("*.tmp*"))  # atomic writes, no leftovers


def test_config_json_layouts_and_bad_files(tmp_path):
    assert read_config(tmp_path) is None and model_section(None) is None
    bare = tmp_path / "x.json"  # a bare ZipformerConfig dict beside a .pth reads as its model section
    bare.write_text('{"name": "small"}', encoding="utf-8")
    assert read_model_config(tmp_path / "missing.json", bare) == {"name": "small"}
    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"config.json: not valid JSON \(.* at line 1\)$"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="config.json: expected a JSON object, got list"):
        read_config(tmp_path)


# ---------------------------------------------------------------------------------------------- selection


def _exp(tmp_path, steps=(2, 4, 6)):
    """checkpoint-N.pt files of a one-weight model whose weight is N and whose running average is the mean of
    the snapshots 1..N (as training keeps it with average_period=1)."""
    for n in steps:
        model = nn.Linear(1, 1, bias=False)
        avg = nn.Linear(1, 1, bias=False).double()
        with torch.no_grad():
            model.weight.fill_(float(n))
            avg.weight.fill_((n + 1) / 2)
        ckpt.save_checkpoint(tmp_path / f"checkpoint-{n}.pt", model, model_avg=avg, params={"batch_idx_train": n},
                             rng=False)
    return tmp_path


def test_select_state_dict_follows_icefall_rules(tmp_path):
    exp = _exp(tmp_path)
    assert is_exp_dir(exp) and not is_exp_dir(tmp_path / "nothing")
    sd, source = select_state_dict(exp, iter=6, avg=1, use_averaged_model=False)
    assert float(sd["weight"]) == 6.0 and source == str(exp / "checkpoint-6.pt")
    sd, _ = select_state_dict(exp, iter=6, avg=2, use_averaged_model=False)
    assert float(sd["weight"]) == 5.0  # raw mean of checkpoints 6 and 4
    sd, source = select_state_dict(exp, iter=6, avg=1, use_averaged_model=True)
    # mean of the snapshots in (4, 6] from the running averages: (3.5 * 6 - 2.5 * 4) / 2 = 5.5
    assert float(sd["weight"]) == pytest.approx(5.5)
    sd, source = select_state_dict(exp)  # neither iter nor epoch: the newest checkpoint
    assert float(sd["weight"]) == 6.0 and source == str(exp / "checkpoint-6.pt")
    with pytest.raises(FileNotFoundError, match=r"^--iter 5: .*checkpoint-5.pt does not exist$"):
        select_state_dict(exp, iter=5)
    with pytest.raises(FileNotFoundError, match="--iter 6 --avg 3 --use-averaged-model 1 needs 4 checkpoints"):
        select_state_dict(exp, iter=6, avg=3)
    with pytest.raises(FileNotFoundError, match=r"--epoch 3 --avg 1 --use-averaged-model needs .*epoch-2.pt"):
        select_state_dict(exp, epoch=3)
    with pytest.raises(ValueError, match="not both"):
        select_state_dict(exp, iter=6, epoch=3)


def test_select_state_dict_names_the_damaged_file(tmp_path):
    exp = _exp(tmp_path)
    data = (exp / "checkpoint-4.pt").read_bytes()
    (exp / "checkpoint-4.pt").write_bytes(data[: len(data) // 2])  # a copy cut short
    with pytest.raises(ValueError) as e:
        select_state_dict(exp, iter=6, avg=2, use_averaged_model=False)
    assert str(e.value).startswith(f"{exp / 'checkpoint-4.pt'}: ") and "\n" not in str(e.value)


def test_family_from_keys():
    """The registry tells the family by key names; a transducer with a joint CTC head is still a transducer."""
    enc = {"encoder.encoders.0.w": torch.zeros(1)}
    assert infer_family_size({**enc, "ctc_output.1.weight": torch.zeros(5, 1)}) == ("crctc", None)
    assert infer_family_size({**enc, "decoder.embedding.weight": torch.zeros(1),
                              "ctc_output.1.weight": torch.zeros(1)})[0] == "transducer"
    assert infer_family_size({"encoder.x": torch.zeros(1)}) == (None, None)
    assert infer_family_size({"joiner.w": torch.zeros(1), "encoder_embed.out.weight": torch.zeros(512, 1)}) == (
        "transducer", "large")
