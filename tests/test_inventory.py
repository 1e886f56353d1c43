"""Tests for anyphone.inventory: built-in inventories, aliases, custom overrides, decoding token mask."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from training_fixtures import ZIPA_REF

from anyphone import inventory as inv
from anyphone.text.ipa import is_normalized, segment_phones

REPO = Path(__file__).resolve().parents[1]
REF_TOKENS = ZIPA_REF / "tokens.txt"


@pytest.fixture(autouse=True)
def user_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty custom-inventory folder."""
    monkeypatch.setenv("ANYPHONE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _zipa_id2token() -> list[str]:
    if not REF_TOKENS.is_file():
        pytest.skip(f"reference tokens not found at {REF_TOKENS}")
    rows = [ln.rsplit(" ", 1) for ln in REF_TOKENS.read_text(encoding="utf-8").splitlines() if ln.strip()]
    out = [""] * len(rows)
    for tok, i in rows:
        out[int(i)] = tok
    return out


def test_at_least_100_languages_with_plausible_inventories():
    langs = inv.list_languages("espeak")  # the eSpeak-derived ones; PHOIBLE's: tests/test_lang_constraint.py
    assert len(langs) >= 100
    assert all(len(c) == 3 and c.isalpha() and c.islower() for c in langs)
    for code in ["eng", "cmn", "deu", "spa", "fra", "jpn", "ara", "hin", "rus", "swa", "tur", "vie"]:
        assert code in langs
    eng = set(inv.get_inventory("eng"))
    assert {"θ", "ð", "ŋ", "ɹ", "æ", "ʃ", "ʒ"} <= eng and "y" not in eng and "ɲ" not in eng
    assert {"y", "ʁ", "ɲ", "œ"} <= set(inv.get_inventory("fra")) and "θ" not in inv.get_inventory("fra")
    assert {"kʰ", "pʰ", "tʰ", "ʂ", "ɕ"} <= set(inv.get_inventory("cmn"))
    assert {"ħ", "ʕ", "q", "dˤ"} <= set(inv.get_inventory("ara"))
    assert {"ɖ", "ʈ", "ɳ", "bʰ"} <= set(inv.get_inventory("hin"))
    sizes = [len(inv.get_inventory(c)) for c in langs]
    assert min(sizes) >= 15 and max(sizes) <= 80


def test_builtin_phones_are_normalised_single_phones():
    for code in inv.list_languages():
        phones = inv.get_inventory(code)
        assert phones == sorted(set(phones)), code
        for ph in phones:
            assert is_normalized(ph) and segment_phones(ph) == [ph], (code, ph)


def test_every_builtin_phone_is_producible_by_zipa_tokens():
    id2token = _zipa_id2token()
    for code in inv.list_languages():
        allowed, missing = inv.inventory_token_mask(code, id2token)
        assert missing == [], (code, missing)
        assert 0 in allowed and 1 not in allowed and 2 not in allowed and 3 not in allowed


def test_aliases_and_errors():
    assert inv.canonical_language("eng") == "eng"
    assert inv.canonical_language("EN") == "eng"
    assert inv.canonical_language("en-US") == "eng"
    assert inv.canonical_language("en_gb") == "eng"
    assert inv.canonical_language("de-AT") == "deu"
    assert inv.canonical_language("zh") == "cmn"
    assert inv.canonical_language("pt-br") == "por"
    assert inv.get_inventory("de") == inv.get_inventory("deu")
    info = inv.language_info("fr")
    assert info["code"] == "fra" and info["name"].startswith("French") and not info["custom"]
    assert "fr" in info["aliases"] and info["phones"] == len(inv.get_inventory("fra"))
    with pytest.raises(inv.InventoryError) as ei:
        inv.get_inventory("xqz")
    assert "'xqz'" in str(ei.value) and "\n" not in str(ei.value) and "list_languages" in str(ei.value)
    with pytest.raises(inv.InventoryError):
        inv.get_inventory("../etc/passwd")


def test_write_update_restore(tmp_path, user_home):
    out = inv.write_inventory("spa", tmp_path / "spa.txt")
    original = inv.get_inventory("spa")
    assert out.read_text(encoding="utf-8").splitlines() == original

    custom = tmp_path / "my_spa.txt"
    # NFC input, comments, blank lines, several per line and duplicates are all accepted
    custom.write_text("# Castilian core\na e i o u\n\np\nb\ntʰ\nθ\nx # velar\na\nç\n", encoding="utf-8")
    stored = inv.update_inventory("es", custom)
    assert stored == user_home / "inventories" / "spa.txt"
    assert inv.get_inventory("spa") == ["a", "e", "i", "o", "u", "p", "b", "tʰ", "θ", "x", "ç"]
    assert inv.language_info("spa")["custom"]
    # write_inventory exports the override
    assert inv.write_inventory("spa", tmp_path / "again.txt").read_text(encoding="utf-8").split() == \
        inv.get_inventory("spa")
    assert inv.restore_inventory("spa") is True
    assert inv.get_inventory("spa") == original
    assert inv.restore_inventory("spa") is False

    # a language with no built-in inventory can be added and removed
    new = tmp_path / "xyz.txt"
    new.write_text("a\nɓ\nɗ\n", encoding="utf-8")
    inv.update_inventory("xyz", new)
    assert "xyz" in inv.list_languages() and inv.get_inventory("XYZ") == ["a", "ɓ", "ɗ"]
    assert inv.restore_inventory("xyz") is True
    assert "xyz" not in inv.list_languages()
    with pytest.raises(inv.InventoryError):
        inv.restore_inventory("xyz")

    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(inv.InventoryError, match="no phones"):
        inv.update_inventory("spa", empty)
    with pytest.raises(inv.InventoryError, match="not found"):
        inv.update_inventory("spa", tmp_path / "missing.txt")


def test_token_mask_small_vocab():
    id2token = ["<blk>", "<sos/eos>", "<unk>", "▁", "a", "t", "ʰ", "s", "ː"]
    allowed, missing = inv.inventory_token_mask(["a", "aː", "tʰ", "ɓ", "ts"], id2token)
    assert allowed == {0, 4, 5, 6, 7, 8}
    assert missing == ["ɓ"]
    # dict form and a phone list that needs no ʰ
    allowed2, missing2 = inv.inventory_token_mask(["a", "t"], dict(enumerate(id2token)))
    assert allowed2 == {0, 4, 5} and missing2 == []
    mask = inv.inventory_logit_mask(["a", "t"], id2token)
    assert mask.dtype == np.bool_ and mask.shape == (9,) and mask.nonzero()[0].tolist() == [0, 4, 5]
    # a vocabulary whose blank is not id 0
    allowed3, _ = inv.inventory_token_mask(["a"], ["a", "<blk>"])
    assert allowed3 == {0, 1}


def test_token_mask_zipa_restricts_output():
    id2token = _zipa_id2token()
    allowed, missing = inv.inventory_token_mask("eng", id2token)
    assert missing == []
    allowed_tokens = {id2token[i] for i in allowed}
    assert {"<blk>", "θ", "ð", "ŋ", "ɹ"} <= allowed_tokens
    assert not {"ǀ", "ʘ", "ɓ", "ʀ", "<unk>", "▁"} & allowed_tokens
    assert 20 < len(allowed) < 60


def test_custom_inventory_with_unproducible_phone(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a\nt͡ʃ\nɓ\n", encoding="utf-8")  # the tie bar is not a ZIPA token
    inv.update_inventory("eng", f)
    allowed, missing = inv.inventory_token_mask("eng", _zipa_id2token())
    assert missing == ["t͡ʃ"]
    assert len(allowed) == 3  # blank, a, ɓ


def test_index_metadata_consistent():
    index = json.loads((REPO / "anyphone" / "data" / "inventories" / "index.json").read_text(encoding="utf-8"))
    langs = index["languages"]
    assert sorted(langs) == inv.list_languages("espeak")
    for code, meta in langs.items():
        assert sorted(meta["counts"]) == inv.get_inventory(code)
        assert meta["phones"] == len(meta["counts"]) and meta["words"] >= 150
    # no alias points at two languages
    seen: dict[str, str] = {}
    for code, meta in langs.items():
        for a in meta["aliases"]:
            assert a not in langs, (a, code)
            assert seen.setdefault(a, code) == code, a


def test_build_script_reproduces_committed_inventories(tmp_path):
    """Rebuild two single-voice languages and compare with the committed files."""
    out = tmp_path / "inv"
    proc = subprocess.run([sys.executable, str(REPO / "local" / "build_inventories.py"), "--out", str(out),
                           "--only", "de", "it"], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for code in ("deu", "ita"):
        rebuilt = set((out / f"{code}.txt").read_text(encoding="utf-8").split())
        committed = set(inv.get_inventory(code))
        # word lists come from wordfreq/babel releases; allow small drift between versions
        assert len(rebuilt & committed) / len(rebuilt | committed) >= 0.9, (code, rebuilt ^ committed)
