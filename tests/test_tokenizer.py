"""Tests for anyphone.text.tokenizer, ipa_simplified/ and local/prepare_lang.py."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from training_fixtures import ZIPA_REF

from anyphone.text.ipa import INVENTORY, normalize_ipa
from anyphone.text.tokenizer import (
    IpaTokenizer,
    build_sentencepiece_model,
    default_lang_dir,
    default_token_list,
    read_tokens,
)

REPO = Path(__file__).resolve().parents[1]
LANG_DIR = REPO / "ipa_simplified"
SHARED_TOKENS = ZIPA_REF / "tokens.txt"


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_tokens_match_zipa_reference_id_for_id() -> None:
    if not SHARED_TOKENS.is_file():
        pytest.skip(f"ZIPA reference tokens.txt not found at {SHARED_TOKENS}")
    assert _lines(LANG_DIR / "tokens.txt") == _lines(SHARED_TOKENS)
    assert read_tokens(LANG_DIR / "tokens.txt") == read_tokens(SHARED_TOKENS)


def test_packaged_tokens_match_lang_dir() -> None:
    packaged = default_lang_dir() / "tokens.txt"
    assert packaged.is_file()
    assert _lines(packaged) == _lines(LANG_DIR / "tokens.txt")
    assert read_tokens(packaged) == default_token_list()


def test_ids_of_specials_and_vocab() -> None:
    for tok in (IpaTokenizer.default(), IpaTokenizer.from_dir(LANG_DIR), IpaTokenizer.from_dir(str(LANG_DIR))):
        assert tok.vocab_size == 127 == len(tok.id2token)
        assert tok.blank_id == 0 and tok.unk_id == 2 and tok.sos_eos_id == 1
        assert tok.id2token[:4] == ["<blk>", "<sos/eos>", "<unk>", "\u2581"]
        assert tok.id2token[4:] == list(INVENTORY)
        assert tok.token2id["ç"] == 31 and tok.token2id["ⱱ"] == 126 and tok.token2id["g"] == 10
        assert all(tok.token2id[t] == i for i, t in enumerate(tok.id2token))


def test_encode_decode_round_trip_random() -> None:
    tok = IpaTokenizer.default()
    rng = random.Random(1234)
    texts = ["".join(rng.choice(INVENTORY) for _ in range(rng.randint(0, 40))) for _ in range(300)]
    batch = tok.encode(texts)
    for text, ids in zip(texts, batch):
        assert len(ids) == len(text)  # one id per code point
        assert all(4 <= i < 127 for i in ids)
        assert tok.decode(ids) == text
    assert tok.decode_batch(batch) == texts


def test_unknown_and_specials() -> None:
    tok = IpaTokenizer.default()
    assert tok.encode(["aQb"]) == [[4, 2, 5]]  # one <unk> per unknown code point
    assert tok.encode(["a b"]) == [[4, 3, 5]]  # a space is ▁ (normalised text has none)
    assert tok.encode([""]) == [[]]
    assert tok.decode([0, 4, 0, 1, 5, 2, 3, 6]) == "abc"  # <blk>, <sos/eos>, <unk>, ▁ decode to nothing
    with pytest.raises(ValueError, match="127"):
        tok.decode([127])
    with pytest.raises(TypeError):
        tok.encode("abc")  # type: ignore[arg-type]


def test_normalised_espeak_text_has_no_unk() -> None:
    tok = IpaTokenizer.default()
    texts = [normalize_ipa(s, lang=lang) for lang, s in [
        ("en", "ðə kwˈɪk bɹˈaʊn fˈɒks"), ("cmn", "ni2χˈɑu2 | wˈo2 s.ˈi.5"), ("bg", "mˈaɫko"),
        ("hi", "mˌʊɟʰeː hˈĩdi"), ("fr", "œ̃ bˈɔ̃ vˈɛ̃"), ("de", "ɪç mˈœçtə"),
    ]]
    for text, ids in zip(texts, tok.encode(texts)):
        assert tok.unk_id not in ids
        assert tok.decode(ids) == text


def test_from_tokens_file_without_model(tmp_path: Path) -> None:
    src = SHARED_TOKENS if SHARED_TOKENS.is_file() else LANG_DIR / "tokens.txt"
    path = tmp_path / "tokens.txt"
    path.write_bytes(src.read_bytes())
    tok = IpaTokenizer.from_tokens_file(path)
    assert tok.id2token == default_token_list()
    tok2 = IpaTokenizer.from_dir(tmp_path)  # a dir holding only tokens.txt
    assert tok2.encode(["tʃaː"]) == [[23, 84, 4, 111]]


def test_read_tokens_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("<blk> 0\nfoo\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.txt:2"):
        read_tokens(bad)
    gap = tmp_path / "gap.txt"
    gap.write_text("<blk> 0\n<unk> 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="contiguous"):
        read_tokens(gap)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        IpaTokenizer.from_dir(tmp_path / "nowhere")
    nounk = tmp_path / "nounk.txt"
    nounk.write_text("<blk> 0\na 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="<unk>"):
        IpaTokenizer.from_tokens_file(nounk)


def test_sentencepiece_model_ids_and_encoding() -> None:
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(model_file=str(LANG_DIR / "unigram_127.model"))
    tok = IpaTokenizer.default()
    assert sp.get_piece_size() == 127
    assert [sp.id_to_piece(i) for i in range(127)] == tok.id2token
    assert sp.unk_id() == 2 and sp.bos_id() == -1 and sp.eos_id() == -1
    assert sp.piece_to_id("<blk>") == 0 and sp.piece_to_id("<sos/eos>") == 1
    assert sp.encode("a") == [4]  # no dummy-prefix ▁
    rng = random.Random(7)
    for _ in range(300):
        text = "".join(rng.choice(INVENTORY) for _ in range(rng.randint(0, 40)))
        assert sp.encode(text) == tok.encode_one(text)
    # unknown code points give <unk>; SentencePiece merges a run of them into one <unk>
    assert sp.encode("aQb") == tok.encode_one("aQb") == [4, 2, 5]
    assert sp.encode("aQQb") == [4, 2, 5]
    assert sp.decode([4, 5]) == "ab"


def test_sentencepiece_model_is_reproducible() -> None:
    pytest.importorskip("sentencepiece")
    assert build_sentencepiece_model() == (LANG_DIR / "unigram_127.model").read_bytes()


def test_prepare_lang_script(tmp_path: Path) -> None:
    pytest.importorskip("sentencepiece")
    out = tmp_path / "lang"
    cmd = [sys.executable, str(REPO / "local" / "prepare_lang.py"), "--lang-dir", str(out)]
    if SHARED_TOKENS.is_file():
        cmd += ["--reference-tokens", str(SHARED_TOKENS)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    for name in ("tokens.txt", "unigram_127.model", "unigram_127.vocab", "phone_set.txt"):
        assert (out / name).read_bytes() == (LANG_DIR / name).read_bytes(), name
    phone_set = _lines(out / "phone_set.txt")
    assert [line.split("\t")[0] for line in phone_set] == list(INVENTORY)
    assert sum(line.split("\t")[1] == "modifier" for line in phone_set) == 15
