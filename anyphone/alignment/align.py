"""Phone alignment: audio plus its phones (IPA, or text turned into IPA by eSpeak NG) -> each phone's start and
end, and each word's when the words are known.

    from anyphone.inference import load_model
    from anyphone.alignment import align

    rec = load_model("zipa-cr-small-500k")
    ali = align(rec, "speech.wav", "h ɛ l oʊ")              # IPA phones (spaces optional)
    ali = align(rec, "speech.wav", text="hello world", lang="eng")   # eSpeak NG G2P, with a word tier
    for phone, start, end in ali: ...
    ali.write_textgrid("speech.TextGrid")                    # Praat; also .ctm() and .tsv() text

Method: the model's CTC log-posteriors (frame shift 20 ms for CR-CTC models, ZIPA's published ones included)
are computed in windows (long recordings never hold the whole network activations), the transcript's
tokens are aligned by Viterbi over the CTC topology (:func:`anyphone.alignment.ctc.ctc_viterbi_windowed`),
each phone's core is the span of its tokens' frames, and the blank frames between phones are shared out by
:func:`anyphone.alignment.ctc.share_blanks` (each neighbour gets its part of a gap, at most ``max_share``
seconds; the rest of a long gap is a pause).

Transcripts: IPA is normalised like the training labels (:func:`anyphone.text.ipa.normalize_ipa`) and split
into phones. Whitespace-separated chunks are words when at least one of them has three or more phones
(``"həloʊ wɜːld"``); otherwise they are phones (``"h ə l oʊ"``: a diphthong or affricate written as one chunk
is still a phone list), and there is no word tier. A symbol that neither the normaliser nor the
model knows is an error that names it (never dropped silently).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from anyphone.alignment.ctc import (
    DEFAULT_MAX_SHARE,
    DEFAULT_SPLIT,
    AlignmentError,
    ctc_viterbi_windowed,
    min_frames,
    phone_frame_spans,
    share_blanks,
)

__all__ = [
    "Alignment",
    "PhoneInterval",
    "Transcript",
    "WordInterval",
    "align",
    "align_log_probs",
    "espeak_voice_for",
    "parse_ipa",
    "text_to_transcript",
]


class PhoneInterval(NamedTuple):
    """One aligned phone: ``(phone, start, end)`` in seconds."""

    phone: str
    start: float
    end: float


class WordInterval(NamedTuple):
    """One aligned word: ``(word, start, end)`` in seconds."""

    word: str
    start: float
    end: float


@dataclass
class Transcript:
    """Phones to align; ``words`` (labels) and ``word_of_phone`` (word index per phone) when words are known."""

    phones: list[str]
    words: list[str] | None = None
    word_of_phone: list[int] | None = None


@dataclass
class Alignment:
    """Result of an alignment; iterating gives :class:`PhoneInterval` ``(phone, start, end)`` tuples.

    scores: per phone, the mean posterior of its tokens on their aligned frames (0..1; low values flag phones
    the model hardly hears there). posteriors: (T, V) frame probabilities when kept (for plots).
    """

    phones: list[PhoneInterval]
    words: list[WordInterval]
    duration: float
    frame_shift: float
    scores: list[float] = field(default_factory=list)
    source: str | None = None
    posteriors: np.ndarray | None = None
    id2token: list[str] | None = None
    blank_id: int = 0

    def __iter__(self) -> Iterator[PhoneInterval]:
        return iter(self.phones)

    def __len__(self) -> int:
        return len(self.phones)

    # ---- output formats ----------------------------------------------------------------------------
    def ctm(self, name: str = "utt") -> str:
        """Kaldi CTM: ``name 1 start duration phone score`` per phone (seconds, 3 decimals)."""
        sc = self.scores or [1.0] * len(self.phones)
        return "".join(f"{name} 1 {p.start:.3f} {p.end - p.start:.3f} {p.phone} {s:.3f}\n"
                       for p, s in zip(self.phones, sc))

    def tsv(self, name: str = "utt", header: bool = True) -> str:
        """Tab-separated ``file start end phone word score`` (word empty when unknown)."""
        word_of = self._word_of_phone()
        sc = self.scores or [1.0] * len(self.phones)
        rows = ["file\tstart\tend\tphone\tword\tscore\n"] if header else []
        for i, (p, s) in enumerate(zip(self.phones, sc)):
            w = self.words[word_of[i]].word if word_of[i] >= 0 else ""
            rows.append(f"{name}\t{p.start:.3f}\t{p.end:.3f}\t{p.phone}\t{w}\t{s:.3f}\n")
        return "".join(rows)

    def _word_of_phone(self) -> list[int]:
        out = [-1] * len(self.phones)
        for wi, w in enumerate(self.words):
            for i, p in enumerate(self.phones):
                if p.start >= w.start - 1e-9 and p.end <= w.end + 1e-9:
                    out[i] = wi
        return out

    def write_textgrid(self, path: str | os.PathLike) -> Path:
        """Praat TextGrid (long format) with a ``phones`` tier and, when words are known, a ``words`` tier; the
        file is written to a temporary name and renamed into place (never half-written). Returns the path."""
        from praatio import textgrid

        out = Path(path)
        end = max(self.duration, self.phones[-1].end if self.phones else 0.0)
        tg = textgrid.Textgrid()
        tg.addTier(textgrid.IntervalTier("phones", [(p.start, p.end, p.phone) for p in self.phones], 0.0, end))
        if self.words:
            tg.addTier(textgrid.IntervalTier("words", [(w.start, w.end, w.word) for w in self.words], 0.0, end))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".tmp-{os.getpid()}-{out.name}")
        try:
            tg.save(str(tmp), format="long_textgrid", includeBlankSpaces=True, reportingMode="silence")
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                tmp.unlink()
        return out


# --------------------------------------------------------------------------------------------------------
# transcripts


def parse_ipa(ipa: str | Sequence[str], *, where: str = "transcript", lang: str | None = None) -> Transcript:
    """IPA transcript -> :class:`Transcript` (see the module docstring for the word rule).

    Args:
        ipa: a string (phones or words separated by whitespace, or none) or a list of phones.
        where: names the source in error messages (a file name).
        lang: eSpeak voice whose output quirks normalize_ipa repairs (only for eSpeak IPA).
    Raises:
        AlignmentError: empty transcript, or symbols that are neither IPA the normaliser knows nor tokens.
    """
    from anyphone.text.ipa import normalize_ipa, segment_phones

    chunks = list(ipa) if not isinstance(ipa, str) else ipa.split()
    unknown: collections.Counter = collections.Counter()
    per_chunk = [segment_phones(normalize_ipa(c, unknown=unknown, lang=lang)) for c in chunks]
    if unknown:
        bad = " ".join(sorted(unknown))
        raise AlignmentError(f"{where}: symbol(s) {bad} are not IPA phones the model's tokens can spell; "
                             "remove them or write the nearest IPA phone")
    phones = [p for ph in per_chunk for p in ph]
    if not phones:
        raise AlignmentError(f"{where}: empty transcript; expected IPA phones (or text with --lang)")
    # chunks are words when one of them has 3+ phones; 2 may be a diphthong or affricate in a phone list
    if isinstance(ipa, str) and any(len(ph) > 2 for ph in per_chunk):
        words = [c for c, ph in zip(chunks, per_chunk) if ph]
        word_of = [i for i, ph in enumerate(p for p in per_chunk if p) for _ in ph]
        return Transcript(phones, words, word_of)
    return Transcript(phones)


def espeak_voice_for(lang: str) -> str:
    """eSpeak NG voice for a language code: an eSpeak voice name as is (``en-us``), else the voice the
    built-in inventory was made with (``eng`` -> ``en``).

    Raises:
        AlignmentError: no eSpeak voice for it.
    """
    from anyphone.data.espeak import list_voices

    voices = {v.lower(): v for v in list_voices()}
    key = lang.strip().lower().replace("_", "-")
    if key in voices:
        return voices[key]
    import anyphone.inventory as inv

    try:
        code = inv.canonical_language(lang)
        info = inv.language_info(f"espeak:{code}") if "espeak" in inv.language_info(code)["sources"] else {}
    except inv.InventoryError:
        info = {}
    # the ISO 639-1 alias is eSpeak's main voice file name ("en"); the voices' language codes come next
    cands = [a for a in info.get("aliases", []) if len(a) == 2] + sorted(info.get("espeak_voices", []), key=len)
    from anyphone.data.espeak import EspeakSynthesizer

    for v in cands:
        try:
            EspeakSynthesizer(v).phonemize("a")
        except ValueError:  # a language code eSpeak's SetVoiceByName does not take as a name
            continue
        return v
    raise AlignmentError(f"language {lang!r}: eSpeak NG has no voice for it, so text cannot be turned into "
                         "phones; give IPA phones instead (or an eSpeak voice name such as 'en-us')")


def text_to_transcript(text: str, lang: str, *, where: str = "transcript") -> Transcript:
    """Orthographic text -> phones with eSpeak NG in-process (no binary), one word tier entry per word.

    The whole text is phonemised once (so cross-word effects are kept); if eSpeak's output does not have one
    chunk per word, each word is phonemised on its own.

    Raises:
        AlignmentError: empty text, no eSpeak voice, or a word eSpeak writes with unknown symbols.
    """
    from anyphone.data.espeak import EspeakSynthesizer

    words = [w.strip(".,;:!?\"'()[]{}«»“”„‘’…–—") for w in text.split()]
    words = [w for w in words if any(ch.isalnum() for ch in w)]
    if not words:
        raise AlignmentError(f"{where}: empty transcript; expected words (text with --lang) or IPA phones")
    voice = espeak_voice_for(lang)
    syn = EspeakSynthesizer(voice)
    chunks = syn.phonemize(" ".join(words)).split()
    if len(chunks) != len(words):
        chunks = [syn.phonemize(w).replace(" ", "") for w in words]
    phones: list[str] = []
    word_labels: list[str] = []
    word_of: list[int] = []
    for w, c in zip(words, chunks):
        t = parse_ipa([c], where=f"{where} (word {w!r}, eSpeak voice {voice})", lang=voice) if c else None
        if t is None or not t.phones:
            continue
        word_of.extend([len(word_labels)] * len(t.phones))
        word_labels.append(w)
        phones.extend(t.phones)
    if not phones:
        raise AlignmentError(f"{where}: eSpeak NG ({voice}) gave no phones for {text[:40]!r}")
    return Transcript(phones, word_labels, word_of)


def _labels(phones: Sequence[str], token2id: dict[str, int], where: str) -> tuple[list[int], list[int]]:
    """Token ids of the phones (one per code point) and the phone index of each token."""
    labels, owner, missing = [], [], []
    for i, ph in enumerate(phones):
        ids = [token2id.get(ch) for ch in ph]
        if not ids or any(t is None for t in ids):
            missing.append(ph)
            continue
        labels.extend(ids)  # type: ignore[arg-type]
        owner.extend([i] * len(ids))
    if missing:
        raise AlignmentError(f"{where}: phone(s) the model cannot produce: {' '.join(dict.fromkeys(missing))}")
    return labels, owner


# --------------------------------------------------------------------------------------------------------
# alignment


def align_log_probs(log_probs: np.ndarray, transcript: Transcript, token2id: dict[str, int], frame_shift: float,
                    *, blank_id: int = 0, duration: float | None = None, split: float = DEFAULT_SPLIT,
                    max_share: float = DEFAULT_MAX_SHARE, window: int = 1500, where: str = "audio"
                    ) -> Alignment:
    """Align ``transcript`` to one utterance's CTC log-posteriors.

    Args:
        log_probs: (T, V) log-posteriors (numpy).
        transcript: phones (and words) to place.
        token2id: the model's tokens.
        frame_shift: seconds per frame.
        duration: audio length in seconds (default T * frame_shift); ends are clipped to it.
        split, max_share: the blank-sharing rule (:func:`anyphone.alignment.ctc.share_blanks`).
        window: Viterbi window in frames for long recordings.
    Raises:
        AlignmentError: phones the model cannot produce, or too few frames for the phones.
    """
    lp = np.asarray(log_probs, dtype=np.float32)
    t_len = lp.shape[0]
    dur = float(duration) if duration is not None else t_len * frame_shift
    labels, owner = _labels(transcript.phones, token2id, where)
    need = min_frames(labels)
    if t_len < need:
        raise AlignmentError(f"{where}: audio too short for its transcript: {dur:.2f} s gives {t_len} frames of "
                             f"{frame_shift * 1000:.0f} ms, the {len(transcript.phones)} phones need at least "
                             f"{need}")
    path = ctc_viterbi_windowed(lp, labels, blank_id, window=window, margin=max(1, min(250, window // 4)))
    spans = phone_frame_spans(path, owner, len(transcript.phones))
    # the front end's frames stop a little before the audio does; the tail is still there to share out
    n_frames = max(t_len, round(dur / frame_shift))
    times = share_blanks(spans, n_frames, frame_shift, split=split, max_share=max_share)
    times = [(min(s, dur), min(max(e, s), dur)) for s, e in times]
    phones = [PhoneInterval(p, s, e) for p, (s, e) in zip(transcript.phones, times)]
    # score: mean posterior of each phone's own tokens on the frames aligned to them
    scores = []
    lab = np.asarray(labels)
    for i, (a, b) in enumerate(spans):
        seg = path[a:b]
        on = seg >= 0
        probs = np.exp(lp[np.arange(a, b)[on], lab[seg[on]]]) if on.any() else np.zeros(1)
        scores.append(round(float(probs.mean()), 4))
    words: list[WordInterval] = []
    if transcript.words and transcript.word_of_phone:
        for wi, label in enumerate(transcript.words):
            idx = [i for i, w in enumerate(transcript.word_of_phone) if w == wi]
            if idx:
                words.append(WordInterval(label, phones[idx[0]].start, phones[idx[-1]].end))
    return Alignment(phones, words, dur, frame_shift, scores)


def align(model: Any, audio: Any, phones: str | Sequence[str] | None = None, *, text: str | None = None,
          lang: str | None = None, sample_rate: int | None = None, split: float = DEFAULT_SPLIT,
          max_share: float = DEFAULT_MAX_SHARE, keep_posteriors: bool = False) -> Alignment:
    """Align phones (IPA) or text (with ``lang``, through eSpeak NG) to audio with a CTC model.

    Args:
        model: a :class:`anyphone.inference.api.PhoneRecognizer` (``load_model(...)``), or anything with its
            ``frame_log_probs``, ``tokenizer`` and ``frame_shift``.
        audio: a path or a mono waveform (``sample_rate`` then, unless 16 kHz).
        phones: IPA (string or list of phones). Give this or ``text``.
        text: orthographic text, turned into IPA with eSpeak NG's ``lang`` voice (words become a word tier).
        split, max_share: the blank-sharing rule (:func:`anyphone.alignment.ctc.share_blanks`).
        keep_posteriors: keep the (T, V) frame probabilities (for :func:`anyphone.inference.plot`).
    Returns:
        :class:`Alignment`; ``list(alignment)`` is ``[(phone, start, end), ...]``.
    Raises:
        AlignmentError: bad transcript (empty, unknown symbols, phones the model lacks), audio too short,
            a language without an eSpeak voice, or a model without a CTC head (one-line messages).
        anyphone.inference.audio.AudioError: unreadable audio.
    """
    if not hasattr(model, "frame_log_probs"):
        # alignment sits below inference (the recogniser's align() calls this): it takes a loaded model
        raise TypeError(f"model: expected a loaded recogniser (anyphone.inference.load_model(...)), got a "
                        f"{type(model).__name__}")
    where = str(audio) if isinstance(audio, (str, os.PathLike)) else "audio"
    if (phones is None) == (text is None):
        raise AlignmentError(f"{where}: give either phones (IPA) or text (with lang), not "
                             f"{'both' if phones is not None else 'neither'}")
    if text is not None:
        if not lang:
            raise AlignmentError(f"{where}: text needs lang= (the eSpeak NG voice that turns it into phones)")
        transcript = text_to_transcript(text, lang, where=where)
    else:
        transcript = parse_ipa(phones, where=where)  # type: ignore[arg-type]
    lp, duration = model.frame_log_probs(audio, sample_rate=sample_rate)
    ali = align_log_probs(lp, transcript, model.tokenizer.token2id, model.frame_shift,
                          blank_id=model.tokenizer.blank_id, duration=duration, split=split,
                          max_share=max_share, where=where)
    ali.source = where if isinstance(audio, (str, os.PathLike)) else None
    if keep_posteriors:
        ali.posteriors = np.exp(lp).astype(np.float32)
        ali.id2token = list(model.tokenizer.id2token)
        ali.blank_id = model.tokenizer.blank_id
    return ali
