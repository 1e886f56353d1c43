"""Tests for anyphone.decoding.scoring (PER, PFER, icefall-style files)."""

import pytest

from anyphone.decoding.scoring import (
    ErrorStats,
    ScoreReport,
    align_phones,
    compute_per,
    compute_pfer,
    phone_feature_edit_distance,
    score_results,
    text_to_phones,
    utterance_stats,
    write_errs,
    write_language_table,
    write_recogs,
    write_summary,
)

# Hand-built example. Phones and errors, worked out by hand:
#   u1 eng  p a t      -> b a t        1 sub (p->b)
#   u2 eng  k æ t s    -> k æ t        1 del (s)
#   u3 deu  tʰ iː      -> tʰ iː n      1 ins (n)
#   u4 deu  ʃ t aː n   -> s t a n      2 sub (ʃ->s, aː->a)
#   u5 fra  b ɔ̃ ʒ u ʁ  -> same         0
#   u6 fra  p u        -> b u          1 sub (p->b)
# ref phones 3+4+2+4+5+2 = 20; sub 4, del 1, ins 1 -> 6 errors, PER 30 %, 15 correct.
# eng: 2/7 = 28.57 %, deu: 3/6 = 50 %, fra: 1/7 = 14.29 %.
RESULTS = [
    ("u4", "ʃtaːn", "stan", "deu"),
    ("u1", "pat", "bat", "eng"),
    ("u2", "kæts", "kæt", "eng"),
    ("u3", "tʰiː", "tʰiːn", "deu"),
    ("u5", "bɔ̃ʒuʁ", "bɔ̃ʒuʁ", "fra"),
    ("u6", "pu", "bu", "fra"),
]


def test_text_to_phones_strips_boundaries():
    assert text_to_phones("tʰiː") == ["tʰ", "iː"]
    assert text_to_phones("pa t▁ka") == ["p", "a", "t", "k", "a"]
    assert text_to_phones(" ") == []


def test_align_and_utterance_stats():
    assert align_phones(["p", "a", "t"], ["b", "a", "t", "s"]) == [("p", "b"), ("a", "a"), ("t", "t"), ("*", "s")]
    st = utterance_stats("ʃtaːn", "stan", pfer=False)
    assert (st.ref_phones, st.hyp_phones, st.corr, st.subs, st.dels, st.ins) == (4, 4, 2, 2, 0, 0)
    assert st.per == pytest.approx(50.0)


def test_score_results_overall_and_per_language():
    report = score_results(RESULTS)
    o = report.overall
    assert (o.num_utts, o.ref_phones, o.corr, o.subs, o.dels, o.ins) == (6, 20, 15, 4, 1, 1)
    assert o.errors == 6
    assert o.per == pytest.approx(30.0)
    assert list(report.per_language) == ["deu", "eng", "fra"]
    assert report.per_language["eng"].per == pytest.approx(200 / 7)
    assert report.per_language["deu"].per == pytest.approx(50.0)
    assert report.per_language["fra"].per == pytest.approx(100 / 7)
    assert report.per_language["deu"].ins == 1 and report.per_language["eng"].dels == 1
    assert report.macro_per == pytest.approx((200 / 7 + 50.0 + 100 / 7) / 3)
    # PFER: overall distance is the sum of the languages' distances
    total_fed = sum(s.feature_distance for s in report.per_language.values())
    assert o.feature_distance == pytest.approx(total_fed)
    assert 0 < o.pfer < o.per  # feature edits are cheaper than whole-phone errors here
    assert compute_per([r for _, r, _, _ in RESULTS], [h for _, _, h, _ in RESULTS]) == pytest.approx(30.0)


def test_pfer_values():
    # identical sequences: 0
    assert phone_feature_edit_distance(["p", "a", "t"], ["p", "a", "t"]) == 0.0
    assert compute_pfer(["tʰiː", "bɔ̃ʒuʁ"], ["tʰiː", "bɔ̃ʒuʁ"]) == 0.0
    # p -> b differs in voicing only: 1 of 24 features, opposite values -> 2/2/24
    one_feature = phone_feature_edit_distance(["p"], ["b"])
    assert one_feature == pytest.approx(1 / 24)
    very_different = phone_feature_edit_distance(["p"], ["a"])
    assert very_different > 5 * one_feature
    # normalised by the number of reference phones, in percent
    assert compute_pfer(["pa"], ["ba"]) == pytest.approx(100 * (1 / 24) / 2)
    # a deletion costs about a whole segment
    assert 0.8 < phone_feature_edit_distance(["t"], []) <= 1.0


def test_pfer_matches_panphon_on_plain_strings():
    panphon_distance = pytest.importorskip("panphon.distance")
    dist = panphon_distance.Distance()
    for ref, hyp in [("pat", "bat"), ("ʃtʰaːn", "stan"), ("kæt", "dɔɡz"), ("", "abc"), ("tʰiː", "")]:
        ours = phone_feature_edit_distance(text_to_phones(ref), text_to_phones(hyp))
        assert ours == pytest.approx(dist.feature_edit_distance(ref, hyp)), (ref, hyp)


def test_pfer_symbols_missing_from_panphon():
    # ASCII g is our inventory's g; panphon knows only U+0261
    assert phone_feature_edit_distance(["g"], ["ɡ"]) == 0.0
    # stand-ins keep epiglottals close to their pharyngeal neighbours
    assert phone_feature_edit_distance(["ʜ"], ["ħ"]) == 0.0
    assert phone_feature_edit_distance(["ʜ"], ["a"]) > 0.0


def test_write_recogs(tmp_path):
    path = tmp_path / "recogs-test.txt"
    write_recogs(path, RESULTS[:2])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines == [
        "u1:\tref=['p', 'a', 't']",
        "u1:\thyp=['b', 'a', 't']",
        "u4:\tref=['ʃ', 't', 'aː', 'n']",
        "u4:\thyp=['s', 't', 'a', 'n']",
    ]


def _section(lines: list[str], header: str) -> list[str]:
    start = next(i for i, line in enumerate(lines) if line.startswith(header)) + 1
    out = []
    for line in lines[start:]:
        if not line:
            break
        out.append(line)
    return out


def test_write_errs(tmp_path):
    path = tmp_path / "errs-test.txt"
    report = write_errs(path, "test", RESULTS)
    stats = report.overall
    assert stats.per == pytest.approx(30.0)
    assert isinstance(stats, ErrorStats)
    # the same numbers as score_results, overall and per language
    again = score_results(RESULTS)
    assert stats.per == again.overall.per and stats.pfer == pytest.approx(again.overall.pfer)
    assert {k: (v.per, pytest.approx(v.pfer)) for k, v in report.per_language.items()} == {
        k: (v.per, v.pfer) for k, v in again.per_language.items()}
    assert (stats.ins, stats.dels, stats.subs, stats.ref_phones) == (1, 1, 4, 20)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "%PER = 30.00"
    assert lines[1] == "Errors: 1 insertions, 1 deletions, 4 substitutions, over 20 reference phones (15 correct)"
    assert lines[2].startswith("%PFER = ")
    assert _section(lines, "PER-UTT DETAILS") == [
        "u1:\t(p->b) a t",
        "u2:\tk æ t (s->*)",
        "u3:\ttʰ iː (*->n)",
        "u4:\t(ʃ->s) t (aː->a) n",
        "u5:\tb ɔ̃ ʒ u ʁ",
        "u6:\t(p->b) u",
    ]
    assert _section(lines, "SUBSTITUTIONS") == ["2   p -> b", "1   aː -> a", "1   ʃ -> s"]
    assert _section(lines, "DELETIONS") == ["1   s"]
    assert _section(lines, "INSERTIONS") == ["1   n"]
    phone_stats = _section(lines, "PER-PHONE STATS")
    # p: 0 correct, 2 errors (ref side), 2 in ref, 0 in hyp
    assert "p   0 2 2 0" in phone_stats
    assert "b   1 2 1 3" in phone_stats  # b: correct once (u5), hyp of 2 subs
    lang_stats = _section(lines, "PER-LANGUAGE STATS")
    assert lang_stats[0].startswith("deu   2 6 1 0 2 50.00 ")


def test_write_errs_combined_errors(tmp_path):
    path = tmp_path / "errs.txt"
    write_errs(path, "t", [("a", "abcd", "xyd", "l")], pfer=False, combine_successive_errors=True)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert not any(line.startswith("%PFER") for line in lines)
    # a b c d / x y d: two subs and a deletion, adjacent, so they form one group
    assert _section(lines, "PER-UTT DETAILS") == ["a:\t(a b c->x y) d"]
    assert lines[1] == "Errors: 0 insertions, 1 deletions, 2 substitutions, over 4 reference phones (1 correct)"


def test_write_summary_and_language_table(tmp_path):
    summary = tmp_path / "per-summary.txt"
    write_summary(summary, {"dev": {"PER": 12.345, "PFER": 3.2}, "test": {"PFER": 2.0, "PER": 10.0}})
    assert summary.read_text(encoding="utf-8").splitlines() == [
        "test_set\tPER\tPFER",
        "test\t10.00\t2.00",
        "dev\t12.35\t3.20",
    ]
    report = score_results(RESULTS, pfer=False)
    table = tmp_path / "lang.tsv"
    write_language_table(table, report)
    rows = [line.split("\t") for line in table.read_text(encoding="utf-8").splitlines()]
    assert rows[0] == ["language", "utts", "ref_phones", "ins", "del", "sub", "PER", "PFER"]
    assert [r[0] for r in rows[1:]] == ["deu", "eng", "fra", "ALL", "MACRO"]
    assert rows[2] == ["eng", "2", "7", "0", "1", "1", "28.57", "0.00"]
    assert rows[4][6] == "30.00"
    assert rows[5][6] == f"{(200 / 7 + 50 + 100 / 7) / 3:.2f}"
    # a plain mapping works too (no ALL / MACRO rows)
    write_language_table(table, report.per_language)
    assert len(table.read_text(encoding="utf-8").splitlines()) == 4


def test_empty_and_bad_input():
    assert ScoreReport().macro_per == 0.0
    st = utterance_stats("", "ab")
    assert st.ins == 2 and st.per == 0.0  # no reference phones: rate defined as 0
    with pytest.raises(ValueError):
        compute_per(["a"], [])
    with pytest.raises(ValueError):
        score_results([("only-two", "a")])
    # 3-tuples have an empty language
    assert list(score_results([("u", "a", "a")]).per_language) == [""]
