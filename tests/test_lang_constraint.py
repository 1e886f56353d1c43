"""Phone-level --lang: the PhoneConstraint automaton, constrained greedy / beam / top-k (against brute force on tiny
inputs), the recogniser honouring it, and the PHOIBLE inventories."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from test_api import make_model_dir, speechy

import anyphone.inventory as inv
from anyphone.cli import main
from anyphone.decoding.ctc import (
    ctc_constrained_best_path,
    ctc_greedy_search,
    ctc_prefix_beam_search,
    ctc_topk_frames,
)
from anyphone.inference.api import load_model
from anyphone.text.ipa import segment_phones

TOKS = ["<blk>", "a", "t", "ʰ", "k", "ː"]
INVENTORY = ["a", "aː", "t", "tʰ", "k"]  # ʰ only after t, ː only after a


def _decode(ids: list[int]) -> str:
    return "".join(TOKS[i] for i in ids)


def _in_inventory(ids: list[int]) -> bool:
    return all(p in INVENTORY for p in segment_phones(_decode(ids)))


def _collapse(path) -> list[int]:
    out, prev = [], None
    for p in path:
        if p != prev and p != 0:
            out.append(p)
        prev = p
    return out


def _adversarial_lp(rng, t: int) -> torch.Tensor:
    """Log-probs that favour the forbidden combinations (kʰ, tː, a lone ʰ) at many frames."""
    x = torch.tensor(rng.normal(size=(t, len(TOKS))))
    x[:, 3] += 1.5  # ʰ
    x[:, 5] += 1.0  # ː
    x[::3, 4] += 2.0  # k
    return x.log_softmax(-1)


def test_automaton_accepts_only_whole_inventory_phones():
    c = inv.PhoneConstraint(INVENTORY, TOKS)
    ids = {t: i for i, t in enumerate(TOKS)}

    def enc(s):
        return [ids[ch] for ch in s]

    for good in ["", "a", "tʰa", "aːk", "ttʰaːa", "kaːtʰ"]:
        assert c.accepts(enc(good)), good
    for bad in ["ʰ", "kʰ", "tː", "aʰ", "tʰː", "aːː"]:
        assert not c.accepts(enc(bad)), bad
    assert c.complete_prefix(enc("tʰak")) == enc("tʰak") and c.complete_prefix(enc("akʰ")) == enc("ak")
    assert inv.PhoneConstraint(["a", "tʰ"], TOKS).complete_prefix(enc("at")) == enc("a")  # t alone: unfinished
    assert c.missing == [] and inv.PhoneConstraint(["a", "ɓ"], TOKS).missing == ["ɓ"]


def test_constrained_best_path_equals_brute_force():
    c = inv.PhoneConstraint(INVENTORY, TOKS)
    rng = np.random.default_rng(0)
    for _ in range(40):
        t = int(rng.integers(1, 6))
        lp = _adversarial_lp(rng, t).numpy()
        best = max(lp[np.arange(t), list(p)].sum() for p in itertools.product(range(len(TOKS)), repeat=t)
                   if c.accepts(_collapse(p)))
        r = ctc_constrained_best_path(lp, c)
        path = np.zeros(t, dtype=int)
        for tok, f, run in zip(r.tokens, r.frames, r.runs):
            path[f: f + run] = tok
        assert _collapse(path) == r.tokens and c.accepts(r.tokens)
        assert lp[np.arange(t), path].sum() == pytest.approx(best, abs=1e-9)


def test_constraint_keeps_the_greedy_path_when_it_is_allowed():
    c = inv.PhoneConstraint(INVENTORY, TOKS)
    rng = np.random.default_rng(1)
    lp = torch.tensor(rng.normal(size=(3, 40, len(TOKS))))
    lp[..., 3] -= 4.0  # modifiers rarely win a frame: the argmax path spells bases only, all allowed
    lp[..., 5] -= 4.0
    lp = lp.log_softmax(-1)
    plain = ctc_greedy_search(lp, [40, 31, 7], return_timestamps=True)
    assert all(_in_inventory(h.tokens) for h in plain) and sum(len(h.tokens) for h in plain) > 20
    assert ctc_greedy_search(lp, [40, 31, 7], constraint=c, return_timestamps=True) == plain


@pytest.mark.parametrize("seed", range(5))
def test_no_out_of_inventory_phone_greedy_beam_topk(seed):
    c = inv.PhoneConstraint(INVENTORY, TOKS)
    rng = np.random.default_rng(seed)
    lp = torch.stack([_adversarial_lp(rng, 60) for _ in range(2)])
    lens = [60, 45]
    plain = ctc_greedy_search(lp, lens)
    assert not all(_in_inventory(h) for h in plain)  # the test data does tempt the decoder
    for hyp in ctc_greedy_search(lp, lens, constraint=c):
        assert _in_inventory(hyp)
    for nbest in ctc_prefix_beam_search(lp, lens, beam=6, return_nbest=True, constraint=c):
        assert nbest and all(_in_inventory(h) for h, _ in nbest)
    hyps = ctc_greedy_search(lp, lens, constraint=c, return_timestamps=True)
    for n, frames in enumerate(ctc_topk_frames(lp, lens, 4, constraint=c)):
        assert [f.frame for f in frames] == hyps[n].timestamps
        for i, f in enumerate(frames):
            # (the emitted token need not be the frame's best allowed one: the path looks ahead)
            assert c.walk(hyps[n].tokens[: i + 1]) >= 0
            for tok, p in f.candidates:
                # each candidate continues the hypothesis so far into a prefix of inventory phones
                assert c.walk(hyps[n].tokens[:i] + [tok]) >= 0 and p > 0
            assert sum(p for _, p in f.candidates) <= 1 + 1e-9


def test_recognizer_lang_is_phone_level(tmp_path, monkeypatch):
    monkeypatch.setenv("ANYPHONE_HOME", str(tmp_path / "home"))
    model = make_model_dir(tmp_path / "m", "crctc")
    rec = load_model(model, batch_size=1)
    wave = speechy(3.0, 3)
    base = rec.recognize(wave, return_result=True)
    mods = {ch for ph in base.phones for ch in ph[1:]}
    assert mods  # the random model writes modifiers on several bases
    f = tmp_path / "inv.txt"
    # every base token the model used is allowed, but each modifier only after one base
    bases = sorted({ph[0] for ph in base.phones})
    f.write_text("\n".join(bases + [bases[0] + m for m in mods]) + "\n", encoding="utf-8")
    inv.update_inventory("zzq", f)
    allowed = set(inv.get_inventory("zzq"))
    res = rec.recognize(wave, lang="zzq", topk=3, return_result=True)
    assert res.phones and set(res.phones) <= allowed
    c = inv.PhoneConstraint("zzq", rec.tokenizer.id2token)
    ids = [rec.tokenizer.token2id[t.token] for t in res.tokens]
    for i, t in enumerate(res.tokens):
        for cand, _ in t.candidates:
            if cand != "<blk>":
                assert c.walk(ids[:i] + [rec.tokenizer.token2id[cand]]) >= 0
    rec_t = load_model(make_model_dir(tmp_path / "t", "transducer"), batch_size=1)
    assert set(rec_t.recognize(wave, lang="zzq").split()) <= allowed


def test_phoible_inventories(capsys):
    codes = inv.list_languages("phoible")
    assert len(codes) >= 1000
    assert len(inv.list_languages()) >= len(codes) and set(inv.list_languages("espeak")) <= set(inv.list_languages())
    info = inv.language_info("phoible:eng")
    assert info["source"] == "phoible" and "espeak" in info["sources"] and info["phoible_inventory"]
    assert inv.language_info("eng")["source"] == "espeak"
    assert {"θ", "ð", "ŋ", "ɹ", "æ"} <= set(inv.get_inventory("phoible:eng"))
    # a PHOIBLE-only language works as a bare code; every phone is one model phone
    only = min(set(codes) - set(inv.list_languages("espeak")))
    assert inv.language_info(only)["source"] == "phoible"
    for code in codes[::50]:
        for ph in inv.get_inventory(f"phoible:{code}"):
            assert segment_phones(ph) == [ph]
    # segments that could not be mapped are reported per language
    assert any(inv.language_info(f"phoible:{c}")["unmapped"] for c in codes[:400])
    with pytest.raises(inv.InventoryError, match="unknown inventory source 'wals'"):
        inv.get_inventory("wals:eng")
    with pytest.raises(inv.InventoryError, match="no espeak inventory"):
        inv.get_inventory(f"espeak:{only}")
    assert main(["list-lang"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 1000
    eng = next(ln for ln in lines if ln.startswith("eng\t")).split("\t")
    assert eng[-1] == "espeak +phoible"
    assert any(ln.endswith("\tphoible") for ln in lines)
