"""Offline sentence sources for the embedded eSpeak corpus.

Everything comes from PyPI packages that ship their data, so no download happens at run time:

* ``wordfreq``  - frequency-ranked word lists (about 40 languages),
* ``babel``     - CLDR display names in each language (countries, languages, scripts, currencies, months, days),
* ``faker``     - localised person and place names,
* ``num2words`` - numbers spelled out (other languages get digits, which eSpeak reads in that language).

Sentences are random word sequences (frequent words more often) mixed with names, CLDR phrases and numbers.
They are not grammatical, but every word is a real word of the language in its own script, which is what a
phone recogniser needs: eSpeak's pronunciation of real words with clause-level prosody.

Every word and phrase is checked against the language's script(s) so that e.g. a Latin name in a Russian
sentence (which eSpeak would read with English rules and mark ``(en)``) never gets in.
"""

from __future__ import annotations

import importlib.util
import random
import re
import unicodedata
from dataclasses import dataclass
from functools import cache

__all__ = ["DEFAULT_LANGUAGES", "LANGUAGES", "LanguageSpec", "TextSource", "resolve_languages"]


@dataclass(frozen=True)
class LanguageSpec:
    """How to get text and speech for one language.

    ``code`` is the language id written into the corpus (ISO 639-1 where one exists, else 639-3).
    ``voice`` is the eSpeak NG voice. The other fields name the same language in each text package
    (None where the package lacks it).  ``scripts`` lists the Unicode script names (first word of a
    character's Unicode name) a word may use.
    """

    code: str
    voice: str
    babel: str | None
    wordfreq: str | None = None
    faker: str | None = None
    num2words: str | None = None
    scripts: tuple[str, ...] = ("LATIN",)


def _s(*names: str) -> tuple[str, ...]:
    return tuple(names)


_LAT, _CYR = _s("LATIN"), _s("CYRILLIC")

# Languages whose eSpeak NG voice gives native IPA (checked by synthesising CLDR text: no language-switch
# markers, few symbols outside the IPA inventory). Left out on purpose: th and my (no word segmentation, IPA
# garbled), he (unvowelled Hebrew, vowels missing), chr (reads letter names), fo (no dictionary in this
# build), ky (emits ASCII phoneme names like "S" and "["), ba and ht (no CLDR text of their own), yue
# (romanisation-like output such as "baa" for long vowels).
LANGUAGES: dict[str, LanguageSpec] = {s.code: s for s in [
    LanguageSpec("af", "af", "af", None, None, None, _LAT),
    LanguageSpec("am", "am", "am", None, "am_ET", "am", _s("ETHIOPIC")),
    LanguageSpec("an", "an", "an", None, None, None, _LAT),
    LanguageSpec("ar", "ar", "ar", "ar", "ar_SA", "ar", _s("ARABIC")),
    LanguageSpec("as", "as", "as", None, None, None, _s("BENGALI")),
    LanguageSpec("az", "az", "az", None, "az_AZ", "az", _LAT),
    LanguageSpec("be", "be", "be", None, None, "be", _CYR),
    LanguageSpec("bg", "bg", "bg", "bg", "bg_BG", None, _CYR),
    LanguageSpec("bn", "bn", "bn", "bn", "bn_BD", "bn", _s("BENGALI")),
    LanguageSpec("bs", "bs", "bs", None, "bs_BA", None, _LAT),
    LanguageSpec("ca", "ca", "ca", "ca", None, "ca", _LAT),
    LanguageSpec("cmn", "cmn", "zh", "zh", "zh_CN", None, _s("CJK")),
    LanguageSpec("cs", "cs", "cs", "cs", "cs_CZ", "cs", _LAT),
    LanguageSpec("cy", "cy", "cy", None, None, "cy", _LAT),
    LanguageSpec("da", "da", "da", "da", "da_DK", "da", _LAT),
    LanguageSpec("de", "de", "de", "de", "de_DE", "de", _LAT),
    LanguageSpec("el", "el", "el", "el", "el_GR", None, _s("GREEK")),
    LanguageSpec("en", "en-us", "en", "en", "en_US", "en", _LAT),
    LanguageSpec("eo", "eo", "eo", None, None, "eo", _LAT),
    LanguageSpec("es", "es", "es", "es", "es_ES", "es", _LAT),
    LanguageSpec("et", "et", "et", None, "et_EE", None, _LAT),
    LanguageSpec("eu", "eu", "eu", None, None, None, _LAT),
    LanguageSpec("fa", "fa", "fa", "fa", "fa_IR", "fa", _s("ARABIC")),
    LanguageSpec("fi", "fi", "fi", "fi", "fi_FI", "fi", _LAT),
    LanguageSpec("fr", "fr", "fr", "fr", "fr_FR", "fr", _LAT),
    LanguageSpec("ga", "ga", "ga", None, "ga_IE", None, _LAT),
    LanguageSpec("gd", "gd", "gd", None, None, None, _LAT),
    LanguageSpec("gu", "gu", "gu", None, "gu_IN", None, _s("GUJARATI")),
    LanguageSpec("hi", "hi", "hi", "hi", "hi_IN", None, _s("DEVANAGARI")),
    LanguageSpec("hr", "hr", "hr", None, "hr_HR", None, _LAT),
    LanguageSpec("hu", "hu", "hu", "hu", "hu_HU", "hu", _LAT),
    LanguageSpec("hy", "hy", "hy", None, "hy_AM", None, _s("ARMENIAN")),
    LanguageSpec("ia", "ia", "ia", None, None, None, _LAT),
    LanguageSpec("id", "id", "id", "id", "id_ID", "id", _LAT),
    LanguageSpec("is", "is", "is", "is", "is_IS", "is", _LAT),
    LanguageSpec("it", "it", "it", "it", "it_IT", "it", _LAT),
    # eSpeak's Japanese voice reads kana only (kanji come out as "(en)Chinese letter"), so kana words only.
    LanguageSpec("ja", "ja", "ja", "ja", None, None, _s("HIRAGANA", "KATAKANA")),
    LanguageSpec("ka", "ka", "ka", None, "ka_GE", None, _s("GEORGIAN")),
    LanguageSpec("kk", "kk", "kk", None, None, "kz", _CYR),
    LanguageSpec("kl", "kl", "kl", None, None, None, _LAT),
    LanguageSpec("kn", "kn", "kn", None, None, "kn", _s("KANNADA")),
    LanguageSpec("ko", "ko", "ko", "ko", "ko_KR", "ko", _s("HANGUL")),
    LanguageSpec("la", "la", "la", None, "la", None, _LAT),
    LanguageSpec("lb", "lb", "lb", None, "lb_LU", None, _LAT),
    LanguageSpec("lt", "lt", "lt", "lt", "lt_LT", "lt", _LAT),
    LanguageSpec("lv", "lv", "lv", "lv", "lv_LV", "lv", _LAT),
    LanguageSpec("mi", "mi", "mi", None, None, None, _LAT),
    LanguageSpec("mk", "mk", "mk", "mk", "mk_MK", None, _CYR),
    LanguageSpec("ml", "ml", "ml", None, None, None, _s("MALAYALAM")),
    LanguageSpec("mr", "mr", "mr", None, "mr_IN", None, _s("DEVANAGARI")),
    LanguageSpec("ms", "ms", "ms", "ms", None, None, _LAT),
    LanguageSpec("mt", "mt", "mt", None, "mt_MT", None, _LAT),
    LanguageSpec("nb", "nb", "nb", "nb", "no_NO", "no", _LAT),
    LanguageSpec("ne", "ne", "ne", None, "ne_NP", None, _s("DEVANAGARI")),
    LanguageSpec("nl", "nl", "nl", "nl", "nl_NL", "nl", _LAT),
    LanguageSpec("om", "om", "om", None, None, None, _LAT),
    LanguageSpec("or", "or", "or", None, "or_IN", None, _s("ORIYA")),
    LanguageSpec("pa", "pa", "pa", None, None, None, _s("GURMUKHI")),
    LanguageSpec("pl", "pl", "pl", "pl", "pl_PL", "pl", _LAT),
    LanguageSpec("pt", "pt", "pt", "pt", "pt_PT", "pt", _LAT),
    LanguageSpec("qu", "qu", "qu", None, None, None, _LAT),
    LanguageSpec("ro", "ro", "ro", "ro", "ro_RO", "ro", _LAT),
    LanguageSpec("ru", "ru", "ru", "ru", "ru_RU", "ru", _CYR),
    LanguageSpec("sd", "sd", "sd", None, None, None, _s("ARABIC")),
    LanguageSpec("si", "si", "si", None, "si_LK", None, _s("SINHALA")),
    LanguageSpec("sk", "sk", "sk", "sk", "sk_SK", "sk", _LAT),
    LanguageSpec("sl", "sl", "sl", "sl", "sl_SI", "sl", _LAT),
    LanguageSpec("sq", "sq", "sq", None, "sq_AL", None, _LAT),
    LanguageSpec("sr", "sr", "sr", None, None, "sr", _CYR),
    LanguageSpec("sv", "sv", "sv", "sv", "sv_SE", "sv", _LAT),
    LanguageSpec("sw", "sw", "sw", None, "sw", None, _LAT),
    LanguageSpec("ta", "ta", "ta", "ta", "ta_IN", None, _s("TAMIL")),
    LanguageSpec("te", "te", "te", None, None, "te", _s("TELUGU")),
    LanguageSpec("ti", "ti", "ti", None, None, None, _s("ETHIOPIC")),
    LanguageSpec("tk", "tk", "tk", None, None, None, _LAT),
    LanguageSpec("tr", "tr", "tr", "tr", "tr_TR", "tr", _LAT),
    LanguageSpec("tt", "tt", "tt", None, None, None, _CYR),
    LanguageSpec("ug", "ug", "ug", None, None, None, _s("ARABIC")),
    LanguageSpec("uk", "uk", "uk", "uk", "uk_UA", "uk", _CYR),
    LanguageSpec("ur", "ur", "ur", "ur", None, None, _s("ARABIC")),
    LanguageSpec("uz", "uz", "uz", None, "uz_UZ", None, _LAT),
    LanguageSpec("vi", "vi", "vi", "vi", "vi_VN", "vi", _LAT),
]}

# The CPU demo set: ten languages in four scripts (Latin, Cyrillic, Devanagari, Han) with frequency word
# lists and clean eSpeak IPA; together they cover most of the common IPA symbols while staying small enough
# for a 2-3M parameter model trained from a few hours.
DEFAULT_LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es", "it", "pt", "ru", "pl", "hi", "cmn")


def resolve_languages(spec: str) -> list[str]:
    """Turn ``"all"``, ``"default"`` or a comma list (``"en,de"``) into language codes of :data:`LANGUAGES`."""
    spec = spec.strip()
    if spec == "all":
        return sorted(LANGUAGES)
    if spec == "default":
        return list(DEFAULT_LANGUAGES)
    codes = [c.strip() for c in spec.split(",") if c.strip()]
    bad = [c for c in codes if c not in LANGUAGES]
    if bad:
        raise ValueError(f"--languages: unknown code(s) {bad}; expected 'all', 'default' or codes among "
                         f"{','.join(sorted(LANGUAGES))}")
    if not codes:
        raise ValueError(f"--languages: {spec!r} names no language; expected 'all', 'default' or a comma list")
    return codes


# Characters allowed inside a word besides letters of the language's scripts.
_INNER_OK = set("'’-\u200c\u200d")
_SPLIT_RE = re.compile(r"[\s,;:!?.()\[\]{}\"“”«»/·،、，。]+")


def _script_ok(word: str, scripts: tuple[str, ...]) -> bool:
    """True if every letter of ``word`` is in one of ``scripts`` and it contains no digit or symbol."""
    has_letter = False
    for ch in word:
        if ch in _INNER_OK:
            continue
        cat = unicodedata.category(ch)
        if cat[0] == "M":  # combining marks (Indic vowel signs, Latin accents) belong to the base letter
            continue
        if cat[0] != "L":
            return False
        name = unicodedata.name(ch, "")
        if not name.startswith(scripts) and not name.startswith("MODIFIER LETTER"):
            return False
        has_letter = True
    return has_letter and word[0] not in _INNER_OK and word[-1] not in _INNER_OK


def _is_acronym(word: str) -> bool:
    # eSpeak spells acronyms letter by letter, often with English letter names: leave them out.
    letters = [c for c in word if c.isalpha()]
    return len(letters) > 1 and all(c.isupper() for c in letters)


def _phrase_ok(phrase: str, scripts: tuple[str, ...]) -> bool:
    words = phrase.split()
    return 0 < len(words) <= 5 and all(_script_ok(w, scripts) and not _is_acronym(w) for w in words)


def _vet(items: tuple[str, ...], voice: str) -> tuple[str, ...]:
    """Keep the items eSpeak reads natively: non-empty IPA and no language-switch marker such as ``(en)``."""
    from anyphone.data.espeak import EspeakSynthesizer
    from anyphone.text.ipa import has_language_switch

    syn = EspeakSynthesizer(voice)
    out = []
    for it in items:
        ipa = syn.phonemize(it)
        if ipa.strip() and not has_language_switch(ipa):
            out.append(it)
    return tuple(out)


@cache
def _cldr_phrases(locale_id: str, scripts: tuple[str, ...]) -> tuple[str, ...]:
    from babel import Locale

    loc = Locale.parse(locale_id)
    pool: list[str] = []
    for table in (loc.territories, loc.languages, loc.scripts, loc.currencies):
        pool.extend(str(v) for v in table.values())
    for ctx in ("format", "stand-alone"):
        for width in ("wide",):
            pool.extend(str(v) for v in loc.months.get(ctx, {}).get(width, {}).values())
            pool.extend(str(v) for v in loc.days.get(ctx, {}).get(width, {}).values())
    out = sorted({p.strip() for p in pool if _phrase_ok(p.strip(), scripts)})
    return tuple(out)


@cache
def _wordfreq_words(lang: str, scripts: tuple[str, ...], n: int) -> tuple[str, ...]:
    import wordfreq

    return tuple(w for w in wordfreq.top_n_list(lang, n) if _script_ok(w, scripts))


@cache
def _faker_names(locale_id: str, scripts: tuple[str, ...], n: int) -> tuple[str, ...]:
    # Only providers localised for this locale: Faker silently falls back to English ones otherwise.
    if importlib.util.find_spec(f"faker.providers.person.{locale_id}") is None:
        return ()
    from faker import Faker

    fake = Faker(locale_id)
    fake.seed_instance(1234)
    # Some providers build their city list from a set (it_IT's getcities), so its order, and the cities a
    # seeded Faker draws, changed with Python's hash seed from one process to the next: draw from it sorted.
    for provider in fake.get_providers():
        if isinstance(getattr(provider, "cities", None), (list, tuple)):
            provider.cities = sorted(set(provider.cities))
    makers = [fake.first_name, fake.last_name]
    if importlib.util.find_spec(f"faker.providers.address.{locale_id}") is not None:
        makers.append(fake.city)
    names = {str(m()).strip() for _ in range(n) for m in makers}
    return tuple(sorted(x for x in names if _phrase_ok(x, scripts)))


class TextSource:
    """Random sentences for one language, drawn from the offline sources (built lazily, cached per process).

    Args:
        code: language code from :data:`LANGUAGES`.
        vocab_size: number of most frequent wordfreq words to draw from.
    """

    def __init__(self, code: str, vocab_size: int = 8000) -> None:
        if code not in LANGUAGES:
            raise ValueError(f"language {code!r}: not in local/text_sources.py LANGUAGES")
        self.spec = LANGUAGES[code]
        sp = self.spec
        phrases = _cldr_phrases(sp.babel, sp.scripts) if sp.babel else ()
        names = _faker_names(sp.faker, sp.scripts, 200) if sp.faker else ()
        words = _wordfreq_words(sp.wordfreq, sp.scripts, vocab_size) if sp.wordfreq else ()
        if len(words) < 200:
            # No frequency list: split the CLDR phrases and names into single words instead.
            extra = sorted({w.strip("'’-") for p in phrases + names for w in p.split()})
            seen = set(words)
            words = tuple(words) + tuple(w for w in extra if w not in seen and _script_ok(w, sp.scripts)
                                         and not _is_acronym(w))
        self.phrases = _vet(phrases, sp.voice)
        self.names = _vet(names, sp.voice)
        self.words = _vet(words, sp.voice)
        if not self.words:
            raise RuntimeError(f"language {code!r}: no words from wordfreq/babel/faker; expected some text")
        self._num2words_ok = sp.num2words is not None
        # Digits are read by eSpeak's own number rules; some voices read them in English: then no digits.
        self._digits_ok = len(_vet(("7", "42", "1987", "350"), sp.voice)) == 4
        self.cased = any(unicodedata.name(c, "").startswith("LATIN CAPITAL") or
                         unicodedata.name(c, "").startswith(("CYRILLIC CAPITAL", "GREEK CAPITAL"))
                         for w in self.phrases[:50] for c in w[:1])

    @property
    def code(self) -> str:
        return self.spec.code

    def _number(self, rng: random.Random) -> str:
        n = rng.choice([rng.randint(0, 20), rng.randint(21, 100), rng.randint(100, 9999), rng.randint(1900, 2030)])
        if self._num2words_ok:
            try:
                from num2words import num2words

                out = num2words(n, lang=self.spec.num2words)
                if _phrase_ok(out, self.spec.scripts) or all(_script_ok(w, self.spec.scripts)
                                                             for w in out.replace("-", " ").split()):
                    return out
            except (NotImplementedError, OverflowError, ValueError, KeyError, TypeError):
                pass
        return str(n) if self._digits_ok else self._word(rng)

    def _word(self, rng: random.Random) -> str:
        # u**2 favours frequent ranks (roughly Zipf-like) while still reaching the tail.
        return self.words[int(len(self.words) * rng.random() ** 2)]

    def sentence(self, rng: random.Random, n_words: int) -> str:
        """A sentence of about ``n_words`` words (at least 1) with commas and a final . ? or !"""
        toks: list[str] = []
        count = 0
        while count < max(1, n_words):
            r = rng.random()
            if r < 0.1 and self.phrases:
                tok = rng.choice(self.phrases)
            elif r < 0.18 and self.names:
                tok = rng.choice(self.names)
            elif r < 0.23:
                tok = self._number(rng)
            else:
                tok = self._word(rng)
            toks.append(tok)
            count += len(tok.split())
            if count < n_words and rng.random() < 0.08:
                toks[-1] += ","
        text = " ".join(toks)
        if self.cased:
            text = text[:1].upper() + text[1:]
        return text + rng.choices([".", "?", "!"], weights=[80, 15, 5])[0]
