"""IPA text normalisation and phone segmentation for ZIPA-compatible labels.

ZIPA's vocabulary (``ipa_simplified/tokens.txt``) holds 123 IPA symbols, one Unicode code point each:
108 base letters and 15 modifiers (``ʰ ʲ ʷ ʼ ː ˞ ˠ ˤ`` and the combining marks U+0303 U+031A U+0325 U+0329
U+032A U+0334 U+033A).  :func:`normalize_ipa` turns an IPA transcription (eSpeak NG IPA output, Wiktionary,
hand transcriptions) into a string made only of those symbols, with no spaces.

Unicode policy (fixed):
  1. eSpeak language-switch markers such as ``(en)`` are deleted (use :func:`has_language_switch` to drop
     such utterances instead).
  2. The text is put in NFD, so precomposed letters split into base + combining marks (``ã`` -> ``a`` +
     U+0303, which is an inventory token).  NFD also sorts stacked combining marks into canonical order,
     so the order of several diacritics on one base is canonical, not the source's.
  3. Optional voice-specific repairs of eSpeak NG quirks (``lang=``), see :data:`ESPEAK_VOICE_NOTES`.
  4. The one precomposed inventory member, ``ç`` (U+00E7), is re-composed from ``c`` + U+0327.
  5. Every code point then goes through, in this order: tone marks (dropped when ``remove_tones``),
     the equivalence table :data:`IPA_EQUIVALENTS`, the documented drop list :data:`IPA_DROPPED`
     (stress, boundaries, tie bars, phonetic detail the inventory cannot hold), the inventory.  Anything
     else is counted in ``unknown`` and dropped.
  6. The result is put back in canonical order (NFD, ``ç`` re-composed), so normalisation is idempotent.
  7. With ``remove_diacritics`` the 15 modifiers are removed last (so ``ɫ`` -> ``l``, ``ɚ`` -> ``ə``).

Voice repairs exist for cmn/zh, yue, ko and the Indic voices with the 'r.' flap (hi mr bn ur ne pa gu as
or); pass the eSpeak voice as ``lang`` when labelling eSpeak output.

This module must not import torch.
"""

from __future__ import annotations

import collections
import re
import unicodedata

__all__ = [
    "BASE_SYMBOLS",
    "ESPEAK_VOICE_NOTES",
    "INVENTORY",
    "IPA_DROPPED",
    "IPA_EQUIVALENTS",
    "MODIFIERS",
    "TONE_MARKS",
    "has_language_switch",
    "is_normalized",
    "normalize_ipa",
    "phones_to_string",
    "segment_phones",
]

# ZIPA's 123 symbols in ZIPA's token order (ids 4..126 of tokens.txt).  One code point each.
INVENTORY: tuple[str, ...] = tuple(
    "abcdefghijklmnopqrstuvwxyzæçðøħŋœǀǁǂǃɐɑɒɓɔɕɖɗɘəɛɜɞɟɠɢɣɤɥɦɧɨɪɬɭɮɯɰɱɲɳɴɵɶɸɹɺɻɽɾʀʁʂʃʄʈʉʊʋʌʍʎʏʐʑ"
    "ʒʔʕʘʙʛʜʝʟʡʢʰʲʷʼː˞ˠˤ\u0303\u031a\u0325\u0329\u032a\u0334\u033aβθχᶑⱱ"
)
assert len(INVENTORY) == 123 and len(set(INVENTORY)) == 123

# The 15 modifier symbols: they attach to the preceding base in segment_phones and are what
# remove_diacritics deletes.
MODIFIERS: frozenset[str] = frozenset(
    "ʰʲʷʼː˞ˠˤ\u0303\u031a\u0325\u0329\u032a\u0334\u033a"
)
BASE_SYMBOLS: tuple[str, ...] = tuple(s for s in INVENTORY if s not in MODIFIERS)
_INVENTORY_SET = frozenset(INVENTORY)

# Tone marks.  Removed silently by default; with remove_tones=False they are kept *if the inventory can
# hold them* -- it holds none, so they end up counted in `unknown` (useful to audit tone coverage).
TONE_MARKS: frozenset[str] = frozenset(
    "0123456789"  # eSpeak NG writes tones as digits in IPA mode (cmn, yue, vi, th)
    "⁰¹²³⁴⁵⁶⁷⁸⁹"  # superscript tone numbers (Sinological transcriptions)
    "˥˦˧˨˩"  # Chao tone letters U+02E5..U+02E9
    + "".join(chr(c) for c in range(0xA700, 0xA717))  # modifier tone letters (dotted / left-stem)
    + "\u0300\u0301\u0302\u0304\u030b\u030c\u030f"  # combining grave, acute, circumflex, macron, ...
    + "\u0340\u0341"  # combining grave/acute tone marks
    + "".join(chr(c) for c in range(0x1DC4, 0x1DCA))  # combining contour tone marks
    + "`"  # eSpeak NG lv: pitch-accent mnemonic leaking into IPA output
)

# Equivalents outside the inventory -> inventory symbols (keys are single code points, after NFD).
IPA_EQUIVALENTS: dict[str, str] = {
    "\u0261": "g",  # ɡ script g: ZIPA's inventory has only ASCII g (eSpeak and IPA both write ɡ)
    "ʧ": "tʃ",  # obsolete affricate ligatures: ZIPA writes affricates as two symbols
    "ʤ": "dʒ",
    "ʦ": "ts",
    "ʣ": "dz",
    "ʨ": "tɕ",
    "ʥ": "dʑ",
    "ɚ": "ə˞",  # rhotic schwa (eSpeak en-us) = schwa + rhotic hook, both inventory tokens
    "ɝ": "ɜ˞",  # rhotic open-mid central vowel, same reason
    "ʴ": "˞",  # superscript turned r used as rhoticity mark
    "ɫ": "l\u0334",  # velarised l (eSpeak bg, tr, ko) = l + tilde overlay U+0334
    "ᵻ": "ɨ",  # eSpeak en: reduced close central unrounded vowel (non-IPA) -> nearest IPA ɨ
    "ᵿ": "ʊ",  # eSpeak en: reduced close central rounded vowel (non-IPA) -> ʊ
    "ɿ": "ɨ",  # Sinological apical vowels (zi, shi) -> ɨ, the usual IPA approximation
    "ʅ": "ɨ",
    "ǝ": "ə",  # turned e U+01DD is a common typo for schwa U+0259
    "ɩ": "ɪ",  # obsolete iota for ɪ
    "ɷ": "ʊ",  # obsolete closed omega for ʊ
    "ε": "ɛ",  # Greek epsilon (eSpeak da emits it) for Latin ɛ
    "γ": "ɣ",  # Greek gamma typo for Latin gamma
    "φ": "ɸ",  # Greek phi typo for Latin phi
    "\ua7b5": "β",  # Latin beta, same sound as Greek beta in the inventory
    ":": "ː",  # ASCII colon is the usual ASCII stand-in for the length mark
    "ʱ": "ʰ",  # breathy-voiced release: ZIPA has no ʱ; voiced aspirates are written with ʰ (eSpeak hi does)
    "\u030a": "\u0325",  # ring above = voiceless on letters with descenders (eSpeak cs r̝̊) -> ring below
    "\u030d": "\u0329",  # vertical line above = syllabic, for letters with descenders -> line below
}

# Dropped on purpose (not "unknown"): each group says why.
_STRESS = "ˈˌ'"  # primary/secondary stress; ASCII ' is the common ASCII primary stress (eSpeak mnemonics)
_BOUNDARIES = (
    ".|‖‿-_"  # syllable break, minor/major group, linking, eSpeak liaison '-' (fr le-z), '_' pause
    ",;!?\"()[]/{}<>…"  # punctuation and transcription delimiters /…/ […]; parentheses of optional sounds
    "#^"  # eSpeak NG mnemonic leaks in IPA mode (is 'l#', mk 'k^', ru 'ɪ^'): no IPA meaning
)
_TIES = "\u0361\u035c\u200d"  # tie bars above/below and ZWJ (eSpeak's tie option): affricates become 2 tokens
_DETAIL = (
    "ˑ"  # half-long: dropped rather than mapped to ː, because half-long vowels pattern with short ones
    # and mapping them to ː would merge them with true long vowels
    "\u032f\u0311"  # non-syllabic below/above (eSpeak da ɐ̯): diphthong parts stay plain vowels
    "\u031d\u031e\u031f\u0320"  # raised, lowered (eSpeak ja e̞), advanced, retracted
    "\u0308\u033d"  # centralised (eSpeak ja ä), mid-centralised
    "\u0318\u0319\u0339\u031c"  # ATR, RTR, more / less rounded
    "\u0324\u0330\u032c"  # breathy, creaky, voiced: phonation detail ZIPA's labels do not carry
    "\u0306"  # extra-short
    "\u033b\u033c"  # laminal, linguolabial
    "\u1d5d"  # ᵝ lip compression (eSpeak ja ɯᵝ)
)
IPA_DROPPED: frozenset[str] = frozenset(_STRESS + _BOUNDARIES + _TIES + _DETAIL)

# eSpeak NG writes a language switch as "(en)ðə(de)"; the words in between use another voice.
_LANG_SWITCH_RE = re.compile(r"\([a-z]{2,3}(?:-[a-z0-9]+)*\)")

# Voice-specific repairs, applied (in order) on the NFD text when normalize_ipa(lang=...) is given.
# eSpeak NG renders phonemes without an IPA name by spelling their ASCII mnemonic, so some voices leak
# mnemonics whose meaning is fixed only inside that voice.
_CMN_FIXES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"ɜ"), "3"),  # cmn has no ɜ vowel: it is tone 35 spelled by its first digit (3 -> ɜ)
    (re.compile(r"ts\."), "tʂ"),  # retroflex mnemonics 'ts.' 's.' (zh, sh)
    (re.compile(r"s\."), "ʂ"),
    (re.compile(r"i\."), "ɨ"),  # apical vowel after retroflexes (shi)
    (re.compile(r"i\u032a"), "ɨ"),  # apical vowel after dental sibilants (si), written i̪
    (re.compile(r"o-"), "ɤ"),  # 'o-' is the mid back unrounded vowel (he, ge)
    (re.compile(r"ər"), "ə˞"),  # erhua
    (re.compile(r"n\u0261"), "ŋ"),  # final 'ong' spelled n + ɡ
    (re.compile(r"(?<=[ptkʂsɕ])h"), "ʰ"),  # aspirated stops/affricates spelled with a plain h
]
_RETROFLEX_FLAP_FIXES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"r\."), "ɽ"),  # hi, mr, bn, ur, ...: 'r.' is the retroflex flap (ड़ ড়)
]
_KO_FIXES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?<=[ptkqʃɕ])h"), "ʰ"),  # aspirated stops/affricates spelled with a plain h ('tʃhˈɐ')
    (re.compile(r"q"), "k"),  # ko has no uvular: 'q' is eSpeak's mnemonic for (tense / final) k
    # the '-' after a consonant marks a tense (fortis) consonant ('p-ˈɐŋ'); no inventory symbol holds
    # tenseness, so it is dropped with the other '-'
]
# eSpeak NG yue (Cantonese) spells Jyutping: initial, then the final with its tone digit inside it
# ('hˈoenɡ1', 'ɡwˈonɡ2', 'kwˈa4n', 'sˈyuɜt'; tone 3 spelled ɜ).  Codas m n p t k come after the tone
# digit, ng / i / u before it.  We rewrite each syllable to IPA with the usual Jyutping values.
_YUE_INITIALS = {"b": "p", "d": "t", "\u0261": "k", "p": "pʰ", "t": "tʰ", "k": "kʰ", "z": "ts", "c": "tsʰ",
                 "\u0261w": "kʷ", "kw": "kʷʰ"}
_YUE_SYLLABLE = re.compile(
    r"(?P<ini>\u0261w|kw|[bpmfdtnl\u0261khzcsjwŋ])?(?P<st>[ˈˌ]?)"
    r"(?P<nuc>aa|oe|eo|yu|a|e|i|o|u)(?P<glide>n\u0261|i|u)?(?P<tone>[1-9ɜ])"
    r"(?P<coda>[mnptk](?!w?[ˈˌ]?[aeiouy]))?"  # a consonant before a vowel starts the next syllable
)
_YUE_SYLLABIC = re.compile(r"(?P<nas>n\u0261|m)(?P<tone>[1-9ɜ])")  # m4 (唔), ng5 (五)


def _yue_syllable(m: re.Match[str]) -> str:
    ini, nuc, glide, coda = m["ini"] or "", m["nuc"], m["glide"] or "", m["coda"] or ""
    velar = glide == "n\u0261" or coda == "k"  # ing/ik, ung/uk have lax vowels
    vowel = {"aa": "aː", "a": "ɐ", "oe": "œ", "eo": "ɵ", "yu": "y", "e": "ɛ", "o": "ɔ",
             "i": "ɪ" if velar else "i", "u": "ʊ" if velar else "u"}[nuc]
    if (nuc, glide) in (("e", "i"), ("o", "u")):
        vowel = nuc  # ei, ou are close-mid diphthongs
    if glide == "i" and nuc in ("eo", "o", "u"):
        glide = "y"  # eoi [ɵy], oi [ɔy], ui [uy]
    glide = "ŋ" if glide == "n\u0261" else glide
    coda = coda + "\u031a" if coda in ("p", "t", "k") else coda  # unreleased final stops
    tone = "3" if m["tone"] == "ɜ" else m["tone"]
    return _YUE_INITIALS.get(ini, ini) + m["st"] + vowel + glide + tone + coda


def _yue_syllabic(m: re.Match[str]) -> str:
    return ("ŋ" if m["nas"] == "n\u0261" else "m") + "\u0329" + ("3" if m["tone"] == "ɜ" else m["tone"])


_YUE_FIXES: list = [(_YUE_SYLLABLE, _yue_syllable), (_YUE_SYLLABIC, _yue_syllabic)]

_VOICE_FIXES: dict[str, list] = {
    "cmn": _CMN_FIXES,
    "zh": _CMN_FIXES,
    "hi": _RETROFLEX_FLAP_FIXES,
    "mr": _RETROFLEX_FLAP_FIXES,
    "bn": _RETROFLEX_FLAP_FIXES,
    "ur": _RETROFLEX_FLAP_FIXES,
    "ne": _RETROFLEX_FLAP_FIXES,
    "pa": _RETROFLEX_FLAP_FIXES,
    "gu": _RETROFLEX_FLAP_FIXES,
    "as": _RETROFLEX_FLAP_FIXES,
    "or": _RETROFLEX_FLAP_FIXES,
    "ko": _KO_FIXES,
    "yue": _YUE_FIXES,
}

# What we know about eSpeak NG voices whose IPA output is not really IPA (for the corpus builder).
ESPEAK_VOICE_NOTES: dict[str, str] = {
    "cmn": "tones as digits (first digit of the Chao value; 3 spelled ɜ), retroflex 's.', aspiration 'h':"
    " repaired by lang='cmn'",
    "yue": "output is Jyutping spelling (aa, oe, eo, yu, z, c, 'nɡ', tone inside the final), not IPA:"
    " rewritten syllable by syllable by lang='yue' (Jyutping values, unreleased p̚ t̚ k̚)",
    "th": "Thai script is read letter by letter (no word segmentation); aspiration as 'h': avoid",
    "vi": "tones as digits; some vowels as 'e-' (hyphen dropped)",
    "ko": "aspiration as 'h', k as 'q', tense consonants as 'p-': repaired by lang='ko' (tenseness dropped)",
    "hi": "retroflex flap written 'r.': repaired by lang='hi' (also mr, bn, ur, ne, pa, gu, as, or)",
    # ASCII mnemonics that leak and are left to the `unknown` counter (seen on babel place names):
    "ky": "many mnemonics leak (S, Z, N, X, '[' after consonants, 'oe'): avoid",
    "ga": "'A' leaks (ˈAfɹɪk)",
    "uz": "'S' leaks (tSˈyɫy)",
    "lb": "'X' leaks (ʀˈoːX)",
    "pa": "'+' leaks (pu+ʈˈan)",
}


def has_language_switch(text: str) -> bool:
    """True if ``text`` (eSpeak NG phoneme output) contains a language-switch marker like ``(en)``."""
    return _LANG_SWITCH_RE.search(text) is not None


def _voice_key(lang: str) -> str:
    # "cmn-latn-pinyin" -> "cmn", "en-us" -> "en"
    return lang.lower().split("-")[0].split("_")[0]


def normalize_ipa(
    text: str,
    *,
    remove_tones: bool = True,
    remove_diacritics: bool = False,
    unknown: collections.Counter | None = None,
    lang: str | None = None,
) -> str:
    """Normalise an IPA transcription to ZIPA's label alphabet (see the module docstring for the policy).

    Args:
        text: IPA text, e.g. eSpeak NG IPA output (word spaces, stress marks and ties are fine).
        remove_tones: drop tone letters, tone digits and combining tone marks silently.  With False they
            are kept only where the inventory holds them (it holds none), so they are counted in
            ``unknown`` instead of vanishing silently.
        remove_diacritics: also drop the 15 modifier symbols (ZIPA's no-diacritics models).
        unknown: if given, every dropped code point that is neither in the inventory, nor in
            :data:`IPA_EQUIVALENTS`, nor a documented drop, is counted here (key: the character).
        lang: optional eSpeak NG voice name (``cmn``, ``hi``, ``ko`` ...) to apply voice-specific
            repairs of eSpeak mnemonics leaking into its IPA output.

    Returns:
        A string of inventory symbols only, with no spaces; every code point is one token.
    """
    text = _LANG_SWITCH_RE.sub(" ", text)
    text = unicodedata.normalize("NFD", text)
    if lang:
        for pattern, repl in _VOICE_FIXES.get(_voice_key(lang), ()):
            text = pattern.sub(repl, text)
    # re-compose the only precomposed inventory member
    text = text.replace("c\u0327", "ç")

    out: list[str] = []
    for ch in text:
        if ch in _INVENTORY_SET:
            out.append(ch)
        elif ch in TONE_MARKS:
            if not remove_tones and unknown is not None:
                unknown[ch] += 1
        elif ch in IPA_EQUIVALENTS:
            out.append(IPA_EQUIVALENTS[ch])
        elif ch in IPA_DROPPED or ch.isspace():
            continue
        elif unknown is not None:
            unknown[ch] += 1
    # dropping symbols can leave combining marks side by side in non-canonical order: re-sort them so
    # that normalisation is idempotent
    result = unicodedata.normalize("NFD", "".join(out)).replace("c\u0327", "ç")
    if remove_diacritics:
        result = "".join(ch for ch in result if ch not in MODIFIERS)
    return result


def is_normalized(text: str) -> bool:
    """True if every code point of ``text`` is an inventory symbol (no spaces)."""
    return all(ch in _INVENTORY_SET for ch in text)


def _attaches(ch: str) -> bool:
    # inventory modifiers, plus any other combining mark or modifier letter (except stress marks), so
    # that un-normalised text segments sensibly too
    if ch in MODIFIERS:
        return True
    if unicodedata.combining(ch):
        return True
    return unicodedata.category(ch) == "Lm" and ch not in "ˈˌ"


def segment_phones(text: str) -> list[str]:
    """Split IPA text into phones: a base symbol plus the modifiers that follow it.

    ``"tʰaː"`` -> ``["tʰ", "aː"]``.  Whitespace separates phones and is dropped.  A tie bar (U+0361 /
    U+035C) joins the next base into the same phone (``t͡ʃ`` stays one phone).  A modifier with no base
    before it becomes a phone of its own.  Used for PER scoring on normalised text.
    """
    phones: list[str] = []
    can_attach = False  # a phone is open (no whitespace since its base)
    tie_pending = False
    for ch in text:
        if ch.isspace():
            can_attach = tie_pending = False
            continue
        if ch in "\u0361\u035c":
            if can_attach:
                phones[-1] += ch
                tie_pending = True
            continue
        if can_attach and (tie_pending or _attaches(ch)):
            phones[-1] += ch
        else:
            phones.append(ch)
            can_attach = True
        tie_pending = False
    return phones


def phones_to_string(phones: list[str]) -> str:
    """Join phones with single spaces for display: ``["tʰ", "aː"]`` -> ``"tʰ aː"``."""
    return " ".join(phones)
