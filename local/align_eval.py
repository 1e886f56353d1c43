#!/usr/bin/env python3
"""Phone-alignment ground truth from eSpeak NG, and a scorer for anyphone's aligner.

eSpeak NG reports a phoneme event, with its sample position, for every phoneme it synthesises (and word events
for every word). ``build`` re-synthesises the sentences of the embedded corpus' test split (sentences never in
train, voices held out from training: see local/synthesize_corpus.py) with the same voice, rate, pitch and word
gap, with those events switched on, and writes the audio plus the reference phone and word boundaries. ``score``
aligns every utterance with a model (given the reference phones) and compares the boundaries.

Reference phones: each phoneme event's IPA goes through ``normalize_ipa`` (with the voice's repairs) and
``segment_phones``; the event lasts until the next phoneme event (pauses are events with no IPA). An event that
gives several phones (eSpeak's ``aɪ`` is one phoneme, two phones for the model) is shared equally between them,
and only the boundaries that are event boundaries are scored. Each recording gets 0.1-0.5 s of faint noise before
and after the speech (seeded), so the first and last boundaries are measured too.

Scoring: every phone's start and end that is an event boundary, |aligned - reference| in ms; the table gives
their median and 90th percentile and the share within 20 ms and within 50 ms, per language and overall. With
``--sweep`` the blank-sharing rule (``split``, ``max_share``) is also scored on a small grid from the same
log-posteriors.

Usage::

    .venv/bin/python local/align_eval.py build --test-shar data/shar/embedded/test --out data/align_test
    .venv/bin/python local/align_eval.py build --shar data/shar/embedded/dev --out data/align_dev --max-utts 139
    .venv/bin/python local/align_eval.py score --set data/align_dev -m zipformer_crctc/exp-demo --iter 1600 --avg 1 \
        --max-utts 139 --sweep                # choose the blank-sharing rule here, on dev
    .venv/bin/python local/align_eval.py score --set data/align_test -m zipformer_crctc/exp-demo --iter 1600 --avg 1 \
        --max-utts 200                        # report on test with the chosen (default) rule
"""

from __future__ import annotations

import argparse
import ctypes
import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

_EV_WORD, _EV_PHONEME, _EV_END = 1, 7, 5
_INIT_PHONEME_EVENTS, _INIT_PHONEME_IPA = 0x0001, 0x0002


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """espeak_EVENT of speak_lib.h (API revision 12)."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_SynthCb = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class EventSynth:
    """eSpeak NG in-process with phoneme events in IPA: text -> (int16 audio at 22050 Hz, events).

    It loads a private copy of the library: espeak_Initialize on the shared instance would reset the options
    (IPA phoneme trace) of anyphone.data.espeak's engine in the same process.
    """

    def __init__(self) -> None:
        import shutil

        import espeakng_loader

        from anyphone.data.espeak import _private_library_copy

        copy = _private_library_copy(espeakng_loader.get_library_path())
        try:
            lib = ctypes.CDLL(copy)
        finally:  # the mapping stays valid once the file is gone
            shutil.rmtree(os.path.dirname(copy), ignore_errors=True)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.rate = lib.espeak_Initialize(2, 200, espeakng_loader.get_data_path().encode(),
                                          _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA)
        if self.rate <= 0:
            raise RuntimeError("espeak_Initialize failed")
        self.lib = lib
        self.chunks: list[np.ndarray] = []
        self.events: list[tuple[int, int, str, int]] = []  # (type, sample, ipa, text position)

        def on_audio(wav, n, ev):
            if n > 0 and wav:
                self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            i = 0
            while ev and ev[i].type != 0:
                e = ev[i]
                name = bytes(e.id.string).split(b"\0")[0].decode("utf-8", "replace") if e.type == _EV_PHONEME else ""
                self.events.append((e.type, e.sample, name, e.text_position))
                i += 1
            return 0

        self._cb = _SynthCb(on_audio)
        lib.espeak_SetSynthCallback(self._cb)

    def synth(self, voice: str, text: str, rate: int, pitch: int, prange: int, gap: int):
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak voice {voice!r} not found")
        for param, value in ((1, rate), (3, pitch), (4, prange), (7, gap), (2, 100)):
            self.lib.espeak_SetParameter(param, value, 0)
        self.chunks, self.events = [], []
        data = text.encode("utf-8")
        if self.lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 1, None, None) != 0:
            raise RuntimeError(f"espeak_Synth failed for {text[:40]!r}")
        audio = np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.int16)
        return audio, list(self.events)


def reference(events, voice: str, rate: int, offset: float, text: str):
    """Phones [(phone, start, end, start_scored, end_scored)] and words [(word, start, end)] from events."""
    from anyphone.text.ipa import normalize_ipa, segment_phones

    ph_events = [(s, n, pos) for t, s, n, pos in events if t == _EV_PHONEME]
    end_sample = max([s for t, s, _, _ in events if t == _EV_END] + [s for s, _, _ in ph_events] + [0])
    words_ev = [(s, pos) for t, s, _, pos in events if t == _EV_WORD]
    phones, owner = [], []
    for k, (s, name, pos) in enumerate(ph_events):
        e = ph_events[k + 1][0] if k + 1 < len(ph_events) else end_sample
        parts = segment_phones(normalize_ipa(name, lang=voice)) if name else []
        if not parts or e <= s:
            continue
        step = (e - s) / len(parts)
        for j, p in enumerate(parts):
            a, b = s + j * step, s + (j + 1) * step
            phones.append([p, round(offset + a / rate, 5), round(offset + b / rate, 5), j == 0, j == len(parts) - 1])
            # word of this phone: the last word event at or before the phoneme's text position
            owner.append(max((i for i, (_, wpos) in enumerate(words_ev) if wpos <= pos), default=-1))
    words = []
    for i, (_, pos) in enumerate(words_ev):
        idx = [k for k, o in enumerate(owner) if o == i]
        if not idx:
            continue
        label = text[pos - 1:].split()[0].strip(".,;:!?\"'()«»“”") if pos >= 1 else ""
        words.append([label, phones[idx[0]][1], phones[idx[-1]][2]])
    return phones, words


def cmd_build(args: argparse.Namespace) -> int:
    import soundfile as sf

    from anyphone.data.espeak import resample_to_16k

    cuts = []
    for f in sorted(Path(args.test_shar).glob("cuts.*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            cuts.extend(json.loads(line) for line in fh if line.strip())
    if not cuts:
        print(f"{args.test_shar}: no cuts.*.jsonl.gz (run prepare.sh stage 1 first)", file=sys.stderr)
        return 1
    out = Path(args.out)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    syn = EventSynth()
    rows, t0 = [], time.time()
    for i, cut in enumerate(cuts[: args.max_utts]):
        c = cut["custom"]
        audio, events = syn.synth(c["voice"], c["text"], c["speed"], c["pitch"], c["pitch_range"], c["word_gap"])
        rng = np.random.default_rng(args.seed + i)
        lead, tail = rng.uniform(0.1, 0.5, size=2)
        speech = resample_to_16k(audio, syn.rate)
        wave = np.concatenate([np.zeros(round(lead * 16000), np.float32), speech,
                               np.zeros(round(tail * 16000), np.float32)])
        wave = wave + rng.standard_normal(len(wave)).astype(np.float32) * 3e-4  # a faint noise floor
        phones, words = reference(events, c["voice"].split("+")[0], syn.rate, float(lead), c["text"])
        if not phones:
            continue
        name = cut["id"]
        sf.write(out / "wav" / f"{name}.wav", wave, 16000, subtype="PCM_16")
        rows.append({"id": name, "wav": f"wav/{name}.wav", "language": c["language"], "voice": c["voice"],
                     "text": c["text"], "phones": phones, "words": words})
    (out / "alignments.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                          encoding="utf-8")
    n_ph = sum(len(r["phones"]) for r in rows)
    print(f"wrote {len(rows)} utterances ({n_ph} phones) to {out} in {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


def boundary_errors(ref: list, hyp: list) -> list[float]:
    """|hyp - ref| in ms for every scored phone start and end (ref rows from :func:`reference`)."""
    errs = []
    for r, h in zip(ref, hyp):
        if r[3]:
            errs.append(abs(h[1] - r[1]) * 1000)
        if r[4]:
            errs.append(abs(h[2] - r[2]) * 1000)
    return errs


def _stats(errs: list[float]) -> tuple[int, float, float, float, float]:
    e = np.asarray(errs) if errs else np.zeros(1)
    return len(errs), float(np.median(e)), float(np.percentile(e, 90)), float((e <= 20).mean() * 100), float(
        (e <= 50).mean() * 100)


def _row(label: str, errs: list[float]) -> str:
    n, med, p90, w20, w50 = _stats(errs)
    return f"| {label} | {n} | {med:.1f} | {p90:.1f} | {w20:.1f}% | {w50:.1f}% |"


def cmd_score(args: argparse.Namespace) -> int:
    from anyphone.alignment import Transcript, align_log_probs
    from anyphone.inference.api import load_model

    root = Path(args.set)
    rows = [json.loads(x) for x in (root / "alignments.jsonl").read_text(encoding="utf-8").splitlines() if x]
    rows = rows[: args.max_utts]
    rec = load_model(args.model, iter=args.iter, avg=args.avg, use_averaged_model=bool(args.use_averaged_model),
                     batch_size=4)
    grid = [(s, m) for s in (0.3, 0.5, 0.7, 0.85, 1.0) for m in (0.04, 0.1, 0.2, 1.0)] if args.sweep else []
    per_lang: dict[str, list[float]] = {}
    sweep: dict[tuple[float, float], list[float]] = {g: [] for g in grid}
    t0 = time.time()
    for r in rows:
        lp, dur = rec.frame_log_probs(root / r["wav"])
        tr = Transcript([p[0] for p in r["phones"]])
        ali = align_log_probs(lp, tr, rec.tokenizer.token2id, rec.frame_shift, blank_id=rec.tokenizer.blank_id,
                              duration=dur, split=args.split, max_share=args.max_share, where=r["id"])
        per_lang.setdefault(r["language"], []).extend(boundary_errors(r["phones"], list(ali)))
        for s, m in grid:
            a2 = align_log_probs(lp, tr, rec.tokenizer.token2id, rec.frame_shift, blank_id=rec.tokenizer.blank_id,
                                 duration=dur, split=s, max_share=m, where=r["id"])
            sweep[(s, m)].extend(boundary_errors(r["phones"], list(a2)))
    print(f"model {rec.name}; {len(rows)} utterances; split {args.split}, max_share {args.max_share}; "
          f"{time.time() - t0:.0f} s")
    print("| language | boundaries | median ms | p90 ms | within 20 ms | within 50 ms |")
    print("|---|---|---|---|---|---|")
    for lang in sorted(per_lang):
        print(_row(lang, per_lang[lang]))
    print(_row("all", [e for v in per_lang.values() for e in v]))
    if grid:
        print("\nblank-sharing rule (all languages):")
        print("| split | max_share s | boundaries | median ms | p90 ms | within 20 ms | within 50 ms |")
        print("|---|---|---|---|---|---|---|")
        for (s, m), errs in sweep.items():
            print(_row(f"{s} | {m}", errs))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="eSpeak NG re-synthesis of the test split with phone boundaries")
    b.add_argument("--test-shar", "--shar", dest="test_shar", default="data/shar/embedded/test",
                   help="the split to re-synthesise: the test split to report, dev to choose the blank-sharing rule on")
    b.add_argument("--out", default="data/align_test")
    b.add_argument("--max-utts", type=int, default=300)
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=cmd_build)
    s = sub.add_parser("score", help="align the set with a model and print boundary errors")
    s.add_argument("--set", default="data/align_test")
    s.add_argument("-m", "--model", required=True, help="as for anyphone recognize (an exp dir, a .pth, ...)")
    s.add_argument("--iter", type=int, default=None)
    s.add_argument("--avg", type=int, default=None)
    s.add_argument("--use-averaged-model", type=int, choices=[0, 1], default=1,
                   help="with --iter: the running averages, as decode.py (1), or the raw weights (0)")
    s.add_argument("--max-utts", type=int, default=300)
    from anyphone.alignment.ctc import DEFAULT_MAX_SHARE, DEFAULT_SPLIT

    s.add_argument("--split", type=float, default=DEFAULT_SPLIT)
    s.add_argument("--max-share", type=float, default=DEFAULT_MAX_SHARE)
    s.add_argument("--sweep", action="store_true", help="also score a grid of split/max_share values")
    s.set_defaults(func=cmd_score)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
