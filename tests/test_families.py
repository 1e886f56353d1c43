"""The model-family registry: every family builds, recognises its own weights, trains and decodes through the
same interface; unknown names are one clear line."""

from __future__ import annotations

import argparse

import pytest
import torch
from training_fixtures import SMALL_MODEL

from anyphone.decoding.options import DecodeOptions
from anyphone.families import (
    REGISTRY,
    UnknownFamilyError,
    config_from_state_dict,
    detect_family,
    family_names,
    get_family,
)
from anyphone.families.base import ModelFamily

VOCAB = 11
# small shapes per family, as command-line flags (what train.py would get); pos head dim 4 (ZIPA's), the one
# the tensors are read with when no config.json says otherwise
ZIPFORMER = [*SMALL_MODEL, "--pos-head-dim", "4"]
FLAGS = {
    "crctc": ZIPFORMER,
    "transducer": [*ZIPFORMER, "--decoder-dim", "16", "--joiner-dim", "16"],
}
OTHERS = ["--model-size", "tiny"]  # any other family: its tiny preset


def _args(name: str, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    get_family(name).add_arguments(parser)
    return parser.parse_args([*FLAGS.get(name, OTHERS), *extra])


def _model(name: str, seed: int = 0):
    family = get_family(name)
    torch.manual_seed(seed)
    cfg = family.config_from_args(_args(name), VOCAB)
    return family, cfg, family.build(cfg, **family.model_options(_args(name)))


def _batch(n: int = 2, frames: int = 80) -> dict:
    g = torch.Generator().manual_seed(3)
    lens = torch.tensor([frames - 17 * i for i in range(n)])
    x = torch.randn(n, frames, 80, generator=g)
    for i, t in enumerate(lens.tolist()):
        x[i, t:] = 0.0
    return {"features": x, "feature_lens": lens, "token_ids": [[3, 4, 5], [6]][:n], "texts": ["a", "b"][:n],
            "cut_ids": ["c0", "c1"][:n]}


def test_the_registry_names_every_family_once():
    assert family_names() == list(REGISTRY) and len(set(REGISTRY)) == len(REGISTRY) >= 3
    for name in REGISTRY:
        family = get_family(name)
        assert isinstance(family, ModelFamily) and family.name == name
        assert family.default_decoding_method in family.decoding_methods
        assert family.recommended_decode_options.method in family.decoding_methods
        assert family.onnx_model_type in ("ctc", "transducer")
        assert family.has_ctc == (family.onnx_model_type == "ctc")
        assert get_family(name) is not family  # a fresh object per run (families cache training helpers)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_build_state_dict_detect_round_trip(name):
    """build -> state_dict -> detect_family -> config_from_state_dict gives the same family and the same
    configuration, and the model rebuilt from it loads the weights strictly."""
    _, cfg, model = _model(name)
    sd = model.state_dict()
    found = detect_family(sd)
    assert found.name == name
    others = [n for n in REGISTRY if n != name and get_family(n).recognises(sd)]
    assert others == []  # exactly one family claims these weights
    cfg2, options = found.config_from_state_dict(sd)
    fields, fields2 = cfg.to_dict(), cfg2.to_dict()
    # what no tensor holds: the preset's name, dropout, what only training uses, a CTC model's unused head sizes
    unstored = {"crctc": {"name", "encoder_unmasked_dim", "decoder_dim", "joiner_dim", "context_size"},
                "transducer": {"name", "encoder_unmasked_dim"}}.get(name, {"name", "dropout"})
    assert fields2["vocab_size"] == VOCAB
    for key in (k for k in fields if k not in unstored):
        assert fields2[key] == fields[key], key
    # with the config.json section the config is the trained one exactly
    assert found.config_from_state_dict(sd, cfg.to_dict())[0] == cfg
    rebuilt = found.build(cfg2, **options)
    rebuilt.load_state_dict(sd, strict=True)
    assert found.vocab_size_of(sd) == VOCAB
    assert config_from_state_dict(sd)[0] == name


@pytest.mark.parametrize("name", list(REGISTRY))
def test_loss_is_finite_and_backpropagates(name):
    family, _, model = _model(name)
    args = _args(name, *(["--warm-step", "10"] if name == "transducer" else []))
    model.train()
    loss, info = family.compute_loss(model, _batch(), args, 1, True)
    assert torch.isfinite(loss) and loss.item() > 0 and info["frames"] > 0
    assert any(k.endswith("_loss") for k in info)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_greedy_and_beam_decode_give_valid_ids(name):
    family, _, model = _model(name)
    model.eval()
    batch = _batch()
    hyps = family.greedy_decode(model, batch)
    assert len(hyps) == 2 and all(0 < t < VOCAB for h in hyps for t in h)
    for method in family.decoding_methods:
        out = family.decode(model, batch, DecodeOptions(method=method, beam_size=2))
        assert len(out) == 2 and all(isinstance(t, int) and 0 < t < VOCAB for h in out for t in h)
    # no method: the family's default search
    default = family.decode(model, batch, DecodeOptions())
    assert default == family.decode(model, batch, DecodeOptions(method=family.default_decoding_method))
    with pytest.raises(SystemExit, match=f"{name} models decode with"):
        family.decode(model, batch, DecodeOptions(method="nonsense", beam_size=2))


@pytest.mark.parametrize("name", list(REGISTRY))
def test_validation_step_gives_the_eval_loss_and_the_greedy_hypotheses(name):
    family, _, model = _model(name)
    args = _args(name)
    model.eval()
    batch = _batch()
    with torch.no_grad():
        head = getattr(model, "ctc_output", None)
        if isinstance(head, torch.nn.Sequential):
            head[1].bias[0] -= 20.0  # an unlikely blank: no empty hypothesis
        loss, info, hyps = family.validation_step(model, batch, args, 1)
        ref_loss, ref_info = family.compute_loss(model, batch, args, 1, False)
    assert torch.equal(loss, ref_loss) and info == ref_info
    if name in ("crctc", "transducer"):  # their loss and their greedy search read one encoder pass
        assert hyps is not None and len(hyps) == 2
    if name == "crctc":
        assert all(hyps)
    if hyps is not None:
        assert hyps == family.greedy_decode(model, batch)


def test_ctc_families_give_recognition_log_probs_at_50_hz():
    for name in REGISTRY:
        family, _, model = _model(name)
        if not family.has_ctc:
            with pytest.raises(ValueError, match="no CTC output"):
                family.ctc_log_probs(model.eval(), *list(_batch().values())[:2])
            continue
        lp, lens = family.ctc_log_probs(model.eval(), _batch()["features"], _batch()["feature_lens"])
        assert lens.tolist() == [(80 - 7) // 2, (63 - 7) // 2] and lp.shape[-1] == VOCAB
        assert torch.allclose(lp[0].exp().sum(-1), torch.ones(lp.shape[1]), atol=1e-5)


def test_unknown_family_is_one_line_naming_the_known_ones():
    with pytest.raises(UnknownFamilyError) as e:
        get_family("conformer_ctc")
    msg = str(e.value)
    assert "\n" not in msg and "'conformer_ctc'" in msg and all(n in msg for n in REGISTRY)
    from anyphone.training.recipe import get_train_parser

    assert get_train_parser("crctc").parse_args([]).family == "crctc"
    with pytest.raises(SystemExit):  # argparse: not one of the registry's names
        get_train_parser("crctc", None, ["--family", "nope"]).parse_args(["--family", "nope"])
    with pytest.raises(ValueError, match="no model of a known family"):
        detect_family({"encoder.weight": torch.zeros(2)})


def test_ctc_is_only_an_alias_of_the_crctc_family():
    """ONNX exports say model_type "ctc"; it reads as the CR-CTC family, and no family is called "ctc"."""
    assert "ctc" not in REGISTRY
    assert get_family("ctc").name == "crctc"
