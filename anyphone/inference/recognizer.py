"""The windowed phone recogniser: audio in, Allosaurus-style results out (formats: :mod:`anyphone.inference.api`).

:class:`PhoneRecognizer` cuts long audio into overlapping windows, batches them, runs the network through two
backend hooks (PyTorch here, ONNX Runtime in :mod:`anyphone.inference.loading`) and decodes greedily with the
options of :class:`anyphone.decoding.options.DecodeOptions` (the blank penalty, alias ``emit``), a prior and a
language's inventory.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anyphone.data.fbank import FRAME_SHIFT_SAMPLES, SAMPLE_RATE, num_frames
from anyphone.decoding.options import DecodeOptions
from anyphone.inference.audio import (
    DEFAULT_SILENCE_THRESHOLD,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    AudioError,
    iter_audio_chunks,
)
from anyphone.inference.features import fbank
from anyphone.inference.priors import read_prior
from anyphone.inference.results import PhoneSegment, RecognitionResult, TokenFrame
from anyphone.models.subsampling import encoder_output_frames
from anyphone.text.ipa import segment_phones
from anyphone.text.tokenizer import IpaTokenizer
from anyphone.utils import resolve_device

__all__ = ["SAMPLE_RATE", "PhoneRecognizer"]

log = logging.getLogger("anyphone.recognize")

_FBANK_SHIFT = FRAME_SHIFT_SAMPLES / SAMPLE_RATE  # seconds per fbank frame
_MIN_SAMPLES = 3200  # 0.2 s: shorter pieces are zero-padded so the subsampling front end has enough frames


@dataclass
class _Piece:
    """A window of one utterance: samples at 16 kHz starting at ``start`` (s); frames whose time lies in
    [keep_from, keep_to) belong to it."""

    utt: int
    start: float
    samples: np.ndarray
    keep_from: float
    keep_to: float


@dataclass
class _PieceOut:
    tokens: list[int]
    times: list[float]  # absolute start times
    durs: list[float]
    probs: list[float]
    cands: list[list[tuple[int, float]]]
    posteriors: np.ndarray | None  # (T_kept, V)
    first_frame: int  # absolute index of posteriors[0]


@dataclass
class _Options:
    topk: int
    adjust: Tensor | None  # (V,) additive log-score (prior, emit, -inf mask), or None
    prior: dict[int, float]
    emit: float
    mask: Tensor | None  # (V,) bool allowed
    keep_posteriors: bool
    constraint: Any = None  # anyphone.inventory.PhoneConstraint of ``lang``: whole inventory phones only


class PhoneRecognizer:
    """A loaded model plus its tokens; see the module docstring for the output formats.

    Args:
        model: a model of ``family`` (eval mode; moved to ``device``).
        tokenizer: the model's tokens.
        family: the model family (:mod:`anyphone.families`), by name or object; ``self.family`` is its name,
            ``self.model_family`` the object, which runs the network (CTC log-probs or transducer parts).
        device: "cpu", "cuda", "cuda:1", or "auto" (cuda if available).
        batch_size: windows decoded together (padding changes the last frames slightly, as in ZIPA; use 1 for
            results that do not depend on the other inputs).
        chunk_seconds / overlap_seconds: long-audio windowing.
        decode_options: the options recorded with the model (an exp dir's config.json): its blank penalty is
            the default ``emit`` (``emit = exp(blank_penalty)``). Recognition always searches greedily.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: IpaTokenizer, family: str, device: str = "cpu",
                 batch_size: int = 8, chunk_seconds: float = 30.0, overlap_seconds: float = 2.0,
                 name: str | None = None, decode_options: DecodeOptions | None = None) -> None:
        from anyphone.families import get_family

        self.model_family = get_family(family)  # ValueError naming the known families
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}, expected >= 1")
        if not 0 <= overlap_seconds < chunk_seconds / 2:
            raise ValueError(f"overlap_seconds={overlap_seconds}, expected 0 <= overlap < chunk_seconds/2 "
                             f"(chunk_seconds={chunk_seconds})")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval() if model is not None else None
        self.tokenizer = tokenizer
        self.family = self.model_family.name
        self.batch_size = batch_size
        self.chunk_seconds = float(chunk_seconds)
        self.overlap_seconds = float(overlap_seconds)
        self.name = name or self.family
        self.decode_options = decode_options or DecodeOptions()
        self._out_ds = self.model_family.output_downsampling_factor
        self.frame_shift = _FBANK_SHIFT * 2 * self._out_ds
        vocab = getattr(model, "vocab_size", tokenizer.vocab_size)
        if tokenizer.vocab_size != vocab:
            raise ValueError(f"{tokenizer.source}: {tokenizer.vocab_size} tokens but the model outputs {vocab}")
        self._warned_langs: set[str] = set()
        decoder = getattr(model, "decoder", None) if not self.model_family.has_ctc else None
        self._context_size = int(getattr(decoder, "context_size", 2))

    def __repr__(self) -> str:
        return (f"PhoneRecognizer({self.name!r}, family={self.family}, device={self.device}, "
                f"batch_size={self.batch_size})")

    # ---- public API ---------------------------------------------------------------------------------
    def recognize(self, audio: str | os.PathLike | np.ndarray | Tensor, sample_rate: int | None = None,
                  lang: str | None = None, topk: int = 1, timestamp: bool = False, emit: float | None = None,
                  prior: str | os.PathLike | Mapping[str, float] | None = None, *, return_result: bool = False,
                  keep_posteriors: bool = False) -> str | RecognitionResult:
        """Recognise one file or waveform.

        Args:
            audio: a path (WAV/FLAC/OGG/MP3, any rate, stereo is mixed down) or a mono waveform (S,) float in
                [-1, 1] (then ``sample_rate`` is required unless it is 16000).
            lang: restrict the output to whole phones of this language's inventory (ISO 639-3 or alias, or
                ``phoible:xxx``; see anyphone.inventory): a phone of several tokens is allowed as a unit, never
                its tokens in other combinations (top-k candidates too).
            topk, timestamp: output format (module docstring).
            emit: > 1 emits more phones, < 1 fewer (blank probability divided by ``emit``); the same knob as
                decode.py's ``--blank-penalty`` (``emit = exp(blank_penalty)``). None: the model's recorded
                ``decode_options.emit`` (1.0 unless decode.py saved a tuned penalty with it).
            prior: Allosaurus prior file or dict phone -> log-score added to that token.
            return_result: return the :class:`RecognitionResult` instead of its text.
            keep_posteriors: keep the (T, V) frame probabilities in the result (for plotting).
        Raises:
            AudioError: unreadable / empty / non-finite input (one-line message naming the file).
        """
        results = list(self.recognize_many([audio], sample_rate=sample_rate, lang=lang, topk=topk,
                                           timestamp=timestamp, emit=emit, prior=prior,
                                           keep_posteriors=keep_posteriors))
        res = results[0][1]
        if isinstance(res, Exception):
            raise res
        return res if return_result else res.format()

    def inference(self, audio: Sequence[np.ndarray | Tensor], sample_rate: int = SAMPLE_RATE,
                  batch_size: int | None = None) -> list[str]:
        """ZIPA-compatible batch call: a list of mono waveforms -> a list of space-separated phone strings.

        (ZIPA's ``inference`` returns ``[[ipa_string]]`` per input; this returns the phones of each input.)
        """
        old = self.batch_size
        if batch_size is not None:
            self.batch_size = batch_size
        try:
            out = []
            for _, res in self.recognize_many(list(audio), sample_rate=sample_rate):
                if isinstance(res, Exception):
                    raise res
                out.append(res.text)
            return out
        finally:
            self.batch_size = old

    @torch.no_grad()
    def frame_log_probs(self, audio: str | os.PathLike | np.ndarray | Tensor, sample_rate: int | None = None
                        ) -> tuple[np.ndarray, float]:
        """CTC log-posteriors of one recording, computed in the recogniser's windows (bounded memory; each window
        keeps the frames of its own half of each overlap, as in recognition).

        Returns:
            (log_probs (T, V) float32 with frame t at ``t * frame_shift`` seconds, duration in seconds).
        Raises:
            AudioError: unreadable input. ValueError: a model without CTC output (a transducer) to align with.
        """
        if not self.model_family.has_ctc:
            raise ValueError(f"{self.name}: alignment needs a CTC model (CR-CTC); this is a {self.family}")
        meta: dict[str, Any] = {}
        rows: list[np.ndarray] = []
        batch: list[_Piece] = []

        def run(pieces: list[_Piece]) -> None:
            waves = [np.pad(p.samples, (0, max(0, _MIN_SAMPLES - len(p.samples)))) for p in pieces]
            feats, feat_lens = fbank(waves, self.device)
            lp, lens = self._ctc_log_probs(feats, feat_lens)
            for j, p in enumerate(pieces):
                keep_to = min(p.keep_to, p.start + len(p.samples) / SAMPLE_RATE)
                t = np.arange(int(lens[j]))
                times = p.start + t * self.frame_shift
                own = (times >= p.keep_from) & (times < keep_to)
                rows.append(lp[j, : int(lens[j])][torch.from_numpy(own)].numpy())

        for piece in self._pieces(0, audio, sample_rate, meta):
            batch.append(piece)
            if len(batch) >= self.batch_size:
                run(batch)
                batch = []
        if batch:
            run(batch)
        vocab = self.tokenizer.vocab_size
        lp = np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, vocab), dtype=np.float32)
        return lp, float(meta.get("duration", lp.shape[0] * self.frame_shift))

    def align(self, audio: str | os.PathLike | np.ndarray | Tensor, phones: str | Sequence[str] | None = None, *,
              text: str | None = None, lang: str | None = None, sample_rate: int | None = None,
              keep_posteriors: bool = False, **rule: float) -> Any:
        """Where each phone of a known transcript starts and ends (:func:`anyphone.alignment.align`).

        ``phones``: IPA; or ``text`` with ``lang`` (eSpeak NG turns it into phones, and words become a word
        tier). ``rule``: ``split``/``max_share`` of the blank-sharing rule. Returns an
        :class:`anyphone.alignment.Alignment`, whose iteration gives ``(phone, start, end)`` tuples.
        """
        from anyphone.alignment import align

        return align(self, audio, phones, text=text, lang=lang, sample_rate=sample_rate,
                     keep_posteriors=keep_posteriors, **rule)

    def recognize_many(self, inputs: Iterable[str | os.PathLike | np.ndarray | Tensor],
                       sample_rate: int | None = None, lang: str | None = None, topk: int = 1,
                       timestamp: bool = False, emit: float | None = None,
                       prior: str | os.PathLike | Mapping[str, float] | None = None,
                       keep_posteriors: bool = False) -> Iterator[tuple[Any, RecognitionResult | AudioError]]:
        """Recognise many inputs, batching windows across them; yields (input, result or AudioError) in order.

        A bad file yields its AudioError (and the others go on); only bad options raise.
        """
        opts = self._options(lang, topk, emit, prior, keep_posteriors)
        inputs = list(inputs)
        pending: list[_Piece] = []
        outs: dict[int, list[tuple[_Piece, _PieceOut]]] = {}
        meta: dict[int, dict[str, Any]] = {}
        done_reading: dict[int, bool] = {}
        next_yield = 0

        def flush(all_: bool) -> None:
            while pending and (all_ or len(pending) >= self.batch_size):
                batch = pending[: self.batch_size]
                del pending[: self.batch_size]
                try:
                    decoded = self._decode(batch, opts)
                except MemoryError:  # a batch mixes files: not one file's failure, so not an AudioError
                    raise RuntimeError("out of memory decoding a batch of audio windows; try a smaller "
                                       "batch_size or chunk_seconds") from None
                for piece, out in zip(batch, decoded):
                    outs.setdefault(piece.utt, []).append((piece, out))

        def ready() -> Iterator[tuple[Any, RecognitionResult | AudioError]]:
            nonlocal next_yield
            while next_yield < len(inputs) and done_reading.get(next_yield):
                if any(p.utt == next_yield for p in pending):
                    return
                m = meta.pop(next_yield)
                parts = outs.pop(next_yield, [])
                item = inputs[next_yield]
                if m.get("error") is not None:
                    yield item, m["error"]
                else:
                    yield item, self._assemble(parts, m, opts, timestamp)
                next_yield += 1

        for idx, item in enumerate(inputs):
            meta[idx] = {"source": str(item) if isinstance(item, (str, os.PathLike)) else None}
            try:
                for piece in self._pieces(idx, item, sample_rate, meta[idx]):
                    pending.append(piece)
                    if len(pending) >= self.batch_size:
                        flush(False)
            except (AudioError, MemoryError) as e:
                # one file too large for this machine to read fails alone; the others are still recognised
                if isinstance(e, MemoryError):
                    e = AudioError(item if isinstance(item, (str, os.PathLike)) else "<array>",
                                   "not enough memory to decode it; try a smaller --chunk-seconds/--batch-size")
                meta[idx]["error"] = e
                pending[:] = [p for p in pending if p.utt != idx]
                outs.pop(idx, None)
            done_reading[idx] = True
            yield from ready()
        flush(True)
        yield from ready()

    # ---- options ------------------------------------------------------------------------------------
    def _options(self, lang, topk, emit, prior, keep_posteriors) -> _Options:
        if int(topk) != topk or topk < 1:
            raise ValueError(f"topk={topk}, expected an integer >= 1")
        if emit is None:
            emit = self.decode_options.emit
        else:
            self.decode_options.with_emit(emit)  # the check: a positive finite number
        vocab = self.tokenizer.vocab_size
        prior_ids = read_prior(prior, self.tokenizer.token2id)
        mask = None
        constraint = None
        if lang:
            from anyphone.inventory import PhoneConstraint, inventory_token_mask

            allowed, missing = inventory_token_mask(lang, self.tokenizer.id2token)
            # the token mask removes tokens no phone uses; the constraint (an automaton, built once per
            # language) lets the search emit tokens only as parts of whole inventory phones
            cache = self.__dict__.setdefault("_constraints", {})
            if lang not in cache:
                cache[lang] = PhoneConstraint(lang, self.tokenizer.id2token)
            constraint = cache[lang]
            if missing and lang not in self._warned_langs:
                self._warned_langs.add(lang)
                log.warning("lang %s: %d inventory phone(s) this model cannot produce: %s", lang, len(missing),
                            " ".join(missing))
            mask = torch.zeros(vocab, dtype=torch.bool)
            mask[sorted(allowed)] = True
        adjust = None
        if prior_ids or emit != 1.0 or mask is not None:
            adjust = torch.zeros(vocab)
            for tid, v in prior_ids.items():
                adjust[tid] += v
            adjust[self.tokenizer.blank_id] -= math.log(emit)
            if mask is not None:
                adjust[~mask] = float("-inf")
        return _Options(int(topk), adjust, prior_ids, float(emit), mask, keep_posteriors, constraint)

    # ---- input windows --------------------------------------------------------------------------------
    def _pieces(self, idx: int, item, sample_rate: int | None, meta: dict[str, Any]) -> Iterator[_Piece]:
        chunk, overlap = self.chunk_seconds, self.overlap_seconds
        half = overlap / 2
        peak = 0.0
        if isinstance(item, (str, os.PathLike)):
            total = 0.0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                chunks = iter_audio_chunks(item, chunk, overlap, SAMPLE_RATE, on_silence="ignore")
                for c in chunks:
                    peak = max(peak, _peak(c.samples))
                    total = c.end_seconds
                    yield self._piece(idx, c.samples, c.start_seconds, c.index == 0, c.is_last, half)
            meta["duration"] = total
        else:
            wave = _as_wave(item, meta)
            sr = SAMPLE_RATE if sample_rate is None else int(sample_rate)
            if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:  # the resampler would need sr-sized buffers
                raise AudioError("<array>", f"sample_rate={sr} Hz, expected {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}")
            if sr != SAMPLE_RATE:
                import scipy.signal

                g = math.gcd(sr, SAMPLE_RATE)
                wave = scipy.signal.resample_poly(wave, SAMPLE_RATE // g, sr // g).astype(np.float32)
            peak = _peak(wave)
            n = len(wave)
            meta["duration"] = n / SAMPLE_RATE
            size = round(chunk * SAMPLE_RATE)
            step = size - round(overlap * SAMPLE_RATE)
            s = 0
            while True:
                e = min(s + size, n)
                last = e >= n
                yield self._piece(idx, wave[s:e], s / SAMPLE_RATE, s == 0, last, half)
                if last:
                    break
                s += step
        meta["silent"] = peak < DEFAULT_SILENCE_THRESHOLD
        meta["peak"] = peak

    @staticmethod
    def _piece(idx: int, samples: np.ndarray, start: float, first: bool, last: bool, half: float) -> _Piece:
        end = start + len(samples) / SAMPLE_RATE
        keep_from = -math.inf if first else start + half
        keep_to = end if last else end - half
        return _Piece(idx, start, np.ascontiguousarray(samples, dtype=np.float32), keep_from, keep_to)

    # ---- decoding ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def _decode(self, batch: list[_Piece], opts: _Options) -> list[_PieceOut]:
        vocab = self.tokenizer.vocab_size
        blank = self.tokenizer.blank_id
        live = [i for i, p in enumerate(batch) if _peak(p.samples) >= DEFAULT_SILENCE_THRESHOLD]
        results: list[_PieceOut | None] = [None] * len(batch)
        for i, p in enumerate(batch):
            if i not in live:  # digital silence: nothing to recognise; all-blank posteriors
                results[i] = self._silent_out(p, opts, vocab, blank)
        if live:
            waves = [batch[i].samples if len(batch[i].samples) >= _MIN_SAMPLES
                     else np.pad(batch[i].samples, (0, _MIN_SAMPLES - len(batch[i].samples))) for i in live]
            feats, feat_lens = fbank(waves, self.device)
            if self.model_family.has_ctc:
                lp, enc_lens = self._ctc_log_probs(feats, feat_lens)
                lp, hyps = self._ctc(lp, enc_lens, opts)
            else:
                proj, enc_lens, joiner, decoder = self._transducer_parts(feats, feat_lens)
                lp, hyps = self._transducer(proj, enc_lens, joiner, decoder, opts)
            lens = [int(v) for v in enc_lens.tolist()]
            for j, i in enumerate(live):
                results[i] = self._collect(batch[i], lp[j, : lens[j]], hyps[j], opts)
        return results  # type: ignore[return-value]

    # The two backend hooks (torch here, ONNX Runtime in _OnnxRecognizer); everything else is shared.
    def _ctc_log_probs(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        """feats (N, T, 80), feat_lens (N,) -> CTC log-probs (N, T', V) on CPU, lengths (N,)."""
        return self.model_family.ctc_log_probs(self.model, feats, feat_lens)

    def _transducer_parts(self, feats: Tensor, feat_lens: Tensor):
        """-> (projected encoder out (N, T', J), lengths (N,), joiner(enc (A, J), dec (A, J)) -> logits (A, V),
        decoder(context ids (E, context_size) int64) -> projected (E, J)); the family runs its parts."""
        return self.model_family.transducer_parts(self.model, feats, feat_lens)

    def _ctc(self, lp: Tensor, enc_lens: Tensor, opts: _Options) -> tuple[Tensor, list[list[tuple[int, int, int]]]]:
        """Options, then greedy search on CPU log-probs (N, T, V); items are (token, first frame, run length)."""
        from anyphone.decoding.ctc import apply_blank_scale, apply_prior, ctc_greedy_search

        if opts.prior:
            lp = apply_prior(lp, opts.prior)
        if opts.emit != 1.0:
            lp = apply_blank_scale(lp, opts.emit, self.tokenizer.blank_id)
        if opts.mask is not None:
            lp = lp.masked_fill(~opts.mask, float("-inf")).log_softmax(-1)
        if opts.constraint is not None:
            return lp, self._ctc_constrained(lp, enc_lens, opts.constraint)
        hyps = ctc_greedy_search(lp, enc_lens, self.tokenizer.blank_id, return_timestamps=True)
        best = lp.argmax(-1)
        out = []
        for n, h in enumerate(hyps):
            row, length = best[n], int(enc_lens[n])
            items = []
            for tok, t in zip(h.tokens, h.timestamps):
                end = t + 1
                while end < length and int(row[end]) == tok:
                    end += 1
                items.append((tok, t, end - t))
            out.append(items)
        return lp, out

    def _ctc_constrained(self, lp: Tensor, enc_lens: Tensor, constraint: Any) -> list[list[tuple]]:
        """``--lang``: the best path made of whole inventory phones. Items are (token, first frame, run length,
        (V,) bool tokens allowed at that point (for top-k), first frame of the token's phone): a window keeps a
        phone by its first token, so window seams never split a phone."""
        from anyphone.decoding.ctc import ctc_constrained_best_path

        blank = self.tokenizer.blank_id
        lp64 = lp.double()
        out = []
        for n in range(lp.shape[0]):
            path = ctc_constrained_best_path(lp64[n, : int(enc_lens[n])].numpy(), constraint, blank)
            items: list[tuple] = []
            anchor = 0
            for tok, t, run, st in zip(path.tokens, path.frames, path.runs, path.states):
                if constraint.starts_phone[tok]:
                    anchor = t
                allowed = torch.from_numpy(constraint.next[st] >= 0)
                allowed[blank] = True
                items.append((tok, t, run, allowed, anchor))
            out.append(items)
        return out

    def _transducer(self, proj: Tensor, enc_lens: Tensor, joiner, decoder, opts: _Options
                    ) -> tuple[Tensor, list[list[tuple[int, int, int]]]]:
        """Greedy search, one symbol per frame (ZIPA's greedy_search_batch), with the additive adjustment
        applied to the joiner logits; also returns each frame's log-softmax along the path (N, T, V)."""
        from anyphone.decoding.greedy_loop import greedy_transducer_search

        cons = opts.constraint  # --lang: an automaton; a frame may only emit what its state allows
        out = greedy_transducer_search(
            lambda ids: decoder(torch.from_numpy(ids)), lambda e, d: joiner(e, d).float().cpu().numpy(), proj,
            enc_lens.tolist(), blank_id=self.tokenizer.blank_id, context_size=self._context_size,
            adjust=None if opts.adjust is None else opts.adjust.numpy(),
            next_state=None if cons is None else cons.next, keep_log_probs=True)
        lp_all = torch.from_numpy(out.log_probs)
        items = [[(v, t, 1) for v, t in zip(h.tokens, h.timestamps)] for h in out.hyps]
        if cons is not None:  # an unfinished last phone is dropped, never written half
            for it in items:
                del it[len(cons.complete_prefix([v for v, _, _ in it])):]
        return lp_all, items

    def _collect(self, piece: _Piece, lp: Tensor, items: list[tuple[int, int, int]], opts: _Options) -> _PieceOut:
        """Keep the frames of ``piece`` that are its own (overlap halves, real audio end)."""
        shift = self.frame_shift
        real_end = piece.start + len(piece.samples) / SAMPLE_RATE
        keep_to = min(piece.keep_to, real_end)
        toks, times, durs, probs, cands = [], [], [], [], []
        for tok, t, run, *extra in items:
            time = piece.start + t * shift
            # with --lang a token belongs to the window that holds its phone's first token (extra[1])
            anchor = piece.start + extra[1] * shift if extra else time
            if not piece.keep_from <= anchor < keep_to:
                continue
            frame = lp[t].double().exp()
            if extra and extra[0] is not None:  # --lang: top-k over the tokens allowed at this point
                frame = frame * extra[0]
                frame = frame / frame.sum().clamp_min(1e-300)
            toks.append(tok)
            times.append(time)
            durs.append(min(run * shift, real_end - time))  # a run never lasts past the audio's end
            probs.append(float(frame[tok]))
            if opts.topk > 1:
                p, i = frame.topk(min(opts.topk, frame.numel()))
                cands.append([(int(a), float(b)) for a, b in zip(i, p) if b > 0])
            else:
                cands.append([])
        post, first = None, 0
        if opts.keep_posteriors:
            t_idx = [t for t in range(lp.shape[0]) if piece.keep_from <= piece.start + t * shift < keep_to]
            if t_idx:
                post = lp[t_idx[0]: t_idx[-1] + 1].exp().numpy().astype(np.float32)
                first = round((piece.start + t_idx[0] * shift) / shift)
        return _PieceOut(toks, times, durs, probs, cands, post, first)

    def _silent_out(self, piece: _Piece, opts: _Options, vocab: int, blank: int) -> _PieceOut:
        post, first = None, 0
        if opts.keep_posteriors:
            shift = self.frame_shift
            real_end = piece.start + len(piece.samples) / SAMPLE_RATE
            t_n = encoder_output_frames(num_frames(max(len(piece.samples), _MIN_SAMPLES)), self._out_ds)
            t_idx = [t for t in range(t_n) if piece.keep_from <= piece.start + t * shift < min(piece.keep_to,
                                                                                              real_end)]
            if t_idx:
                post = np.zeros((len(t_idx), vocab), dtype=np.float32)
                post[:, blank] = 1.0
                first = round((piece.start + t_idx[0] * shift) / shift)
        return _PieceOut([], [], [], [], [], post, first)

    # ---- results ----------------------------------------------------------------------------------------
    def _assemble(self, parts: list[tuple[_Piece, _PieceOut]], meta: dict[str, Any], opts: _Options,
                  timestamp: bool) -> RecognitionResult:
        parts.sort(key=lambda x: x[0].start)
        id2tok = self.tokenizer.id2token
        silent_ids = {self.tokenizer.blank_id, self.tokenizer.unk_id, self.tokenizer.sos_eos_id,
                      self.tokenizer.word_sep_id}
        frames: list[TokenFrame] = []
        for _, out in parts:
            for tok, time, dur, p, cand in zip(out.tokens, out.times, out.durs, out.probs, out.cands):
                frames.append(TokenFrame(round(time, 6), round(dur, 6), id2tok[tok], p,
                                         [(id2tok[i], q) for i, q in cand]))
        # phones from the printable tokens, keeping each token's timing
        chars = [f for f in frames if self.tokenizer.token2id[f.token] not in silent_ids]
        text = "".join(f.token for f in chars)
        phones = segment_phones(text)
        # each phone's core is the frame run of its tokens on the decoded path (for greedy CTC search that path
        # is the Viterbi alignment of the recognised phones); blank frames between phones are shared out by
        # anyphone.alignment's rule, so start/end say how long the phone lasts, not how wide its spike is
        from anyphone.alignment.ctc import share_blanks

        shift = self.frame_shift
        spans, probs, pos = [], [], 0
        for ph in phones:
            members = chars[pos: pos + len(ph)]
            pos += len(ph)
            a = round(members[0].start / shift)
            b = max(a + 1, round(max(m.start + m.duration for m in members) / shift))
            if spans and a < spans[-1][1]:  # never overlap the previous phone (window seams)
                a = spans[-1][1]
                b = max(b, a + 1)
            spans.append((a, b))
            probs.append(float(np.mean([m.prob for m in members])))
        n_frames = max(round(float(meta.get("duration", 0.0)) / shift), spans[-1][1] if spans else 0)
        segments = [PhoneSegment(st, round(en - st, 6), ph, p)
                    for ph, p, (st, en) in zip(phones, probs, share_blanks(spans, n_frames, shift))]
        notes = list(meta.get("notes", []))
        if meta.get("silent"):
            notes.append(f"silent audio (peak {meta.get('peak', 0.0):.1e}): no phones")
        posteriors = None
        if opts.keep_posteriors:
            chunks = [out.posteriors for _, out in parts if out.posteriors is not None]
            posteriors = np.concatenate(chunks) if chunks else np.zeros((0, len(id2tok)), dtype=np.float32)
        return RecognitionResult(phones=phones, segments=segments, tokens=frames, duration=meta.get("duration", 0.0),
                                 frame_shift=self.frame_shift, topk=opts.topk, timestamp=timestamp,
                                 silent=bool(meta.get("silent")), notes=notes, posteriors=posteriors,
                                 id2token=list(id2tok), blank_id=self.tokenizer.blank_id, source=meta.get("source"))


def _peak(x: np.ndarray) -> float:
    return float(np.max(np.abs(x))) if len(x) else 0.0


def _as_wave(item: Any, meta: dict[str, Any]) -> np.ndarray:
    arr = item.detach().cpu().numpy() if isinstance(item, Tensor) else np.asarray(item)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    elif arr.ndim == 2:
        # (S, C) as soundfile returns it, or (C, S) as torchaudio does: the smaller axis is channels
        arr = arr.mean(axis=1 if arr.shape[1] < arr.shape[0] else 0)
        meta.setdefault("notes", []).append("multi-channel array mixed down to mono")
    if arr.ndim != 1:
        raise AudioError("<array>", f"waveform has shape {arr.shape}, expected (samples,) mono")
    if arr.size == 0:
        raise AudioError("<array>", "no audio samples (0 frames)")
    if not np.issubdtype(arr.dtype, np.floating):
        if np.issubdtype(arr.dtype, np.integer):
            arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
        else:
            raise AudioError("<array>", f"waveform dtype {arr.dtype}, expected float samples in [-1, 1]")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise AudioError("<array>", f"{'NaN' if np.isnan(arr[bad]) else 'inf'} sample at index {bad}; "
                         "expected finite samples")
    return arr
