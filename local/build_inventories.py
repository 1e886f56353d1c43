#!/usr/bin/env python3
"""Build per-language phone inventories from eSpeak NG (offline) into anyphone/data/inventories/.

Method (all offline, all from installed packages):

1. Voices: every language file under espeakng_loader's ``espeak-ng-data/lang`` (its first ``language`` line
   is the voice code).  Voices are grouped by ISO 639-3 code (``langcodes``' alpha-3, with a few manual
   fixes); a language's inventory is the union over its voices (en-US, en-GB, ... -> ``eng``).
2. Words: native-script words for the voice's language, from ``wordfreq`` (most frequent words, where it has
   the language), the CLDR names in ``babel`` (languages, territories, scripts, months, days, currencies,
   units), and spelled-out numbers from ``num2words`` where it supports the language.  A few voices whose
   language has no text source here read words of a same-script donor language (``DONORS``; recorded in
   index.json as ``text_sources``): their inventory is eSpeak's letter-to-sound output for that script.
3. Each word is turned into IPA by running eSpeak NG in-process (ctypes, ``espeak_TextToPhonemes``, IPA mode);
   words where eSpeak switches language (``(en)`` markers) are skipped.  The IPA goes through
   ``anyphone.text.ipa.normalize_ipa(ipa, lang=voice)`` and ``segment_phones``.
4. A phone enters the inventory when it occurs at least ``--min-count`` times and makes up at least
   ``--min-share`` of the language's phone tokens (drops one-off artefacts of names and loanwords).

Outputs: ``<iso3>.txt`` (one phone per line, sorted by code point) and ``index.json`` (name, aliases, voices,
text sources, word count, per-phone counts).

PHOIBLE inventories (``--phoible CSV``): a second, independent source for about 2,100 languages, built from
PHOIBLE 2.0 with allophones as the PyPI package ``allophant`` ships it (``allophoible.csv``)::

    pip download --no-deps allophant -d /tmp/allophant && unzip -o /tmp/allophant/allophant-*.whl -d /tmp/allophant
    .venv/bin/python local/build_inventories.py --phoible /tmp/allophant/allophant/package_data/allophoible.csv

1. One inventory per ISO 639-3 language: the dialect allophant itself prefers where it names one
   (``PHOIBLE_DIALECTS``), else the inventory with the most distinct phones after mapping (PHOIBLE often has
   several descriptions of a language; the richest one restricts least wrongly), ties to the lowest ID.
2. Its phones are the phonemes plus their allophones (a recogniser hears allophones).
3. Each segment is mapped onto the model's tokens with ``normalize_ipa`` (equivalents such as ``ɡ`` -> ``g``;
   phonetic detail the tokens cannot hold, such as ``̠`` or tie bars, is dropped; affricates become two
   phones) and split with ``segment_phones``. A segment with a symbol ``normalize_ipa`` does not know is not
   mapped and is listed in the language's ``unmapped`` column instead of being dropped silently.

Output: ``phoible-inventories.txt``, one line per language: ``iso3<TAB>name<TAB>source:inventory id<TAB>phones
(space-separated, sorted)<TAB>unmapped segments``. The raw CSV (24 MB) is not shipped. Licence: PHOIBLE is
CC BY-SA 3.0 (Moran & McCloy 2019); allophant's wheel ships the CSV with an MIT LICENSE.txt naming "2015
PHOIBLE" and the allophant authors. The derived file keeps the CC BY-SA 3.0 attribution in its header.

Usage::

    .venv/bin/python local/build_inventories.py [--out anyphone/data/inventories] [--max-words 4000]
    .venv/bin/python local/build_inventories.py --phoible allophoible.csv   # PHOIBLE file only
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import re
import sys
import time
from pathlib import Path

# Voices left out, with the reason (recorded in index.json).
SKIP_VOICES = {
    "xex": "eSpeak test voice", "py": "not an ISO 639-3 language", "qdb": "not an ISO 639-3 language",
    "piqd": "not an ISO 639-3 language", "en-shaw": "Shavian script, no text", "fa-latn": "Latin-script Persian, no text",
    "cmn-latn-pinyin": "pinyin input variant of cmn", "hak": "reads romanised text only, no text",
    "sit/yue-Latn-jyutping": "Jyutping input variant of yue",
    "yue": "eSpeak writes Jyutping-like mnemonics, not IPA (see anyphone.text.ipa.ESPEAK_VOICE_NOTES)",
    "th": "eSpeak reads Thai script letter by letter (see anyphone.text.ipa.ESPEAK_VOICE_NOTES)",
}

# ISO 639-3 codes where langcodes' alpha-3 is not what we want, keyed by eSpeak's base code.
ISO3_FIXES = {"no": "nob", "nb": "nob", "chr": "chr"}

# Extra aliases (individual-language codes people use for a macrolanguage entry), keyed by ISO 639-3.
EXTRA_ALIASES = {
    "ara": ["arb"], "fas": ["pes"], "msa": ["zsm"], "swa": ["swh"], "est": ["ekk"], "lav": ["lvs"],
    "uzb": ["uzn"], "kur": ["kmr"], "orm": ["gaz"], "que": ["quz"], "grn": ["gug"], "nep": ["npi"],
    "ori": ["ory"], "sqi": ["als", "alb"], "nob": ["no", "nor"], "cmn": ["zh", "zho"],
    "hye": ["arm"], "kat": ["geo"], "ell": ["gre"], "deu": ["ger"], "fra": ["fre"], "nld": ["dut"],
    "ces": ["cze"], "slk": ["slo"], "ron": ["rum"], "mkd": ["mac"], "mya": ["bur"],
    "eus": ["baq"], "cym": ["wel"], "isl": ["ice"], "aze": ["azj"], "kok": ["gom"], "pan": ["pnb"],
}

# Text-source language for voices whose own language has little or no text in wordfreq/babel.
DONORS = {
    "hyw": "hy", "grc": "el", "bpy": "bn", "nog": "kk", "ltg": "lv", "smj": "se", "quc": "es", "nci": "es",
    "mto": "es", "jbo": "es", "lfn": "es", "qya": "es", "sjn": "es", "cmn": "zh", "yue": "zh",
}
# Donors that are the same language's text under another code (not reported as borrowed text).
SAME_LANGUAGE_TEXT = {"cmn", "yue"}
# wordfreq codes, keyed by the text-source code, where they differ.
WORDFREQ_CODES = {"hr": "sh", "bs": "sh", "sr": "sh", "no": "nb", "yue": "zh"}
# babel locale, keyed by the text-source code, where it differs.
BABEL_CODES = {"no": "nb", "zh": "zh_Hans", "yue": "yue_Hant", "sr": "sr_Latn", "ku": "ku", "chr": "chr"}

_PUNCT_RE = re.compile(r"[\s,.;:!?()\[\]{}«»“”„\"/\\|<>=+*&%$#@~^`·…–—、。，：；！？（）「」『』]+")

# Display names where the eSpeak voice name is not a plain language name.
NAME_FIXES = {"cmn": "Chinese (Mandarin)", "yue": "Chinese (Cantonese)", "chr": "Cherokee", "ell": "Greek",
              "grc": "Greek (Ancient)", "hye": "Armenian (Eastern)", "hyw": "Armenian (Western)",
              "gle": "Irish", "gla": "Scottish Gaelic", "mya": "Burmese", "msa": "Malay"}


def _is_word(token: str) -> bool:
    """Letters and combining marks only (so Indic/SE-Asian vowel signs stay inside words), inner ' and -."""
    import unicodedata

    core = token.replace("'", "").replace("’", "").replace("-", "")
    return bool(core) and token[0] not in "'’-" and token[-1] not in "'’-" and all(
        unicodedata.category(c)[0] in "LM" for c in core)


def split_words(text: str) -> list[str]:
    return [t for t in _PUNCT_RE.split(text) if t and _is_word(t)]


# --------------------------------------------------------------------------------------------------------
# eSpeak NG, in-process


class Espeak:
    """Minimal ctypes binding: text -> IPA with espeak_TextToPhonemes."""

    def __init__(self) -> None:
        import espeakng_loader

        self.data_dir = Path(espeakng_loader.get_data_path())
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        # 2 = AUDIO_OUTPUT_SYNCHRONOUS: no audio thread; we never synthesise.
        if lib.espeak_Initialize(2, 0, str(self.data_dir).encode(), 0) <= 0:
            raise RuntimeError(f"{self.data_dir}: espeak_Initialize failed")
        self.lib = lib

    def set_voice(self, voice: str) -> None:
        err = self.lib.espeak_SetVoiceByName(voice.encode())
        if err != 0:
            raise ValueError(f"eSpeak voice {voice!r}: espeak_SetVoiceByName returned {err}")

    def to_ipa(self, text: str) -> str:
        buf = ctypes.create_string_buffer(text.encode("utf-8"))
        ptr = ctypes.c_void_p(ctypes.addressof(buf))
        parts = []
        # Each call translates one clause and advances ptr; NULL when the text is used up.
        while ptr.value:
            out = self.lib.espeak_TextToPhonemes(ctypes.byref(ptr), 1, 0x02)  # 1 = UTF-8 text, 0x02 = IPA
            if out:
                parts.append(out.decode("utf-8", errors="replace"))
        return " ".join(parts)


def list_espeak_voices(data_dir: Path) -> list[tuple[str, str, str]]:
    """(identifier relative to lang/, voice code from its first ``language`` line, display name)."""
    rows = []
    for f in sorted((data_dir / "lang").rglob("*")):
        if not f.is_file():
            continue
        name, code = f.name, None
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "name":
                name = " ".join(parts[1:]).split("//")[0].strip()
            if len(parts) >= 2 and parts[0] == "language" and code is None:
                code = parts[1].lower()
        rows.append((f.relative_to(data_dir / "lang").as_posix(), code or f.name.lower(), name))
    return rows


def iso3_of(base: str) -> str | None:
    import langcodes

    if base in ISO3_FIXES:
        return ISO3_FIXES[base]
    try:
        a3 = langcodes.Language.get(base).to_alpha3()
    except (LookupError, ValueError):
        return None
    return a3 if re.fullmatch(r"[a-z]{3}", a3) else None


# --------------------------------------------------------------------------------------------------------
# word lists


def babel_words(code: str) -> list[str]:
    import babel

    loc_code = BABEL_CODES.get(code, code)
    try:
        loc = babel.Locale.parse(loc_code)
    except (ValueError, babel.UnknownLocaleError):
        return []
    texts: list[str] = []
    for table in (loc.languages, loc.territories, loc.scripts, loc.currencies):
        texts.extend(str(v) for v in table.values())
    for ctx in ("format", "stand-alone"):
        for width in ("wide",):
            try:
                texts.extend(str(v) for v in loc.months[ctx][width].values())
                texts.extend(str(v) for v in loc.days[ctx][width].values())
            except KeyError:
                pass
    try:
        for unit in loc.unit_display_names.values():
            for v in unit.values():
                if isinstance(v, str):
                    texts.append(v)
    except (AttributeError, KeyError):
        pass
    words = []
    for t in texts:
        words.extend(split_words(t))
    return words


def wordfreq_words(code: str, n: int) -> list[str]:
    import wordfreq

    wf = WORDFREQ_CODES.get(code, code)
    if wf not in wordfreq.available_languages():
        return []
    return [w for w in wordfreq.top_n_list(wf, n) if _is_word(w)]


def number_words(code: str) -> list[str]:
    try:
        import num2words
    except ImportError:
        return []
    if code not in num2words.CONVERTER_CLASSES:
        return []
    words = []
    for n in list(range(101)) + [200, 300, 1000, 2000, 10 ** 6]:
        try:
            words.extend(split_words(num2words.num2words(n, lang=code)))
        except (NotImplementedError, ValueError, KeyError, IndexError, TypeError, AttributeError,
                OverflowError):
            break
    return words


def words_for(code: str, max_words: int) -> tuple[list[str], list[str]]:
    """Deduplicated native words for text-source language ``code`` and the names of the sources used."""
    sources, seen, out = [], set(), []
    for label, ws in (("wordfreq", wordfreq_words(code, max_words)), ("babel", babel_words(code)),
                      ("num2words", number_words(code))):
        if ws:
            sources.append(f"{label}:{code}")
        for w in ws:
            key = w.lower()
            if key not in seen and len(w) <= 30:
                seen.add(key)
                out.append(w)
    return out[: max_words + 3000], sources


# --------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "anyphone/data/inventories")
    ap.add_argument("--max-words", type=int, default=4000, help="most frequent wordfreq words per language")
    ap.add_argument("--min-count", type=int, default=3, help="a phone needs at least this many occurrences")
    ap.add_argument("--min-share", type=float, default=2e-4, help="... and this share of the phone tokens")
    ap.add_argument("--min-words", type=int, default=150, help="languages with fewer usable words are skipped")
    ap.add_argument("--only", nargs="*", help="build only these eSpeak voice codes (debugging)")
    ap.add_argument("--phoible", type=Path, default=None,
                    help="allophant's allophoible.csv: build phoible-inventories.txt only (see the docstring)")
    args = ap.parse_args(argv)
    if args.phoible is not None:
        return build_phoible(args.phoible, args.out)

    from anyphone.text.ipa import has_language_switch, normalize_ipa, segment_phones

    es = Espeak()
    voices = list_espeak_voices(es.data_dir)
    groups: dict[str, dict] = {}
    excluded: dict[str, str] = {}
    t0 = time.time()
    for ident, code, name in voices:
        if args.only and code not in args.only:
            continue
        if code in SKIP_VOICES or ident in SKIP_VOICES:
            excluded[code] = SKIP_VOICES.get(code) or SKIP_VOICES[ident]
            continue
        base = code.split("-")[0]
        iso3 = iso3_of(base)
        if iso3 is None:
            print(f"skip voice {ident} ({code}): no ISO 639-3 code", file=sys.stderr)
            excluded[code] = "no ISO 639-3 code"
            continue
        src = DONORS.get(base, base)
        words, sources = words_for(src, args.max_words)
        if src != base and base not in SAME_LANGUAGE_TEXT:
            sources = [f"{s} (donor text for {base})" for s in sources]
        if len(words) < args.min_words:
            print(f"skip voice {ident} ({code}): only {len(words)} words of text", file=sys.stderr)
            excluded[code] = f"only {len(words)} words of text"
            continue
        es.set_voice(ident)
        counts: collections.Counter = collections.Counter()
        used = switched = 0
        for w in words:
            raw = es.to_ipa(w)
            if not raw.strip():
                continue
            if has_language_switch(raw):
                switched += 1
                continue
            norm = normalize_ipa(raw, lang=code)
            if not norm:
                continue
            used += 1
            counts.update(segment_phones(norm))
        g = groups.setdefault(iso3, {"name": None, "voices": [], "aliases": set(), "text_sources": set(),
                                     "words": 0, "switched": 0, "counts": collections.Counter(),
                                     "voice_names": []})
        g["voices"].append(code)
        g["voice_names"].append(name)
        g["aliases"].update({base, code} - {iso3})
        g["text_sources"].update(sources)
        g["words"] += used
        g["switched"] += switched
        g["counts"].update(counts)
        print(f"{iso3:4s} {code:18s} words {used:5d} (switched {switched:4d}) phones {len(counts):3d} "
              f"[{time.time() - t0:5.1f}s]", file=sys.stderr)

    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.txt"):
        if re.fullmatch(r"[a-z]{3}", old.stem):  # eSpeak inventories only; the PHOIBLE file stays
            old.unlink()
    index = {}
    for iso3 in sorted(groups):
        g = groups[iso3]
        total = sum(g["counts"].values())
        keep = sorted(p for p, c in g["counts"].items() if c >= args.min_count and c / total >= args.min_share)
        if g["words"] < args.min_words or not keep:
            print(f"skip {iso3}: {g['words']} words", file=sys.stderr)
            excluded[iso3] = f"only {g['words']} words transcribed without a language switch"
            continue
        (args.out / f"{iso3}.txt").write_text("".join(p + "\n" for p in keep), encoding="utf-8")
        aliases = sorted((g["aliases"] | set(EXTRA_ALIASES.get(iso3, []))) - {iso3})
        names = g["voice_names"]
        # One voice: its name as is; several (dialects): the part before the parenthesis.
        name = NAME_FIXES.get(iso3) or (names[0] if len(names) == 1 else names[0].split("(")[0].strip())
        index[iso3] = {
            "name": name,
            "aliases": aliases,
            "espeak_voices": sorted(g["voices"]),
            "text_sources": sorted(g["text_sources"]),
            "words": g["words"],
            "phones": len(keep),
            "dropped_rare": sorted(p for p in g["counts"] if p not in keep),
            "counts": {p: g["counts"][p] for p in keep},
        }
    meta = {
        "source": "eSpeak NG (espeakng_loader data) IPA of native words; see local/build_inventories.py",
        "min_count": args.min_count,
        "min_share": args.min_share,
        "languages": index,
        "excluded_voices": dict(sorted(excluded.items())),
    }
    (args.out / "index.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1, sort_keys=True) + "\n",
                                         encoding="utf-8")
    print(f"wrote {len(index)} inventories to {args.out} in {time.time() - t0:.0f}s", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------------------
# PHOIBLE (allophant's allophoible.csv)

PHOIBLE_FILE = "phoible-inventories.txt"
# Dialects allophant prefers (its package_data/default_dialects.json), keyed by ISO 639-3.
PHOIBLE_DIALECTS = {"eng": "Western and Mid-Western US; Southern California", "nld": "Belgian Standard",
                    "ell": "Standard Modern Greek (Athenian)", "por": "Lisbon"}
PHOIBLE_HEADER = """\
# PHOIBLE inventories with allophones, mapped onto anyphone's IPA tokens (built by local/build_inventories.py
# --phoible allophoible.csv; allophoible.csv from the PyPI package allophant 1.0.0).
# Source data: PHOIBLE 2.0, Moran, Steven & McCloy, Daniel (eds.) 2019, https://phoible.org, licensed
# CC BY-SA 3.0 (https://creativecommons.org/licenses/by-sa/3.0/); allophones from Allophoible (Herygers &
# Glocker 2023, MIT, "Copyright (c) 2015 PHOIBLE"). This derived file is distributed under CC BY-SA 3.0.
# Columns: iso3, name, source:inventory id, phones (space-separated), segments that could not be mapped.
"""


# PHOIBLE symbols normalize_ipa does not know, with the nearest token spelling (approximations noted).
PHOIBLE_EQUIVALENTS = {
    "ⁿ": "n", "ᵐ": "m", "ᵑ": "ŋ", "ᶬ": "ɱ", "ᶯ": "ɳ", "ᶮ": "ɲ",  # prenasalisation: a nasal phone before
    "ᶣ": "ʲ",  # labial-palatalisation: kept as palatalisation (the tokens have no combined mark)
    "ȵ": "ɲ", "ȶ": "c", "ȡ": "ɟ", "ȴ": "ʎ",  # alveolo-palatal n t d l (Sinological): nearest palatals
    "ᵊ": "ə", "ᶦ": "ɪ", "ᵘ": "u", "ⁱ": "i",  # vowel off-glides / releases written as superscripts
    "ʶ": "ʁ", "ᵝ": "", "ᴅ": "d", "ᴇ": "e", "ɪ̈": "ɨ",
    "\u0348": "", "\u0349": "",  # fortis / lenis (extIPA): articulatory strength the tokens do not carry
    "ˀ": "ʔ",  # pre-/post-glottalisation: a glottal stop phone beside the sonorant
}


def map_segment(segment: str) -> list[str] | None:
    """A PHOIBLE segment as anyphone phones (``t̠ʃ`` -> ``['t', 'ʃ']``), or None when a symbol is unknown."""
    from anyphone.text.ipa import normalize_ipa, segment_phones

    for src, dst in PHOIBLE_EQUIVALENTS.items():
        segment = segment.replace(src, dst)
    unknown: collections.Counter = collections.Counter()
    norm = normalize_ipa(segment, unknown=unknown)
    if unknown or not norm:
        return None
    return segment_phones(norm)


def build_phoible(csv_path: Path, out_dir: Path) -> int:
    import csv

    if not csv_path.is_file():
        print(f"{csv_path}: not found; see this script's docstring for how to get allophoible.csv",
              file=sys.stderr)
        return 1
    invs: dict[str, dict] = {}
    with open(csv_path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            iso = (row.get("ISO6393") or "").strip()
            if not re.fullmatch(r"[a-z]{3}", iso):
                continue
            inv = invs.setdefault(row["InventoryID"], {"iso": iso, "name": row["LanguageName"],
                                                       "source": row["Source"], "dialect": row["SpecificDialect"],
                                                       "segments": []})
            if row.get("SegmentClass") == "tone":
                continue  # tones are not segments the recogniser writes (normalize_ipa drops tone marks)
            inv["segments"].append(row["Phoneme"])
            allo = row.get("Allophones") or ""
            if allo != "NA":
                # "∅" is an allophone that is no sound at all (deletion)
                inv["segments"].extend(a for a in allo.split() if a != "∅")
    by_lang: dict[str, list[tuple[str, dict]]] = collections.defaultdict(list)
    for inv_id, inv in invs.items():
        phones, unmapped = set(), set()
        for seg in inv["segments"]:
            mapped = map_segment(seg)
            if mapped is None:
                unmapped.add(seg)
            else:
                phones.update(mapped)
        inv["phones"], inv["unmapped"] = sorted(phones), sorted(unmapped)
        by_lang[inv["iso"]].append((inv_id, inv))
    lines, n_unmapped = [], 0
    for iso in sorted(by_lang):
        cands = by_lang[iso]
        preferred = [c for c in cands if c[1]["dialect"] == PHOIBLE_DIALECTS.get(iso)]
        inv_id, inv = preferred[0] if preferred else min(cands, key=lambda c: (-len(c[1]["phones"]), int(c[0])))
        if not inv["phones"]:
            continue
        n_unmapped += bool(inv["unmapped"])
        name = " ".join(inv["name"].split())
        lines.append("\t".join([iso, name, f"{inv['source']}:{inv_id}", " ".join(inv["phones"]),
                                " ".join(inv["unmapped"])]))
    out = out_dir / PHOIBLE_FILE
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(PHOIBLE_HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {len(lines)} PHOIBLE inventories to {out} ({out.stat().st_size / 1024:.0f} KB); "
          f"{n_unmapped} with segments that could not be mapped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
