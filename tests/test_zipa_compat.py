"""Our Zipformer is numerically ZIPA's model: checked against the reference fixtures.

Fixtures: /work/shared/reference/zipa (see its README.md).  Skipped when the folder is absent.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from training_fixtures import ZIPA_REF

from anyphone.models.ctc import CtcModel, build_encoder, forward_encoder
from anyphone.models.presets import ZipformerConfig, get_preset

REF = ZIPA_REF
pytestmark = pytest.mark.skipif(not REF.is_dir(), reason=f"ZIPA reference fixtures not found at {REF}")

ATOL = 1e-4


def _load(name: str) -> dict:
    return torch.load(REF / name, weights_only=True, map_location="cpu")


@pytest.fixture(scope="module")
def crctc():
    return _load("tiny_crctc.pt")


@pytest.fixture(scope="module")
def transducer():
    return _load("tiny_transducer.pt")


def _ctc_greedy(log_probs: torch.Tensor, lens: torch.Tensor) -> list:
    # icefall ctc_greedy_search: argmax over valid frames, collapse repeats, drop blank (0) only.
    out = []
    for lp, n in zip(log_probs, lens):
        ids = lp[: int(n)].argmax(dim=-1).unique_consecutive()
        out.append([int(i) for i in ids if i != 0])
    return out


def _unpad(ids: torch.Tensor, lens: torch.Tensor) -> list:
    return [[int(v) for v in row[: int(n)]] for row, n in zip(ids, lens)]


def test_fixture_config_matches_preset(crctc):
    cfg = ZipformerConfig.from_dict(json.loads(crctc["config"]))
    ref = get_preset("fixture_tiny")
    assert cfg == ref


def test_crctc_numerics(crctc):
    torch.manual_seed(0)
    model = CtcModel(get_preset("fixture_tiny"))
    model.load_state_dict(crctc["state_dict"], strict=True)
    model.eval()

    stack_out = {}
    hooks = [
        mod.register_forward_hook(lambda m, i, o, k=k: stack_out.__setitem__(k, o))
        for k, mod in enumerate(model.encoder.encoders)
    ]
    with torch.no_grad():
        emb, _emb_lens = model.encoder_embed(crctc["x"], crctc["x_lens"])
        enc, enc_lens = model.forward_encoder(crctc["x"], crctc["x_lens"])
        log_probs = model.ctc_log_probs(enc)
    for h in hooks:
        h.remove()

    torch.testing.assert_close(emb, crctc["debug_embed_out"], atol=ATOL, rtol=0)
    for k in range(6):
        torch.testing.assert_close(stack_out[k], crctc[f"debug_stack{k}_out"], atol=ATOL, rtol=0)
    torch.testing.assert_close(enc, crctc["encoder_out"], atol=ATOL, rtol=0)
    assert torch.equal(enc_lens, crctc["encoder_out_lens"])
    torch.testing.assert_close(log_probs, crctc["ctc_log_probs"], atol=ATOL, rtol=0)
    assert _ctc_greedy(log_probs, enc_lens) == _unpad(crctc["greedy_token_ids"], crctc["greedy_token_lens"])


def test_crctc_solo_utterances(crctc):
    model = CtcModel(get_preset("fixture_tiny"))
    model.load_state_dict(crctc["state_dict"], strict=True)
    model.eval()
    for i, n in enumerate(crctc["x_lens"].tolist()):
        x = crctc["x"][i : i + 1, :n]
        with torch.no_grad():
            enc, lens = model.forward_encoder(x, torch.tensor([n]))
            lp = model.ctc_log_probs(enc)
        torch.testing.assert_close(enc, crctc[f"solo{i}_encoder_out"], atol=ATOL, rtol=0)
        assert _ctc_greedy(lp, lens)[0] == crctc[f"solo{i}_greedy_token_ids"].tolist()


def test_transducer_encoder_numerics(transducer):
    holder = nn.Module()
    holder.encoder_embed, holder.encoder = build_encoder(
        get_preset("fixture_tiny"), output_downsampling_factor=2
    )
    sd = {
        k: v for k, v in transducer["state_dict"].items() if k.split(".")[0] in ("encoder_embed", "encoder")
    }
    holder.load_state_dict(sd, strict=True)
    holder.eval()
    with torch.no_grad():
        enc, lens = forward_encoder(
            holder.encoder_embed, holder.encoder, transducer["x"], transducer["x_lens"]
        )
    torch.testing.assert_close(enc, transducer["encoder_out"], atol=ATOL, rtol=0)
    assert torch.equal(lens, transducer["encoder_out_lens"])
    for i, n in enumerate(transducer["x_lens"].tolist()):
        with torch.no_grad():
            e, _ = forward_encoder(
                holder.encoder_embed, holder.encoder, transducer["x"][i : i + 1, :n], torch.tensor([n])
            )
        torch.testing.assert_close(e, transducer[f"solo{i}_encoder_out"], atol=ATOL, rtol=0)


def test_padding_changes_results_like_zipa(crctc):
    # ZIPA feeds padded frames into the ConvNeXt and SimpleDownsample; so do we.  Padding with a
    # different value must therefore change the outputs of the shorter utterances.
    model = CtcModel(get_preset("fixture_tiny"))
    model.load_state_dict(crctc["state_dict"], strict=True)
    model.eval()
    x = crctc["x"].clone()
    lens = crctc["x_lens"]
    for i, n in enumerate(lens.tolist()):
        x[i, n:] = -23.0
    with torch.no_grad():
        enc, _ = model.forward_encoder(x, lens)
    assert (enc[2, :45] - crctc["encoder_out"][2, :45]).abs().max() > 1e-3


@pytest.mark.parametrize(
    "manifest,preset,ods",
    [
        ("crctc_small.keys.json", "small", 1),
        ("crctc_large.keys.json", "large", 1),
        ("transducer_small.keys.json", "small", 2),
        ("transducer_large.keys.json", "large", 2),
    ],
)
def test_keys_manifest(manifest, preset, ods):
    ref = json.loads((REF / manifest).read_text())
    cfg = get_preset(preset)
    assert ZipformerConfig.from_dict(ref["config"]) == cfg, "preset differs from ZIPA's config"
    ref_keys = [(k, list(shape)) for k, shape, _ in ref["state_dict"]]
    assert all(dtype == "float32" for _, _, dtype in ref["state_dict"])
    with torch.device("meta"):
        if ods == 1:
            model: nn.Module = CtcModel(cfg)
        else:
            model = nn.Module()
            model.encoder_embed, model.encoder = build_encoder(cfg, output_downsampling_factor=2)
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    n_ours = sum(p.numel() for p in model.parameters())
    if ods == 1:
        assert ours == ref_keys
        assert n_ours == ref["total_params"]
    else:
        # The transducer heads (decoder, joiner, simple_*_proj) belong to transducer.py.
        enc_ref = [(k, s) for k, s in ref_keys if k.split(".")[0] in ("encoder_embed", "encoder")]
        assert ours == enc_ref
        head = sum(
            int(torch.tensor(s).prod()) if s else 1
            for k, s in ref_keys
            if k.split(".")[0] not in ("encoder_embed", "encoder")
        )
        assert n_ours + head == ref["total_params"]
        try:  # the whole transducer, once anyphone.models.transducer provides it
            from anyphone.models.transducer import TransducerModel
        except ImportError:
            return
        with torch.device("meta"):
            full = TransducerModel(cfg)
        assert [(k, list(v.shape)) for k, v in full.state_dict().items()] == ref_keys
        assert sum(p.numel() for p in full.parameters()) == ref["total_params"]


def test_every_tensor_has_zipas_effect(crctc):
    # Zeroing each tensor in turn must move the outputs exactly as much as it moved ZIPA's
    # (tiny_sensitivity.json): zero effect for the dead tensors, the same size for all others.
    sens = json.loads((REF / "tiny_sensitivity.json").read_text())["tiny_crctc"]
    model = CtcModel(get_preset("fixture_tiny"))
    model.load_state_dict(crctc["state_dict"], strict=True)
    model.eval()
    valid = torch.arange(crctc["encoder_out"].shape[1])[None] < crctc["encoder_out_lens"][:, None]

    def run():
        with torch.no_grad():
            enc, _ = model.forward_encoder(crctc["x"], crctc["x_lens"])
            return enc, model.ctc_log_probs(enc)

    def effect(a, b):
        return float((a - b).abs()[valid].max() / b.abs()[valid].max())

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small forwards: threading overhead dominates
    try:
        _check_ablations(model, sens, run, effect)
    finally:
        torch.set_num_threads(threads)


def _check_ablations(model, sens, run, effect) -> None:
    base = run()
    params = dict(model.named_parameters())
    assert len(sens) == len(params)
    # The dead tensors plus every 8th other one keeps this to a few seconds.
    picked = [row for i, row in enumerate(sens) if row[3] == 0 or i % 8 == 0]
    assert len(picked) > 40
    for key, _, _, ablation_effect, _ in picked:
        p = params[key]
        saved = p.detach().clone()
        with torch.no_grad():
            p.zero_()
        ours = max(effect(o, b) for o, b in zip(run(), base))
        with torch.no_grad():
            p.copy_(saved)
        if ablation_effect == 0:
            assert ours == 0, key
        else:
            assert abs(ours - ablation_effect) <= 0.05 * ablation_effect, (key, ours, ablation_effect)
