"""Tests for anyphone.text.ipa: normalisation to ZIPA's inventory and phone segmentation."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import unicodedata

import pytest

from anyphone.text.ipa import (
    BASE_SYMBOLS,
    INVENTORY,
    IPA_DROPPED,
    IPA_EQUIVALENTS,
    MODIFIERS,
    TONE_MARKS,
    has_language_switch,
    is_normalized,
    normalize_ipa,
    phones_to_string,
    segment_phones,
)

# Real eSpeak NG 1.52 IPA-mode outputs (espeak_TextToPhonemes, phonememode=0x02, clauses joined with " | "),
# with the normalised labels checked by hand.  (voice, source text, eSpeak output, expected)
ESPEAK_CASES = [
    # Latin script
    ("en", "The quick brown fox jumps over the lazy dog.",
     "ðə kwˈɪk bɹˈaʊn fˈɒks dʒˈʌmps ˌəʊvə ðə lˈeɪzi dˈɒɡ", "ðəkwɪkbɹaʊnfɒksdʒʌmpsəʊvəðəleɪzidɒg"),
    ("en-us", "Birds are nicer than water.",
     "bˈɜːdz ɑːɹ nˈaɪsɚ ðɐn wˈɔːɾɚ", "bɜːdzɑːɹnaɪsə˞ðɐnwɔːɾə˞"),
    ("en-us", "roses", "ɹˈoʊzᵻz", "ɹoʊzɨz"),
    ("de", "Ich möchte ein Brötchen mit Käse.",
     "ɪç mˈœçtə aɪn bɾˈøːtçən mɪt kˈɛːzə", "ɪçmœçtəaɪnbɾøːtçənmɪtkɛːzə"),
    ("fr", "Les enfants jouent dans le jardin.",
     "le-z ɑ̃fˈɑ̃ ʒw dɑ̃ lə- ʒaʁdˈɛ̃", "lezɑ̃fɑ̃ʒwdɑ̃ləʒaʁdɛ̃"),
    ("fr", "Un bon vin blanc.", "œ̃ bˈɔ̃ vˈɛ̃ blˈɑ̃", "œ̃bɔ̃vɛ̃blɑ̃"),
    ("es", "Mañana llueve en Zaragoza.",
     "maɲˈana ʎuˈeβe en θˌaɾaɣˈoθa", "maɲanaʎueβeenθaɾaɣoθa"),
    ("pl", "Dzień dobry, jak się masz?", "dʑˈɛɲ dˈɔbrɨ | jˈak ɕɛ mˈaʃ", "dʑɛɲdɔbrɨjakɕɛmaʃ"),
    ("da", "der er", "dεɐ̯ ɛɐ̯", "dɛɐɛɐ"),  # Greek epsilon, non-syllabic mark
    ("cs", "při", "pr̝̊i", "pr̥i"),  # raised mark dropped, ring above -> ring below
    ("lv", "pēc", "pˈeːt͡s", "peːts"),  # tie bar
    # Cyrillic script
    ("ru", "Привет, как дела?", "prʲivʲˈet | kˈɑk dʲˈeɭa", "prʲivʲetkɑkdʲeɭa"),
    ("ru", "Съешь же ещё этих мягких булок.",
     "sjjˈeʒ ʒy jɪɕˈɵ ˈɛtʲix mʲˈɑxkʲix bˈuɭʌk", "sjjeʒʒyjɪɕɵɛtʲixmʲɑxkʲixbuɭʌk"),
    ("uk", "Щастя не купиш за гроші.", "ʃtʃˈast̪ja nˈɛ kˈupɪʒ zˈa hrˈoʃiː", "ʃtʃast̪janɛkupɪʒzahroʃiː"),
    ("bg", "малко", "mˈaɫko", "mal\u0334ko"),
    # Devanagari script
    ("hi", "मुझे हिंदी बोलना पसंद है।",
     "mˌʊɟʰeː hˈĩdi bˈoːlnˌaː pəsˈʌnd hɛː", "mʊɟʰeːhi\u0303diboːlnaːpəsʌndhɛː"),  # ĩ comes out as i + U+0303
    ("hi", "बड़ी", "bˈʌr.i", "bʌɽi"),  # 'r.' is eSpeak's retroflex flap
    ("mr", "मी मराठी बोलतो.", "mˈi məɾˈaːʈʰi bˈoːltˌoː", "miməɾaːʈʰiboːltoː"),
    # tone languages (tones removed by default)
    ("cmn", "你好，我是学生。", "ni2χˈɑu2 | wˈo2 s.ˈi.5 ɕyɛɜs.ˈə1ŋ", "niχɑuwoʂɨɕyɛʂəŋ"),
    ("cmn", "他和我四个人", "thˈɑ5 χˈo-ɜ wˈo2 si̪5kˈo-1 ʐˈəɜn", "tʰɑχɤwosɨkɤʐən"),
    # yue: eSpeak spells Jyutping; lang="yue" rewrites it syllable by syllable
    ("yue", "你好", "nˈei5 hˈou2", "neihou"),
    ("yue", "香港人", "hˈoenɡ1 ɡˈonɡ2 jˈa4n", "hœŋkɔŋjɐn"),
    ("yue", "學生", "ho6ksˈanɡ1", "hɔk\u031asɐŋ"),  # coda k before the next initial s
    ("yue", "唔該", "ˈnɡ4 ɡˈoi1", "ŋ\u0329kɔy"),  # syllabic ng
    ("yue", "群出去", "kwˈa4n cˈeo1t hˈeoiɜ", "kʷʰɐntsʰɵt\u031ahɵy"),
    ("vi", "Xin chào, tôi là sinh viên.", "sˈin tʃˈaː2w | t̪ˈoj lˌaː2 sˈiɲ vˈiɛn", "sintʃaːwt̪ojlaːsiɲviɛn"),
    ("vi", "Việt Nam", "vˈiɛ6t̪ nˈaːm", "viɛt̪naːm"),
    ("th", "ภาษาไทย", "phˌa5ssasˈai2tha2j", "phassasaithaj"),
    # other scripts
    ("ja", "こんにちは、です", "kˌo̞nnitɕˈihä | dˈe̞sɯᵝ", "konnitɕihadesɯ"),
    ("ko", "축하", "tʃhˈukhɐ", "tʃʰukʰɐ"),
    ("ko", "빵", "p-ˈɐŋ", "pɐŋ"),
    ("ko", "한국어", "hˈɐnquqˌʌ", "hɐnkukʌ"),
]


@pytest.mark.parametrize(("lang", "source", "espeak", "expected"), ESPEAK_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(ESPEAK_CASES)])
def test_espeak_outputs_normalise(lang: str, source: str, espeak: str, expected: str) -> None:
    unknown: collections.Counter = collections.Counter()
    got = normalize_ipa(espeak, lang=lang, unknown=unknown)
    assert got == expected, f"{lang} {source!r}: {espeak!r} -> {got!r}, expected {expected!r}"
    assert not unknown
    assert is_normalized(got)
    assert " " not in got


def test_inventory_matches_tokens_file_order() -> None:
    from anyphone.text.tokenizer import default_lang_dir

    lines = (default_lang_dir() / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert [line.rsplit(" ", 1)[0] for line in lines[4:]] == list(INVENTORY)
    assert len(INVENTORY) == 123 and len(MODIFIERS) == 15 and len(BASE_SYMBOLS) == 108
    assert all(len(s) == 1 for s in INVENTORY)


def test_inventory_is_a_fixed_point() -> None:
    # each symbol after a base letter: NFD would re-order a bare run of combining marks
    text = "".join("a" + s for s in INVENTORY)
    unknown: collections.Counter = collections.Counter()
    assert normalize_ipa(text, unknown=unknown) == text
    assert not unknown


def test_normalisation_is_idempotent() -> None:
    import random

    rng = random.Random(5)
    alphabet = list(INVENTORY) + list(IPA_EQUIVALENTS) + list("ˈˌ.| \u0361ˑ˥˩\u0301Q☃ç") + ["ã", "ĩ"]
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        once = normalize_ipa(text)
        assert is_normalized(once)
        assert normalize_ipa(once) == once, (text, once)


def test_unicode_policy_nfc_and_nfd_agree() -> None:
    # precomposed (NFC) and decomposed inputs give the same tokens; ç is re-composed, ã is split
    for s in ["ãçẽ", "façade", "ɲũ"]:
        nfc = normalize_ipa(unicodedata.normalize("NFC", s))
        nfd = normalize_ipa(unicodedata.normalize("NFD", s))
        assert nfc == nfd
    assert normalize_ipa("c\u0327a") == "\u00e7a"
    assert normalize_ipa("\u00e3") == "a\u0303"


def test_script_g_tie_bars_stress_boundaries() -> None:
    assert normalize_ipa("ɡ") == "g"
    assert normalize_ipa("t͡ʃ d͜ʒ") == "tʃdʒ"
    assert normalize_ipa("ˈhɛˌloʊ 'wɜːld") == "hɛloʊwɜːld"
    assert normalize_ipa("ɪn.tə.ˈnæ.ʃə.nəl | ‖ a‿b") == "ɪntənæʃənəlab"
    assert normalize_ipa("/ˈkæt/ [kʰæt]") == "kætkʰæt"
    assert normalize_ipa("a:") == "aː"
    assert normalize_ipa("aˑ") == "a"  # half-long is dropped, not lengthened


def test_equivalents_map_into_inventory() -> None:
    inventory = set(INVENTORY)
    for src, dst in IPA_EQUIVALENTS.items():
        assert src not in inventory, src
        assert all(ch in inventory for ch in dst), (src, dst)
        assert normalize_ipa("a" + src + "a") == "a" + dst + "a"
    assert normalize_ipa("ʧʤʦʣ") == "tʃdʒtsdz"
    assert normalize_ipa("ɚɝ") == "ə˞ɜ˞"
    assert normalize_ipa("ɫ") == "l\u0334"
    assert normalize_ipa("ᵻᵿ") == "ɨʊ"
    assert normalize_ipa("ɹ̩") == "ɹ\u0329"  # syllabic mark is an inventory token
    # nothing is both dropped and in the inventory / tone set
    assert not IPA_DROPPED & inventory
    assert not TONE_MARKS & inventory


def test_tones_removed_by_default_and_counted_when_kept() -> None:
    assert normalize_ipa("ma˥˩ ma˧˥") == "mama"
    assert normalize_ipa("má mà mǎ mā") == "mamamama"
    assert normalize_ipa("ma⁵⁵ ma35") == "mama"
    unknown: collections.Counter = collections.Counter()
    # remove_tones=False keeps what the inventory can hold (no tone symbol): the rest is counted
    assert normalize_ipa("ma˥˩ má", remove_tones=False, unknown=unknown) == "mama"
    assert unknown == collections.Counter({"˥": 1, "˩": 1, "\u0301": 1})
    unknown.clear()
    assert normalize_ipa("ni2χˈɑu2 kˈuoɜ", lang="cmn", remove_tones=False, unknown=unknown) == "niχɑukuo"
    assert unknown == collections.Counter({"2": 2, "3": 1})
    unknown.clear()
    assert normalize_ipa("fˈaaɜt sˈaa7m", lang="yue", remove_tones=False, unknown=unknown) == "faːt\u031asaːm"
    assert unknown == collections.Counter({"3": 1, "7": 1})


def test_unknown_symbols_are_counted_not_silent() -> None:
    unknown: collections.Counter = collections.Counter()
    assert normalize_ipa("aQb☃bQ", unknown=unknown) == "abb"
    assert unknown == collections.Counter({"Q": 2, "☃": 1})
    # documented drops are not unknown
    unknown.clear()
    normalize_ipa("ˈa.b e̞ t͡s", unknown=unknown)
    assert not unknown
    # without a counter it still drops (and does not fail)
    assert normalize_ipa("aQ") == "a"


def test_remove_diacritics() -> None:
    assert normalize_ipa("tʰaːk̚ ɔ̃ ɫ ɚ", remove_diacritics=True) == "takɔlə"
    out = normalize_ipa("".join("a" + s for s in INVENTORY), remove_diacritics=True)
    assert out == "".join("a" + s if s in BASE_SYMBOLS else "a" for s in INVENTORY)
    assert not set(out) & MODIFIERS


def test_language_switch_markers() -> None:
    assert has_language_switch("(en)ðə(de)")
    assert has_language_switch("kˈat (pt-pt)ðə")
    assert not has_language_switch("ðə kwˈɪk")
    assert not has_language_switch("a (b) c")  # a parenthesised optional sound is not a switch
    unknown: collections.Counter = collections.Counter()
    assert normalize_ipa("(en)ðə(de) dˈaɪç", unknown=unknown) == "ðədaɪç"
    assert not unknown


def test_segment_phones() -> None:
    assert segment_phones("tʰaːk̚") == ["tʰ", "aː", "k\u031a"]
    assert segment_phones("ɔ̃bɲʲɛ") == ["ɔ̃", "b", "ɲʲ", "ɛ"]
    assert segment_phones("t͡ʃa") == ["t͡ʃ", "a"]
    assert segment_phones("ab cd") == ["a", "b", "c", "d"]
    assert segment_phones("ːa") == ["ː", "a"]  # a stray modifier becomes its own phone
    assert segment_phones("a ʰ") == ["a", "ʰ"]  # no attaching across a space
    assert segment_phones("") == []
    assert segment_phones("ə˞l\u0334") == ["ə˞", "l\u0334"]
    assert phones_to_string(segment_phones("kʷʰaː")) == "kʷʰ aː"
    # on normalised text the phones concatenate back to the input
    text = normalize_ipa("mʊɟʰeː hˈĩdi bˈoːlnˌaː")
    assert "".join(segment_phones(text)) == text
    assert len(segment_phones(text)) == 13


def test_text_modules_do_not_import_torch() -> None:
    code = ("import sys, anyphone.text.ipa, anyphone.text.tokenizer; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def _espeak():
    loader = pytest.importorskip("espeakng_loader")
    import ctypes
    import shutil

    from anyphone.data.espeak import _private_library_copy

    # A private copy: initialising the shared instance would reset the IPA trace mode of anyphone's synthesizer
    # for the rest of this process (test_synthesis then got eSpeak's ASCII phonemes)
    copy = _private_library_copy(loader.get_library_path())
    try:
        lib = ctypes.cdll.LoadLibrary(copy)
    finally:
        shutil.rmtree(os.path.dirname(copy), ignore_errors=True)
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
    if lib.espeak_Initialize(2, 0, loader.get_data_path().encode(), 0) < 0:  # 2 = AUDIO_OUTPUT_SYNCHRONOUS
        pytest.skip("espeak_Initialize failed")

    def phonemes(voice: str, text: str) -> str:
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            pytest.skip(f"no eSpeak voice {voice}")
        buf = ctypes.create_string_buffer(text.encode())
        ptr = ctypes.c_char_p(ctypes.addressof(buf))
        parts = []
        while ptr.value:
            out = lib.espeak_TextToPhonemes(ctypes.byref(ptr), 1, 0x02)  # UTF-8 in, IPA out
            if out:
                parts.append(out.decode())
        return " ".join(parts)

    return phonemes


@pytest.mark.parametrize(("voice", "text"), [
    ("en", "Church and judge, little bird."), ("en-us", "I think it is wonderful."),
    ("de", "Zwölf Boxkämpfer jagen Viktor."), ("fr", "Les enfants jouent."), ("pl", "Chrząszcz brzmi w trzcinie."),
    ("ru", "Съешь же ещё этих булок."), ("uk", "Доброго ранку, друже."), ("hi", "नमस्ते, आप कैसे हैं?"),
    ("cmn", "中国人民银行"), ("yue", "我哋係香港人"), ("vi", "Việt Nam"), ("ja", "こんにちは"), ("ko", "감사합니다"), ("cs", "třeba"),
])
def test_live_espeak_output_has_no_unknown_symbols(voice: str, text: str) -> None:
    phonemes = _espeak()
    ipa = phonemes(voice, text)
    unknown: collections.Counter = collections.Counter()
    out = normalize_ipa(ipa, lang=voice, unknown=unknown)
    assert not unknown, f"{voice}: {ipa!r} left unknown symbols {dict(unknown)}"
    assert out and is_normalized(out)
