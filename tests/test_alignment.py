"""Tests for anyphone.alignment (CTC Viterbi, blank sharing, transcripts, outputs), `anyphone align`, the aligned
`--timestamp` output and the eSpeak ground-truth builder of local/align_eval.py.

The model is ZIPA's tiny random-weight CR-CTC fixture: alignments are arbitrary, so the tests check the
algorithm against brute force on tiny inputs, the structure of results, outputs and errors.
"""

from __future__ import annotations

import gzip
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_api import make_model_dir, speechy

from anyphone.alignment import (
    AlignmentError,
    Transcript,
    align_log_probs,
    ctc_viterbi,
    ctc_viterbi_windowed,
    parse_ipa,
    share_blanks,
    text_to_transcript,
)
from anyphone.alignment.ctc import min_frames
from anyphone.cli import main
from anyphone.inference.api import load_model

REPO = Path(__file__).resolve().parents[1]
SR = 16000


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("ali_model"), "crctc")


@pytest.fixture(scope="module")
def rec(model):
    torch.set_num_threads(1)
    return load_model(model, batch_size=1)


# ------------------------------------------------------------------------------------------------ Viterbi


def _collapse(path) -> list[int]:
    out, prev = [], None
    for p in path:
        if p != prev and p != 0:
            out.append(p)
        prev = p
    return out


def _random_lp(rng, t: int, v: int) -> np.ndarray:
    x = rng.normal(size=(t, v)) * 2.0
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_viterbi_equals_brute_force():
    """Every valid CTC path of small T enumerated: the best score, and the returned path is one of them."""
    rng = np.random.default_rng(0)
    v = 4
    checked = 0
    for t in range(1, 7):
        for labels in [[1], [2, 3], [1, 1], [3, 1, 3], [2, 2, 1]]:
            if t < min_frames(labels):
                with pytest.raises(AlignmentError, match="cannot hold"):
                    ctc_viterbi(_random_lp(rng, t, v), labels)
                continue
            lp = _random_lp(rng, t, v)
            scores = [lp[np.arange(t), list(p)].sum() for p in itertools.product(range(v), repeat=t)
                      if _collapse(p) == labels]
            path, score = ctc_viterbi(lp, labels)
            assert score == pytest.approx(max(scores), abs=1e-9)
            # the path: label indices / -1; rebuilt into token ids it collapses to the labels with that score
            toks = [labels[k] if k >= 0 else 0 for k in path]
            assert _collapse(toks) == labels
            assert lp[np.arange(t), toks].sum() == pytest.approx(score, abs=1e-9)
            assert list(path[path >= 0]) == sorted(path[path >= 0])  # monotone
            # free end: the best over paths that spell any prefix of the labels
            pre = [lp[np.arange(t), list(p)].sum() for p in itertools.product(range(v), repeat=t)
                   if _collapse(p) == labels[: len(_collapse(p))]]
            assert ctc_viterbi(lp, labels, free_end=True)[1] == pytest.approx(max(pre), abs=1e-9)
            checked += 1
    assert checked >= 20


def test_windowed_viterbi_matches_full_on_long_input():
    """A long, clearly spoken sequence: the windowed path (window 200 frames) equals the full one."""
    rng = np.random.default_rng(1)
    labels = [1]
    while len(labels) < 300:  # no two equal neighbours, spikes 3+ frames apart: exactly one best path
        labels.append(int(rng.choice([v for v in range(1, 6) if v != labels[-1]])))
    t = 1500
    lp = np.full((t, 6), -8.0)
    lp[:, 0] = -0.05
    spikes = 3 * np.sort(rng.choice(np.arange(1, t // 3 - 1), size=len(labels), replace=False))
    for f, lab in zip(spikes, labels):
        lp[f] = -8.0
        lp[f, lab] = -0.05
    full = ctc_viterbi(lp, labels)[0]
    win = ctc_viterbi_windowed(lp, labels, window=200, margin=40)
    assert (win == full).all()
    assert list(win[spikes]) == list(range(len(labels)))


def test_share_blanks_rule():
    # frames of 20 ms; phone cores [5,6) [10,12) [60,61); 100 frames
    times = share_blanks([(5, 6), (10, 12), (60, 61)], 100, 0.02, split=0.5, max_share=0.1)
    assert times[0] == (0.05, 0.16)  # before: min(0.5*0.10, 0.1); after: half of the 4-frame gap
    assert times[1] == (0.16, 0.34)  # after: the 48-frame gap is 0.96 s, capped at 0.1
    assert times[2] == (1.1, 1.32)
    assert all(a < b for a, b in times) and all(times[i][1] <= times[i + 1][0] for i in range(2))
    # split=1: the whole gap goes to the phone before it
    assert share_blanks([(5, 6), (10, 12)], 12, 0.02, split=1.0, max_share=1.0) == [(0.1, 0.2), (0.2, 0.24)]
    with pytest.raises(ValueError, match="split"):
        share_blanks([(0, 1)], 1, 0.02, split=1.5)


# ------------------------------------------------------------------------------------------------ transcripts


def test_parse_ipa_phones_words_and_errors():
    t = parse_ipa("h ə l oʊ")
    assert t.phones == ["h", "ə", "l", "o", "ʊ"] and t.words is None
    t = parse_ipa("həˈloʊ wɜːld")
    assert t.words == ["həˈloʊ", "wɜːld"] and t.word_of_phone == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert parse_ipa(["tʰ", "a"]).phones == ["tʰ", "a"]
    for bad, pattern in [("   ", "empty transcript"), ("a ꜛ b", "ꜛ are not IPA")]:
        with pytest.raises(AlignmentError, match=pattern) as ei:
            parse_ipa(bad, where="x.txt")
        assert str(ei.value).startswith("x.txt: ") and "\n" not in str(ei.value)


def test_text_to_transcript_with_espeak():
    t = text_to_transcript("Hello, world!", "eng")
    assert t.words == ["Hello", "world"] and len(t.phones) >= 7
    assert set(t.word_of_phone) == {0, 1} and t.word_of_phone == sorted(t.word_of_phone)
    with pytest.raises(AlignmentError, match="no voice") as ei:
        text_to_transcript("hello", "xx1")
    assert "\n" not in str(ei.value)


def test_phones_the_model_lacks_and_audio_too_short():
    lp = np.log(np.full((50, 4), 0.25))
    tok = {"<blk>": 0, "a": 1, "t": 2, "ʰ": 3}
    with pytest.raises(AlignmentError, match=r"a.wav: phone\(s\) the model cannot produce: ɓ k"):
        align_log_probs(lp, Transcript(["a", "ɓ", "k", "ɓ"]), tok, 0.02, where="a.wav")
    with pytest.raises(AlignmentError, match="audio too short for its transcript: .* need at least 59"):
        align_log_probs(lp, Transcript(["a"] * 30), tok, 0.02, where="a.wav")
    ali = align_log_probs(lp, Transcript(["tʰ", "a", "a"]), tok, 0.02)
    assert [p.phone for p in ali] == ["tʰ", "a", "a"]


# ------------------------------------------------------------------------------------------------ model API


def test_align_api_textgrid_roundtrip(rec, tmp_path):
    from praatio import textgrid

    wave = speechy(3.0, 2)
    ali = rec.align(wave, text="how are you today", lang="eng", keep_posteriors=True)
    phones = list(ali)
    assert len(phones) == len(ali.phones) >= 8
    for (p, s, e), nxt in zip(phones, phones[1:] + [None]):
        assert 0.0 <= s < e <= 3.0 + 1e-6
        if nxt is not None:
            assert e <= nxt[1] + 1e-9
    assert [w.word for w in ali.words] == ["how", "are", "you", "today"]
    assert ali.words[0].start == phones[0][1] and ali.words[-1].end == phones[-1][2]
    path = ali.write_textgrid(tmp_path / "x.TextGrid")
    tg = textgrid.openTextgrid(str(path), includeEmptyIntervals=False)
    assert tg.tierNames == ("phones", "words")
    got = [(e.label, e.start, e.end) for e in tg.getTier("phones").entries]
    assert got == [(p, pytest.approx(s), pytest.approx(e)) for p, s, e in phones]
    assert [e.label for e in tg.getTier("words").entries] == ["how", "are", "you", "today"]
    # the same through the module-level function with IPA, and the picture
    from anyphone.alignment import align
    from anyphone.inference.plot import plot_alignment

    ali2 = align(rec, wave, "h aʊ ɑː j uː")
    assert [p.phone for p in ali2] == ["h", "a", "ʊ", "ɑː", "j", "uː"] and ali2.words == []
    png = plot_alignment(ali, tmp_path / "a.png")
    assert png.stat().st_size > 10_000


def test_recognize_timestamps_are_aligned_intervals(rec):
    wave = speechy(3.0, 1)
    res = rec.recognize(wave, timestamp=True, return_result=True)
    lines = res.format().split("\n")
    assert len(lines) == len(res.phones) > 3
    prev_end = 0.0
    for line, seg, ph in zip(lines, res.segments, res.phones):
        start, end, phone = line.split(" ")
        assert phone == ph and float(start) == pytest.approx(seg.start, abs=1e-3)
        assert float(end) == pytest.approx(seg.end, abs=1e-3)
        assert prev_end - 1e-9 <= seg.start < seg.end <= 3.0 + 1e-6
        prev_end = seg.end
    # the greedy path is the Viterbi alignment of the recognised phones: same core frames
    lp, dur = rec.frame_log_probs(wave)
    ali = align_log_probs(lp, Transcript(res.phones), rec.tokenizer.token2id, rec.frame_shift, duration=dur)
    assert [(p.start, p.end) for p in ali] == [(s.start, s.end) for s in res.segments]


# ------------------------------------------------------------------------------------------------ command line


def test_cli_align_kaldi_folder_and_errors(model, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    for i in range(2):
        sf.write(data / "audio" / f"u{i}.wav", speechy(2.0, i), SR)
    (data / "wave").write_text("u0 audio/u0.wav\nu1 audio/u1.wav\nu2 cat x.wav |\n", encoding="utf-8")
    (data / "text").write_text("u0 a b ɛ d\nu1 həloʊ wɜːld\nu2 a\n", encoding="utf-8")
    out = tmp_path / "out"
    rc = main(["align", "-i", str(data), "-m", str(model), "-o", str(out), "--format", "textgrid,tsv,ctm",
               "--plot", str(out / "p.png"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "commands in data files are never run" in err and "1 of 3 recording(s)" in err
    assert (out / "u0.TextGrid").is_file() and (out / "u1.TextGrid").is_file() and (out / "p-u1.png").is_file()
    tsv = (out / "alignment.tsv").read_text(encoding="utf-8").splitlines()
    assert tsv[0] == "file\tstart\tend\tphone\tword\tscore" and len(tsv) == 1 + 4 + 9
    assert {r.split("\t")[4] for r in tsv[5:]} == {"həloʊ", "wɜːld"}
    ctm = (out / "alignment.ctm").read_text(encoding="utf-8").splitlines()
    assert len(ctm) == 13 and ctm[0].split()[:2] == ["u0", "1"]
    # one file with --phones, TSV on stdout
    assert main(["align", "-i", str(data / "audio" / "u0.wav"), "--phones", "a b", "-m", str(model)]) == 0
    assert capsys.readouterr().out.count("\n") == 3
    # bad input: one line each
    cases = [(["--phones", " "], 1, "empty transcript"), (["--text", "hi", "--lang", "xx1"], 2, "no voice"),
             (["--phones", "a " * 200], 1, "audio too short"), (["--text", "hi"], 2, "--text needs --lang")]
    for extra, code, pattern in cases:
        assert main(["align", "-i", str(data / "audio" / "u0.wav"), "-m", str(model), *extra]) == code
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and pattern in err[0], err


# ------------------------------------------------------------------------------------------------ ground truth


def test_align_eval_build_gives_event_boundaries(tmp_path):
    """local/align_eval.py build re-synthesises test cuts with eSpeak phoneme events (run in a subprocess:
    it loads eSpeak with event options, which must not share a process with the synthesiser's engine)."""
    shar = tmp_path / "test"
    shar.mkdir()
    custom = {"language": "de", "voice": "de+m7", "speed": 175, "pitch": 50, "pitch_range": 50, "word_gap": 0,
              "text": "Guten Tag, wie geht es dir?"}
    with gzip.open(shar / "cuts.000000.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"id": "test-de-1", "custom": custom}) + "\n")
    out = tmp_path / "set"
    subprocess.run([sys.executable, str(REPO / "local" / "align_eval.py"), "build", "--test-shar", str(shar),
                    "--out", str(out)], check=True, capture_output=True, timeout=120)
    row = json.loads((out / "alignments.jsonl").read_text(encoding="utf-8"))
    phones = row["phones"]
    assert "".join(p[0] for p in phones).startswith("guːtəntɑːkviː")
    assert all(a[2] <= b[1] + 1e-9 for a, b in itertools.pairwise(phones)) and all(p[1] < p[2] for p in phones)
    audio, sr = sf.read(out / row["wav"])
    assert sr == SR and 0.1 <= phones[0][1] <= 0.55 and phones[-1][2] <= len(audio) / SR
    assert [w[0] for w in row["words"]] == ["Guten", "Tag", "wie", "geht", "es", "dir"]
