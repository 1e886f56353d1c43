"""Phone error rate (PER), phonetic feature error rate (PFER) and icefall-style result files.

Pure Python (no torch). ``results`` everywhere is a sequence of ``(cut_id, ref_text, hyp_text, language)``
tuples holding IPA strings (3-tuples without the language are accepted; their language is ``""``).

Phones
  Both texts are cut into phones with :func:`anyphone.text.ipa.segment_phones` (a base symbol plus the
  modifier diacritics that follow it) after removing whitespace and the word-boundary token ``▁``.

PER (in percent)
  ``100 * (S + D + I) / N`` where S, D, I are the substitutions, deletions and insertions of the
  kaldialign (Levenshtein) alignment of the reference and hypothesis phone sequences, summed over
  utterances, and N is the total number of reference phones.

PFER (in percent)
  ``100 * sum_utts FED(ref_phones, hyp_phones) / N``: the PanPhon feature edit distance summed over
  utterances, divided by the total number of reference phones. FED is the minimum-cost edit distance of
  panphon's ``Distance.feature_edit_distance`` (panphon 0.22), computed over our phone sequences:

  - each phone maps to its panphon feature vector (24 features valued -1/0/+1, from
    ``FeatureTable().word_to_vector_list(phone, numeric=True)``);
  - substitution cost = ``sum_f |a_f - b_f| / 2 / 24`` (``Distance.unweighted_substitution_cost``; 0 for
    identical vectors, at most 1);
  - insertion / deletion cost = ``sum_f (0.5 if v_f == 0 else 1) / 24``
    (``Distance.unweighted_insertion_cost`` / ``unweighted_deletion_cost``; close to 1).

  Panphon lacks a few inventory symbols: ASCII ``g`` is read as ``ɡ`` (U+0261); ``ʜ``, ``ʢ``, ``ʡ``, ``ᶑ``
  and ``ⱱ`` are scored with the features of their nearest panphon segment (``ħ``, ``ʕ``, ``ʔ``, ``ɗ``,
  ``ʋ``); diacritics panphon ignores are dropped. A phone that still has no vector costs 1 to insert,
  delete or substitute (0 against an identical phone). Applied to strings that panphon segments like
  ``segment_phones`` does, FED equals ``panphon.distance.Distance().feature_edit_distance(ref, hyp)``.

Both rates are micro-averages (errors summed over utterances before dividing). Per-language tables
give the same quantities per language, and ``macro`` averages give each language equal weight.

Result files are written atomically (:func:`anyphone.fileio.atomic_write`): a reader sees the previous file
or the whole new one, never half of one.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import kaldialign

from anyphone.fileio import atomic_write
from anyphone.text.ipa import segment_phones

__all__ = [
    "ErrorStats",
    "ScoreReport",
    "align_phones",
    "compute_per",
    "compute_pfer",
    "phone_feature_edit_distance",
    "score_results",
    "text_to_phones",
    "utterance_stats",
    "write_errs",
    "write_language_table",
    "write_recogs",
    "write_summary",
]

EPS = "*"  # gap symbol in alignments, as in icefall's errs files
WORD_BOUNDARY = "▁"

Result = tuple[str, str, str, str]


# ----------------------------------------------------------------------------------------------------------
# Phone segmentation


def text_to_phones(text: str) -> list[str]:
    """IPA text -> list of phones (whitespace and ``▁`` removed, then ``segment_phones``)."""
    cleaned = "".join(ch for ch in text if not ch.isspace() and ch != WORD_BOUNDARY)
    if not cleaned:
        return []
    return list(segment_phones(cleaned))


# ----------------------------------------------------------------------------------------------------------
# Statistics


@dataclass
class ErrorStats:
    """Error counts accumulated over utterances.

    ``feature_distance`` is the summed PanPhon feature edit distance (see module docstring).
    """

    num_utts: int = 0
    ref_phones: int = 0
    hyp_phones: int = 0
    corr: int = 0
    subs: int = 0
    dels: int = 0
    ins: int = 0
    feature_distance: float = 0.0

    @property
    def errors(self) -> int:
        return self.subs + self.dels + self.ins

    @property
    def per(self) -> float:
        """Phone error rate in percent (0 when there are no reference phones)."""
        return 100.0 * self.errors / self.ref_phones if self.ref_phones else 0.0

    @property
    def pfer(self) -> float:
        """Phonetic feature error rate in percent (0 when there are no reference phones)."""
        return 100.0 * self.feature_distance / self.ref_phones if self.ref_phones else 0.0

    def add(self, other: ErrorStats) -> None:
        """Accumulate ``other`` into these counts."""
        for name in ("num_utts", "ref_phones", "hyp_phones", "corr", "subs", "dels", "ins", "feature_distance"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, float]:
        d: dict[str, float] = asdict(self)
        d["errors"] = self.errors
        d["PER"] = self.per
        d["PFER"] = self.pfer
        return d


@dataclass
class ScoreReport:
    """Overall and per-language statistics of a test set."""

    overall: ErrorStats = field(default_factory=ErrorStats)
    per_language: dict[str, ErrorStats] = field(default_factory=dict)

    @property
    def macro_per(self) -> float:
        """Mean of the per-language PERs (each language weighs the same)."""
        langs = [s for s in self.per_language.values() if s.ref_phones]
        return sum(s.per for s in langs) / len(langs) if langs else 0.0

    @property
    def macro_pfer(self) -> float:
        """Mean of the per-language PFERs."""
        langs = [s for s in self.per_language.values() if s.ref_phones]
        return sum(s.pfer for s in langs) / len(langs) if langs else 0.0


def align_phones(ref: Sequence[str], hyp: Sequence[str]) -> list[tuple[str, str]]:
    """Levenshtein alignment (kaldialign) of two phone lists; gaps are ``"*"``."""
    return kaldialign.align(list(ref), list(hyp), EPS)


def _count_alignment(ali: Iterable[tuple[str, str]]) -> tuple[int, int, int, int]:
    corr = subs = dels = ins = 0
    for r, h in ali:
        if r == EPS:
            ins += 1
        elif h == EPS:
            dels += 1
        elif r != h:
            subs += 1
        else:
            corr += 1
    return corr, subs, dels, ins


# ----------------------------------------------------------------------------------------------------------
# PanPhon feature edit distance

# Inventory symbols panphon 0.22 does not know, mapped to the closest segment it does.
_PANPHON_STANDIN = {"g": "ɡ", "ʜ": "ħ", "ʢ": "ʕ", "ʡ": "ʔ", "ᶑ": "ɗ", "ⱱ": "ʋ"}


@functools.lru_cache(maxsize=1)
def _panphon() -> tuple[object, object]:
    import panphon
    import panphon.distance

    return panphon.FeatureTable(), panphon.distance.Distance()


@functools.lru_cache(maxsize=65536)
def _phone_vector(phone: str) -> tuple[int, ...] | None:
    ft, _ = _panphon()
    vecs = ft.word_to_vector_list(phone, numeric=True)
    if not vecs:
        mapped = "".join(_PANPHON_STANDIN.get(ch, ch) for ch in phone)
        vecs = ft.word_to_vector_list(mapped, numeric=True)
    if not vecs:
        return None
    return tuple(vecs[0])  # a phone panphon splits in two is scored by its first segment


@functools.lru_cache(maxsize=65536)
def _indel_cost(phone: str) -> float:
    vec = _phone_vector(phone)
    if vec is None:
        return 1.0
    _, dist = _panphon()
    return float(dist.unweighted_insertion_cost(list(vec)))


@functools.lru_cache(maxsize=262144)
def _sub_cost(a: str, b: str) -> float:
    if a == b:
        return 0.0
    va, vb = _phone_vector(a), _phone_vector(b)
    if va is None or vb is None:
        return 1.0
    _, dist = _panphon()
    return float(dist.unweighted_substitution_cost(list(va), list(vb)))


def phone_feature_edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> float:
    """PanPhon feature edit distance between two phone sequences (see module docstring for costs)."""
    prev = [0.0]
    for h in hyp:
        prev.append(prev[-1] + _indel_cost(h))
    for r in ref:
        del_r = _indel_cost(r)
        cur = [prev[0] + del_r]
        for j, h in enumerate(hyp, start=1):
            cur.append(min(prev[j] + del_r, prev[j - 1] + _sub_cost(r, h), cur[j - 1] + _indel_cost(h)))
        prev = cur
    return prev[-1]


# ----------------------------------------------------------------------------------------------------------
# Scoring


def utterance_stats(ref_text: str, hyp_text: str, *, pfer: bool = True) -> ErrorStats:
    """Error counts of one utterance (texts are IPA strings)."""
    ref, hyp = text_to_phones(ref_text), text_to_phones(hyp_text)
    corr, subs, dels, ins = _count_alignment(align_phones(ref, hyp))
    fed = phone_feature_edit_distance(ref, hyp) if pfer else 0.0
    return ErrorStats(1, len(ref), len(hyp), corr, subs, dels, ins, fed)


def _normalise_result(item: Sequence[str]) -> Result:
    if len(item) == 4:
        return (str(item[0]), item[1], item[2], str(item[3]))
    if len(item) == 3:
        return (str(item[0]), item[1], item[2], "")
    raise ValueError(f"scoring: result {item!r} has {len(item)} fields, expected (cut_id, ref, hyp, language)")


def score_results(results: Iterable[Sequence[str]], *, pfer: bool = True) -> ScoreReport:
    """PER/PFER statistics overall and per language.

    Args:
      results: (cut_id, ref_text, hyp_text, language) tuples.
      pfer: compute the feature edit distance (set False to skip the panphon cost).
    """
    report = ScoreReport()
    for item in results:
        _, ref, hyp, lang = _normalise_result(item)
        st = utterance_stats(ref, hyp, pfer=pfer)
        report.overall.add(st)
        report.per_language.setdefault(lang, ErrorStats())
        report.per_language[lang].add(st)
    report.per_language = dict(sorted(report.per_language.items()))
    return report


def compute_per(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus PER in percent for parallel lists of reference and hypothesis IPA strings."""
    if len(refs) != len(hyps):
        raise ValueError(f"compute_per: {len(refs)} references but {len(hyps)} hypotheses, expected equal")
    total = ErrorStats()
    for r, h in zip(refs, hyps):
        total.add(utterance_stats(r, h, pfer=False))
    return total.per


def compute_pfer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus PFER in percent for parallel lists of reference and hypothesis IPA strings."""
    if len(refs) != len(hyps):
        raise ValueError(f"compute_pfer: {len(refs)} references but {len(hyps)} hypotheses, expected equal")
    total = ErrorStats()
    for r, h in zip(refs, hyps):
        total.add(utterance_stats(r, h, pfer=True))
    return total.pfer


# ----------------------------------------------------------------------------------------------------------
# icefall-style files


def write_recogs(path: str | Path, results: Iterable[Sequence[str]]) -> None:
    """Write ``recogs-*.txt``: for each cut (sorted by id) a ``cut_id:\\tref=[...]`` and ``hyp=[...]`` line.

    The lists are Python reprs of the phone lists, as icefall's ``store_transcripts`` writes them.
    """
    rows = sorted((_normalise_result(r) for r in results), key=lambda r: r[0])
    with atomic_write(path) as f:
        for cut_id, ref, hyp, _ in rows:
            print(f"{cut_id}:\tref={text_to_phones(ref)}", file=f)
            print(f"{cut_id}:\thyp={text_to_phones(hyp)}", file=f)


def _merge_successive_errors(ali: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Group runs of adjacent errors into one ``(a b->c d)`` item."""
    out: list[tuple[str, str]] = []
    run_ref: list[str] = []
    run_hyp: list[str] = []

    def flush() -> None:
        if run_ref or run_hyp:
            out.append((" ".join(run_ref) or EPS, " ".join(run_hyp) or EPS))
            run_ref.clear()
            run_hyp.clear()

    for r, h in ali:
        if r == h:
            flush()
            out.append((r, h))
        else:
            if r != EPS:
                run_ref.append(r)
            if h != EPS:
                run_hyp.append(h)
    flush()
    return out


def _sorted_counts(counter: Mapping) -> list:
    # Most frequent first; ties in a fixed (alphabetical) order so files are reproducible.
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))


def write_errs(
    path: str | Path,
    test_set_name: str,
    results: Iterable[Sequence[str]],
    *,
    pfer: bool = True,
    combine_successive_errors: bool = False,
) -> ScoreReport:
    """Write an icefall-style ``errs-*.txt`` file and return its statistics, overall and per language
    (what :func:`score_results` computes, without aligning every utterance a second time).

    Layout: ``%PER = x.xx``; an ``Errors: I insertions, D deletions, S substitutions, over N reference
    phones (C correct)`` line; ``%PFER = x.xx`` (if ``pfer``); ``PER-UTT DETAILS`` (one line per cut,
    correct phones as is, ``(a->b)`` substitutions, ``(*->x)`` insertions, ``(x->*)`` deletions; with
    ``combine_successive_errors`` adjacent errors are grouped like ``(a b->c)``); ``SUBSTITUTIONS``,
    ``DELETIONS``, ``INSERTIONS`` (``count   ref -> hyp`` / ``count   phone``, most frequent first);
    ``PER-PHONE STATS``; ``PER-LANGUAGE STATS``.
    """
    rows = sorted((_normalise_result(r) for r in results), key=lambda r: r[0])
    subs: Counter[tuple[str, str]] = Counter()
    dels: Counter[str] = Counter()
    ins: Counter[str] = Counter()
    # per phone: corr, ref_sub, hyp_sub, ins, del
    phone_counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    overall = ErrorStats()
    by_lang: dict[str, ErrorStats] = {}
    details: list[str] = []
    for cut_id, ref_text, hyp_text, lang in rows:
        ref, hyp = text_to_phones(ref_text), text_to_phones(hyp_text)
        ali = align_phones(ref, hyp)
        for r, h in ali:
            if r == EPS:
                ins[h] += 1
                phone_counts[h][3] += 1
            elif h == EPS:
                dels[r] += 1
                phone_counts[r][4] += 1
            elif r != h:
                subs[(r, h)] += 1
                phone_counts[r][1] += 1
                phone_counts[h][2] += 1
            else:
                phone_counts[r][0] += 1
        corr, n_sub, n_del, n_ins = _count_alignment(ali)
        fed = phone_feature_edit_distance(ref, hyp) if pfer else 0.0
        st = ErrorStats(1, len(ref), len(hyp), corr, n_sub, n_del, n_ins, fed)
        overall.add(st)
        by_lang.setdefault(lang, ErrorStats())
        by_lang[lang].add(st)
        shown = _merge_successive_errors(ali) if combine_successive_errors else ali
        details.append(f"{cut_id}:\t" + " ".join(r if r == h else f"({r}->{h})" for r, h in shown))

    with atomic_write(path) as f:
        print(f"%PER = {overall.per:.2f}", file=f)
        print(
            f"Errors: {overall.ins} insertions, {overall.dels} deletions, {overall.subs} substitutions, "
            f"over {overall.ref_phones} reference phones ({overall.corr} correct)",
            file=f,
        )
        if pfer:
            print(f"%PFER = {overall.pfer:.2f}", file=f)
        print(
            "Search below for sections starting with PER-UTT DETAILS:, SUBSTITUTIONS:, DELETIONS:, "
            "INSERTIONS:, PER-PHONE STATS:, PER-LANGUAGE STATS:",
            file=f,
        )
        print(f"Test set: {test_set_name}", file=f)
        print(file=f)
        print("PER-UTT DETAILS: corr or (ref->hyp)  ", file=f)
        for line in details:
            print(line, file=f)
        print(file=f)
        print("SUBSTITUTIONS: count ref -> hyp", file=f)
        for (r, h), c in _sorted_counts(subs):
            print(f"{c}   {r} -> {h}", file=f)
        print(file=f)
        print("DELETIONS: count ref", file=f)
        for r, c in _sorted_counts(dels):
            print(f"{c}   {r}", file=f)
        print(file=f)
        print("INSERTIONS: count hyp", file=f)
        for h, c in _sorted_counts(ins):
            print(f"{c}   {h}", file=f)
        print(file=f)
        print("PER-PHONE STATS: phone  corr tot_errs count_in_ref count_in_hyp", file=f)
        for phone, (c, ref_sub, hyp_sub, n_ins, n_del) in sorted(
            phone_counts.items(), key=lambda kv: (-sum(kv[1][1:]), kv[0])
        ):
            print(f"{phone}   {c} {ref_sub + hyp_sub + n_ins + n_del} {c + ref_sub + n_del} {c + hyp_sub + n_ins}",
                  file=f)
        print(file=f)
        print("PER-LANGUAGE STATS: language utts ref_phones ins del sub PER PFER", file=f)
        for lang, st in sorted(by_lang.items()):
            print(f"{lang or '-'}   {st.num_utts} {st.ref_phones} {st.ins} {st.dels} {st.subs} "
                  f"{st.per:.2f} {st.pfer:.2f}", file=f)
    return ScoreReport(overall, dict(sorted(by_lang.items())))


def write_summary(path: str | Path, table: Mapping[str, Mapping[str, float]], *, key_name: str = "test_set") -> None:
    """Write an icefall-style summary table (tab-separated, rows sorted by PER, then name).

    Args:
      table: ``{test_set: {"PER": .., "PFER": ..}}``; other metric keys become extra columns.
    """
    metrics: list[str] = []
    for row in table.values():
        for k in row:
            if k not in metrics:
                metrics.append(k)
    # PER, PFER first when present, others in order of appearance
    metrics.sort(key=lambda m: {"PER": 0, "PFER": 1}.get(m, 2))
    names = sorted(table, key=lambda n: (table[n].get("PER", float("inf")), n))
    with atomic_write(path) as f:
        print("\t".join([key_name, *metrics]), file=f)
        for name in names:
            cells = [f"{table[name][m]:.2f}" if m in table[name] else "-" for m in metrics]
            print("\t".join([name, *cells]), file=f)


def write_language_table(path: str | Path, report: ScoreReport | Mapping[str, ErrorStats]) -> None:
    """Write a tab-separated per-language table.

    Columns: language, utts, ref_phones, ins, del, sub, PER, PFER. Languages are sorted by name; when a
    :class:`ScoreReport` is given, ``ALL`` (micro average) and ``MACRO`` (mean over languages) rows follow.
    """
    per_language = report.per_language if isinstance(report, ScoreReport) else dict(report)
    with atomic_write(path) as f:
        print("language\tutts\tref_phones\tins\tdel\tsub\tPER\tPFER", file=f)
        for lang, st in sorted(per_language.items()):
            print(f"{lang or '-'}\t{st.num_utts}\t{st.ref_phones}\t{st.ins}\t{st.dels}\t{st.subs}\t"
                  f"{st.per:.2f}\t{st.pfer:.2f}", file=f)
        if isinstance(report, ScoreReport):
            st = report.overall
            print(f"ALL\t{st.num_utts}\t{st.ref_phones}\t{st.ins}\t{st.dels}\t{st.subs}\t"
                  f"{st.per:.2f}\t{st.pfer:.2f}", file=f)
            print(f"MACRO\t-\t-\t-\t-\t-\t{report.macro_per:.2f}\t{report.macro_pfer:.2f}", file=f)
