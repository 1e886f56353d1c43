"""Python API for phone recognition: load a model from anywhere, recognise audio, get Allosaurus-style text.

    from anyphone.inference.api import load_model
    rec = load_model("zipa-cr-small-500k")            # published name (downloaded once), .pth, exp dir, .onnx
    rec.recognize("sample.wav")                        # 'æ l u s ɔ ɹ s'
    rec.recognize("sample.wav", timestamp=True)        # '0.190 0.330 æ\\n0.330 0.450 l\\n...' (start end)
    rec.recognize("sample.wav", topk=3)                # 'æ (0.577) ɛ (0.128) <blk> (0.103) | l (0.754) ...'
    rec.inference([wave1, wave2])                      # ZIPA-style batch call on 16 kHz arrays -> list[str]

Output conventions (those of Allosaurus ``python -m allosaurus.run``):

* plain: phones separated by single spaces; a phone is a base symbol plus its modifiers
  (:func:`anyphone.text.ipa.segment_phones`), so ``tʰ`` is one phone made of two model tokens;
* ``timestamp=True``: one line per phone, ``start end phone`` in seconds with 3 decimals: how long the phone
  lasts, not how wide its spike is. The recognised phones are aligned to the frames (for greedy CTC search the
  decoded path is the Viterbi alignment of its own output; frame shift 20 ms for CR-CTC, 40 ms for
  transducers, whose tokens take one frame each), each phone's core is its tokens' frame run, and the blank
  frames between phones are shared out by the rule of :func:`anyphone.alignment.ctc.share_blanks` (half of a
  gap to each neighbour, at most 0.1 s each; the rest of a longer gap is a pause). For the phones of a known
  transcript use :meth:`PhoneRecognizer.align`;
* ``topk=K`` (K > 1): for each emitting frame (one per model token, not per phone) the K most probable tokens
  of that frame, ``tok (0.577) tok (0.128) ...``, frames separated by `` | ``; ``<blk>`` may appear, as in
  Allosaurus. With ``timestamp=True`` as well, one line per frame: ``start duration tok (p) tok (p) ...``.

Long audio is cut into ``chunk_seconds`` windows overlapping by ``overlap_seconds``; each window keeps the
frames of its own half of each overlap, so results and timestamps join without seams and memory stays bounded.
Digitally silent input (peak below 1e-4) is not decoded: the result is empty and ``result.silent`` is set, with
a note in ``result.notes`` (the CLI prints it on stderr).

Importing this module imports torch and the model code, never the training stack (anyphone.training, optim,
lhotse datasets); only an exp dir with ``iter``/``epoch`` averaging imports ``anyphone.training.checkpoint``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import unicodedata
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anyphone.inference.audio import (
    DEFAULT_SILENCE_THRESHOLD,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    AudioError,
    iter_audio_chunks,
)
from anyphone.models.presets import PRESETS, ZipformerConfig
from anyphone.text.ipa import segment_phones
from anyphone.text.tokenizer import IpaTokenizer
from anyphone.utils import state_dict_mismatch

__all__ = [
    "DEFAULT_MODEL",
    "CheckpointShapeError",
    "PhoneRecognizer",
    "PhoneSegment",
    "RecognitionResult",
    "TokenFrame",
    "config_from_state_dict",
    "load_model",
    "read_prior",
]

log = logging.getLogger("anyphone.recognize")

DEFAULT_MODEL = "zipa-cr-small-500k"
SAMPLE_RATE = 16000
_FBANK_SHIFT = 0.01  # seconds per fbank frame
_MIN_SAMPLES = 3200  # 0.2 s: shorter pieces are zero-padded so the subsampling front end has enough frames


# --------------------------------------------------------------------------------------------------------
# results


@dataclass
class TokenFrame:
    """One emitted model token: ``start``/``duration`` in seconds, ``prob`` its posterior at ``start``,
    ``candidates`` the top-k (token, prob) of that frame (best first; filled when topk > 1)."""

    start: float
    duration: float
    token: str
    prob: float
    candidates: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class PhoneSegment:
    """One phone (one or more tokens): ``start``, ``duration`` in seconds and the tokens' mean posterior."""

    start: float
    duration: float
    phone: str
    prob: float

    @property
    def end(self) -> float:
        return round(self.start + self.duration, 6)


@dataclass
class RecognitionResult:
    """Everything one recognition produced; ``str(result)`` gives the Allosaurus-style text.

    posteriors: (T, V) float32 frame probabilities (only with ``keep_posteriors=True``), frame ``t`` at time
    ``t * frame_shift``; for transducers they are the joiner's distributions along the greedy path.
    """

    phones: list[str]
    segments: list[PhoneSegment]
    tokens: list[TokenFrame]
    duration: float
    frame_shift: float
    topk: int = 1
    timestamp: bool = False
    silent: bool = False
    notes: list[str] = field(default_factory=list)
    posteriors: np.ndarray | None = None
    id2token: list[str] | None = None
    blank_id: int = 0
    source: str | None = None

    @property
    def text(self) -> str:
        """Phones separated by spaces: ``'æ l u s ɔ ɹ s'``."""
        return " ".join(self.phones)

    def format(self, topk: int | None = None, timestamp: bool | None = None) -> str:
        """Allosaurus-style output text (see the module docstring)."""
        k = self.topk if topk is None else topk
        ts = self.timestamp if timestamp is None else timestamp
        if k > 1 and any(len(t.candidates) < min(k, 2) for t in self.tokens):
            raise ValueError(f"format(topk={k}): this result was computed with topk={self.topk}")
        if k <= 1:
            if not ts:
                return self.text
            return "\n".join(f"{s.start:.3f} {s.end:.3f} {s.phone}" for s in self.segments)
        frames = [" ".join(f"{tok} ({p:.3f})" for tok, p in t.candidates[:k]) for t in self.tokens]
        if not ts:
            return " | ".join(frames)
        return "\n".join(f"{t.start:.3f} {t.duration:.3f} {f}" for t, f in zip(self.tokens, frames))

    def __str__(self) -> str:
        return self.format()


# --------------------------------------------------------------------------------------------------------
# model configuration from a state_dict


class CheckpointShapeError(ValueError):
    """Weights whose keys or shapes fit no Zipformer configuration, or not the one asked for.

    ``path`` is the checkpoint, ``detail`` the problem (naming the first tensor that differs) and ``asked`` the
    configuration that was asked for (None when it was inferred), so that each face can say what to pass: the
    API ``config=``, the command line ``--model-size``.
    """

    def __init__(self, path: str | os.PathLike, detail: str, asked: str | None = None) -> None:
        self.path = Path(path)
        self.detail = detail
        self.asked = asked
        super().__init__(f"{path}: {detail}; pass config= (a preset name such as 'small', or a ZipformerConfig)")


def _family_of(sd: Mapping[str, Any]) -> str:
    if any(k.startswith(("joiner.", "decoder.")) for k in sd):
        return "transducer"
    if "ctc_output.1.weight" in sd:
        return "crctc"
    raise ValueError("state_dict has neither ctc_output.1.* (CR-CTC) nor decoder.*/joiner.* (transducer) weights; "
                     f"first keys: {list(sd)[:5]}")


def _head_sizes(sd: Mapping[str, Any], family: str) -> dict[str, int]:
    out: dict[str, int] = {}
    if family == "transducer":
        out["vocab_size"] = int(sd["joiner.output_linear.weight"].shape[0])
        out["joiner_dim"] = int(sd["joiner.output_linear.weight"].shape[1])
        out["decoder_dim"] = int(sd["decoder.embedding.weight"].shape[1])
        conv = sd.get("decoder.conv.weight")
        out["context_size"] = int(conv.shape[-1]) if conv is not None else 1
    else:
        out["vocab_size"] = int(sd["ctc_output.1.weight"].shape[0])
    return out


def _build(family: str, cfg: ZipformerConfig, use_ctc: bool = False) -> torch.nn.Module:
    if family == "transducer":
        from anyphone.models.transducer import TransducerModel

        return TransducerModel(cfg, use_ctc=use_ctc)
    from anyphone.models.ctc import CtcModel

    return CtcModel(cfg)


def _shapes_match(family: str, cfg: ZipformerConfig, sd: Mapping[str, Any], use_ctc: bool) -> str | None:
    """None if a model built from ``cfg`` has exactly the keys and shapes of ``sd``, else the first difference."""
    try:
        with torch.device("meta"):
            model = _build(family, cfg, use_ctc)
    except (ValueError, AssertionError, RuntimeError) as e:
        return f"cannot build ({e})"
    return state_dict_mismatch(model.state_dict(), sd)


_LAYER_RE = re.compile(r"^encoder\.encoders\.(\d+)\.(?:encoder\.)?layers\.(\d+)\.")


def _stack_signature(sd: Mapping[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(layers per stack, encoder dim per stack) read off the key names and norm biases."""
    layers: dict[int, set[int]] = {}
    dims: dict[int, int] = {}
    for k, v in sd.items():
        m = _LAYER_RE.match(k)
        if m:
            i = int(m.group(1))
            layers.setdefault(i, set()).add(int(m.group(2)))
            if k.endswith(".norm.bias"):
                dims[i] = int(v.shape[0])
    n = sorted(layers)
    return tuple(len(layers[i]) for i in n), tuple(dims.get(i, 0) for i in n)


def _derive_config(sd: Mapping[str, Any], heads: dict[str, int]) -> ZipformerConfig:
    """Read every Zipformer hyper-parameter that shapes a tensor off the state_dict.

    Head sizes are ambiguous from shapes alone (rows = heads * head_dim); the first pos_head_dim among
    4, 2, 8, 1, 16 (ZIPA uses 4) that gives whole, stack-independent query/value head dims is taken.
    encoder_unmasked_dim only matters in training and is set to the encoder dims.
    """
    layers: dict[int, set[int]] = {}
    prefix: dict[int, str] = {}
    for k in sd:
        m = _LAYER_RE.match(k)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            layers.setdefault(i, set()).add(j)
            prefix[i] = k[: m.end()].rsplit("layers.", 1)[0] + "layers.0."
    if not layers or sorted(layers) != list(range(len(layers))):
        raise ValueError("state_dict has no encoder.encoders.N.layers.M.* keys; not a Zipformer checkpoint")
    n = len(layers)

    def shape(i: int, name: str) -> tuple[int, ...]:
        return tuple(sd[prefix[i] + name].shape)

    causal = any(k.endswith("depthwise_conv.causal_conv.weight") for k in sd)
    conv_w = "conv_module1.depthwise_conv.chunkwise_conv.weight" if causal else "conv_module1.depthwise_conv.weight"
    dims = [shape(i, "norm.bias")[0] for i in range(n)]
    pos_rows = [shape(i, "self_attn_weights.linear_pos.weight")[0] for i in range(n)]
    in_rows = [shape(i, "self_attn_weights.in_proj.weight")[0] for i in range(n)]
    val_rows = [shape(i, "self_attn1.in_proj.weight")[0] for i in range(n)]
    choice = None
    for pd in (4, 2, 8, 1, 16):
        if any(r % pd for r in pos_rows):
            continue
        h = [r // pd for r in pos_rows]
        if any((ir // hh - pd) % 2 or ir % hh or vr % hh for ir, vr, hh in zip(in_rows, val_rows, h)):
            continue
        qd = {(ir // hh - pd) // 2 for ir, hh in zip(in_rows, h)}
        vd = {vr // hh for vr, hh in zip(val_rows, h)}
        if len(qd) == 1 and len(vd) == 1 and min(qd) > 0:
            choice = (h, qd.pop(), vd.pop(), pd)
            break
    if choice is None:
        raise ValueError("cannot tell the attention head sizes from the state_dict shapes; pass config=")
    h, qd, vd, pd = choice
    return ZipformerConfig(
        num_encoder_layers=tuple(len(layers[i]) for i in range(n)),
        downsampling_factor=tuple(
            int(sd[f"encoder.encoders.{i}.downsample.bias"].shape[0]) if f"encoder.encoders.{i}.downsample.bias" in sd
            else 1 for i in range(n)),
        feedforward_dim=tuple(shape(i, "feed_forward2.in_proj.weight")[0] for i in range(n)),
        num_heads=tuple(h),
        encoder_dim=tuple(dims),
        query_head_dim=(qd,),
        value_head_dim=(vd,),
        pos_head_dim=(pd,),
        pos_dim=shape(0, "self_attn_weights.linear_pos.weight")[1],
        encoder_unmasked_dim=tuple(dims),
        cnn_module_kernel=tuple(shape(i, conv_w)[-1] for i in range(n)),
        causal=causal,
        feature_dim=80,
        embed_channels=tuple(int(sd[f"encoder_embed.conv.{i}.weight"].shape[0]) for i in (0, 4, 7)),
        name="custom",
        **heads,
    )


def config_from_state_dict(
    sd: Mapping[str, Any], config: ZipformerConfig | Mapping[str, Any] | str | None = None
) -> tuple[str, ZipformerConfig, bool]:
    """Tell (family, config, use_ctc) from a ZIPA/anyphone state_dict, so users never pass ``--model-size``.

    family: "crctc" (``ctc_output.1.*``) or "transducer" (``decoder.*``/``joiner.*``; ``use_ctc`` when it also
    has a CTC head). The config is ``config`` if given (a ZipformerConfig, a dict, or a preset name), else the
    first preset (small, large, tiny, fixture_tiny) whose shapes match exactly, else one derived from the shapes.
    Every candidate is checked against all keys and shapes.

    Raises:
        ValueError: not a Zipformer checkpoint, or shapes that fit no configuration (names the first mismatch).
    """
    family = _family_of(sd)
    use_ctc = family == "transducer" and "ctc_output.1.weight" in sd
    heads = _head_sizes(sd, family)
    if config is not None:
        if isinstance(config, str):
            cfg = PRESETS[config].replace(**heads) if config in PRESETS else None
            if cfg is None:
                raise ValueError(f"config={config!r}: unknown preset, expected one of {sorted(PRESETS)}")
        elif isinstance(config, ZipformerConfig):
            cfg = config
        else:
            cfg = ZipformerConfig.from_dict(dict(config))
        why = _shapes_match(family, cfg, sd, use_ctc)
        if why:
            raise ValueError(f"the given config ({cfg.name}) does not fit the checkpoint: {why}")
        return family, cfg, use_ctc
    sig = _stack_signature(sd)
    for name in ("small", "large", "tiny", "fixture_tiny"):
        cfg = PRESETS[name].replace(**heads)
        if sig != (cfg.stack(cfg.num_encoder_layers), cfg.encoder_dim_per_stack):
            continue  # cheap pre-check; building even a meta model takes a while
        if _shapes_match(family, cfg, sd, use_ctc) is None:
            return family, cfg, use_ctc
    cfg = _derive_config(sd, heads)
    why = _shapes_match(family, cfg, sd, use_ctc)
    if why:
        raise ValueError(f"checkpoint shapes fit no Zipformer configuration (derived one: {why}); pass config=")
    log.warning("model configuration derived from tensor shapes (no preset matches); attention heads assumed "
                "%s x query %d / value %d / pos %d: put a config.json (ZipformerConfig.to_dict()) beside the "
                "checkpoint if the model was trained with other head sizes", ",".join(map(str, cfg.num_heads)),
                cfg.query_head_dim[0], cfg.value_head_dim[0], cfg.pos_head_dim[0])
    return family, cfg, use_ctc


# --------------------------------------------------------------------------------------------------------
# priors


def read_prior(prior: str | os.PathLike | Mapping[str, float] | None, token2id: Mapping[str, int]
               ) -> dict[int, float]:
    """Allosaurus prior (a file of ``phone logprob`` lines, or a dict phone -> value) as token id -> value.

    ``<blk>`` names the blank. A phone must be one model token (one code point); others raise ValueError
    naming the line, as do malformed lines. Blank lines and ``#`` comments are skipped.
    """
    if prior is None:
        return {}
    items: list[tuple[str, float, str]] = []
    if isinstance(prior, Mapping):
        items = [(str(k), float(v), f"prior entry {k!r}") for k, v in prior.items()]
    else:
        path = Path(prior)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: prior file not found; expected lines 'phone logprob'")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            body = line.strip()
            if not body or body.startswith("#"):
                continue
            parts = body.split()
            where = f"{path}:{n}"
            if len(parts) != 2:
                raise ValueError(f"{where}: {line.strip()!r}, expected 'phone logprob' (two fields)")
            try:
                value = float(parts[1])
            except ValueError:
                raise ValueError(f"{where}: {parts[1]!r} is not a number; expected 'phone logprob'") from None
            items.append((parts[0], value, where))
    out: dict[int, float] = {}
    for phone, value, where in items:
        if not math.isfinite(value):
            raise ValueError(f"{where}: prior {value} for {phone!r}, expected a finite number")
        key = unicodedata.normalize("NFD", phone).replace("c\u0327", "ç")
        tid = token2id.get(phone, token2id.get(key))
        if tid is None:
            raise ValueError(f"{where}: {phone!r} is not a token of this model (priors apply to single tokens "
                             "such as 'a', 'ʰ' or '<blk>')")
        out[tid] = value
    return out


# --------------------------------------------------------------------------------------------------------
# the recogniser


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


def _num_enc_frames(num_samples: int, out_ds: int) -> int:
    t = (num_samples + 80) // 160
    t = (t - 7) // 2
    return max(0, (t + 1) // 2 if out_ds == 2 else t)


class PhoneRecognizer:
    """A loaded model plus its tokens; see the module docstring for the output formats.

    Args:
        model: CtcModel or TransducerModel (eval mode; moved to ``device``).
        tokenizer: the model's tokens.
        family: "crctc" or "transducer".
        device: "cpu", "cuda", "cuda:1", or "auto" (cuda if available).
        batch_size: windows decoded together (padding changes the last frames slightly, as in ZIPA; use 1 for
            results that do not depend on the other inputs).
        chunk_seconds / overlap_seconds: long-audio windowing.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: IpaTokenizer, family: str, device: str = "cpu",
                 batch_size: int = 8, chunk_seconds: float = 30.0, overlap_seconds: float = 2.0,
                 name: str | None = None) -> None:
        if family not in ("crctc", "transducer"):
            raise ValueError(f"family={family!r}, expected 'crctc' or 'transducer'")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}, expected >= 1")
        if not 0 <= overlap_seconds < chunk_seconds / 2:
            raise ValueError(f"overlap_seconds={overlap_seconds}, expected 0 <= overlap < chunk_seconds/2 "
                             f"(chunk_seconds={chunk_seconds})")
        self.device = _pick_device(device)
        self.model = model.to(self.device).eval() if model is not None else None
        self.tokenizer = tokenizer
        self.family = family
        self.batch_size = batch_size
        self.chunk_seconds = float(chunk_seconds)
        self.overlap_seconds = float(overlap_seconds)
        self.name = name or family
        self._out_ds = 2 if family == "transducer" else 1
        self.frame_shift = _FBANK_SHIFT * 2 * self._out_ds
        vocab = getattr(model, "vocab_size", tokenizer.vocab_size)
        if tokenizer.vocab_size != vocab:
            raise ValueError(f"{tokenizer.source}: {tokenizer.vocab_size} tokens but the model outputs {vocab}")
        self._warned_langs: set[str] = set()
        decoder = getattr(model, "decoder", None) if family == "transducer" else None
        self._context_size = int(getattr(decoder, "context_size", 2))

    def __repr__(self) -> str:
        return (f"PhoneRecognizer({self.name!r}, family={self.family}, device={self.device}, "
                f"batch_size={self.batch_size})")

    # ---- public API ---------------------------------------------------------------------------------
    def recognize(self, audio: str | os.PathLike | np.ndarray | Tensor, sample_rate: int | None = None,
                  lang: str | None = None, topk: int = 1, timestamp: bool = False, emit: float = 1.0,
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
            emit: > 1 emits more phones, < 1 fewer (blank probability divided by ``emit``).
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
            AudioError: unreadable input. ValueError: a transducer model (no CTC output to align with).
        """
        if self.family != "crctc":
            raise ValueError(f"{self.name}: alignment needs a CTC model (CR-CTC); this is a {self.family}")
        meta: dict[str, Any] = {}
        rows: list[np.ndarray] = []
        batch: list[_Piece] = []

        def run(pieces: list[_Piece]) -> None:
            waves = [np.pad(p.samples, (0, max(0, _MIN_SAMPLES - len(p.samples)))) for p in pieces]
            feats, feat_lens = _fbank(waves, self.device)
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
                       timestamp: bool = False, emit: float = 1.0,
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
        if not (isinstance(emit, (int, float)) and emit > 0 and math.isfinite(emit)):
            raise ValueError(f"emit={emit}, expected a positive number (1.0 = unchanged)")
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
            feats, feat_lens = _fbank(waves, self.device)
            if self.family == "crctc":
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
        enc, enc_lens = self.model.forward_encoder(feats, feat_lens)
        return self.model.ctc_output(enc).float().cpu(), enc_lens.cpu()

    def _transducer_parts(self, feats: Tensor, feat_lens: Tensor):
        """-> (projected encoder out (N, T', J), lengths (N,), joiner(enc (A, J), dec (A, J)) -> logits (A, V),
        decoder(context ids (E, context_size) int64) -> projected (E, J))."""
        model = self.model
        enc, enc_lens = model.forward_encoder(feats, feat_lens)

        def joiner(e: Tensor, d: Tensor) -> Tensor:
            return model.joiner(e, d, project_input=False)

        def decoder(ids: Tensor) -> Tensor:
            return model.joiner.decoder_proj(model.decoder(ids.to(enc.device), need_pad=False)).squeeze(1)

        return model.joiner.encoder_proj(enc), enc_lens.cpu(), joiner, decoder

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
        blank, ctx = self.tokenizer.blank_id, self._context_size
        n, t_max, _ = proj.shape
        lens = [int(v) for v in enc_lens.tolist()]
        hist = [[-1] * (ctx - 1) + [blank] for _ in range(n)]
        dec = decoder(torch.tensor(hist, dtype=torch.int64))
        adjust = opts.adjust.to(proj.device) if opts.adjust is not None else None
        lp_all = torch.full((n, t_max, self.tokenizer.vocab_size), float("-inf"))
        items: list[list[tuple[int, int, int]]] = [[] for _ in range(n)]
        cons = opts.constraint
        state = [0] * n  # --lang: each hypothesis's automaton state; a frame may only emit what it allows
        for t in range(t_max):
            active = [i for i in range(n) if lens[i] > t]
            idx = torch.tensor(active, device=proj.device)
            logits = joiner(proj[idx, t], dec[idx]).float()
            if adjust is not None:
                logits = logits + adjust
            if cons is not None:
                ok = torch.from_numpy(cons.next[[state[i] for i in active]] >= 0).to(logits.device)
                ok[:, blank] = True
                logits = logits.masked_fill(~ok, float("-inf"))
            lp = logits.log_softmax(-1)
            lp_all[active, t] = lp.cpu()
            best = lp.argmax(-1).tolist()
            emitted = [(i, v) for i, v in zip(active, best) if v != blank]
            if emitted:
                for i, v in emitted:
                    hist[i].append(v)
                    items[i].append((v, t, 1))
                    if cons is not None:
                        state[i] = int(cons.next[state[i], v])
                rows = torch.tensor([i for i, _ in emitted], device=dec.device)
                dec = dec.clone()
                dec[rows] = decoder(torch.tensor([hist[i][-ctx:] for i, _ in emitted], dtype=torch.int64))
        if cons is not None:  # an unfinished last phone is dropped, never written half
            for i in range(n):
                keep = len(cons.complete_prefix([v for v, _, _ in items[i]]))
                del items[i][keep:]
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
            durs.append(run * shift)
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
            t_n = _num_enc_frames(max(len(piece.samples), _MIN_SAMPLES), self._out_ds)
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


# --------------------------------------------------------------------------------------------------------
# fbank front end without the data package
#
# anyphone.data.fbank computes ZIPA's features with lhotse's pure-torch Wav2LogFilterBank, but importing it runs
# anyphone/data/__init__ (the lhotse data module) and lhotse/__init__ (datasets, recipes: ~2 s and the training
# side). lhotse/features/kaldi/layers.py itself needs only numpy and torch plus two constants from lhotse.utils,
# so it is loaded here as a private module with those two constants supplied. If lhotse is already imported,
# or the file has changed shape, the regular import is used. test_api checks features equal compute_fbank's.

_FBANK_OPTIONS = {  # = anyphone.data.fbank.ZIPA_FBANK_OPTIONS (lhotse Fbank() defaults, as ZIPA uses)
    "sampling_rate": SAMPLE_RATE, "frame_length": 0.025, "frame_shift": 0.01, "round_to_power_of_two": True,
    "remove_dc_offset": True, "preemph_coeff": 0.97, "window_type": "povey", "dither": 0.0, "snip_edges": False,
    "energy_floor": 1e-10, "raw_energy": True, "use_energy": False, "use_fft_mag": False, "low_freq": 20.0,
    "high_freq": -400.0, "num_filters": 80, "norm_filters": False, "torchaudio_compatible_mel_scale": True,
}
_FBANK_CACHE: dict[str, torch.nn.Module] = {}
_LHOTSE_CONSTS = "from lhotse.utils import EPSILON, Seconds"


def _wav2logfbank_class() -> type:
    import importlib.util
    import sys

    if "lhotse" not in sys.modules:
        spec = importlib.util.find_spec("lhotse")
        if spec is not None and spec.submodule_search_locations:
            path = Path(next(iter(spec.submodule_search_locations))) / "features" / "kaldi" / "layers.py"
            try:
                src = path.read_text(encoding="utf-8")
            except OSError:
                src = ""
            if src.count(_LHOTSE_CONSTS) == 1 and "import lhotse" not in src and src.count("from lhotse") == 1:
                import types

                mod = types.ModuleType("anyphone_private_kaldi_layers")
                mod.__file__ = str(path)
                code = compile(src.replace(_LHOTSE_CONSTS, "EPSILON = 1e-10\nSeconds = float"), str(path), "exec")
                exec(code, mod.__dict__)  # noqa: S102  (lhotse's own file, two constants substituted)
                return mod.Wav2LogFilterBank
    from lhotse.features.kaldi.layers import Wav2LogFilterBank

    return Wav2LogFilterBank


def _fbank(waves: list[np.ndarray], device: torch.device) -> tuple[Tensor, Tensor]:
    """ZIPA batch fbank: waves zero-padded first, (N, T, 80) float32 with frames past each length set to 0,
    lengths (N,) = (samples + 80) // 160 (same as anyphone.data.fbank.compute_fbank)."""
    key = str(device)
    if key not in _FBANK_CACHE:
        _FBANK_CACHE[key] = _wav2logfbank_class()(**_FBANK_OPTIONS).to(device).eval()
    extractor = _FBANK_CACHE[key]
    lens = torch.tensor([len(w) for w in waves], dtype=torch.int64)
    audio = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(np.asarray(w, dtype=np.float32)) for w in waves],
                                            batch_first=True).to(device)
    feat_lens = (lens + 80) // 160
    feats = extractor(audio)[:, : int(feat_lens.max())]
    valid = torch.arange(feats.shape[1])[None, :] < feat_lens[:, None]
    feats = feats.masked_fill(~valid.to(device)[:, :, None], 0.0)
    return feats, feat_lens.to(device)


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


def _pick_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available on this machine; use 'cpu' or 'auto'")
    return dev


# --------------------------------------------------------------------------------------------------------
# loading


def _find_tokens(candidates: Iterable[Path]) -> Path | None:
    for c in candidates:
        if c is not None and c.is_file():
            return c
    return None


def _tokenizer_for(tokens: Path | None, vocab: int, where: str) -> IpaTokenizer:
    if tokens is not None:
        return IpaTokenizer.from_tokens_file(tokens)
    tok = IpaTokenizer.default()
    if tok.vocab_size != vocab:
        raise FileNotFoundError(f"{where}: no tokens.txt found and the model has {vocab} outputs, not the "
                                f"{tok.vocab_size} of the built-in ZIPA vocabulary; pass tokens=PATH")
    log.info("%s: no tokens.txt beside the model, using the built-in ZIPA tokens (127)", where)
    return tok


def _is_exp_dir(path: Path) -> bool:
    return path.is_dir() and any(re.match(r"^(checkpoint|epoch)-\d+\.pt$", p.name) for p in path.iterdir())


def _exp_dir_state_dict(exp: Path, iter: int | None, epoch: int | None, avg: int | None,
                        use_averaged_model: bool) -> tuple[dict[str, Tensor], str]:
    """icefall decode.py rules: --iter N/--epoch N with --avg K (and the running average kept in checkpoints).

    A checkpoint that is corrupt, or holds pickled objects other than tensors, gives one line naming it."""
    try:
        return _average_exp_dir(exp, iter, epoch, avg, use_averaged_model)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, TypeError, IndexError) as e:
        raise _unreadable_checkpoint(exp, iter or epoch, e) from None


def _unreadable_checkpoint(exp: Path, upto: int | None, e: BaseException) -> Exception:
    """The one-line error for a failed average: the first checkpoint (newest first, up to ``upto``) that does
    not load safely on its own, found by loading each one; else ``e`` in one line."""
    from anyphone.inference.hub import UnsafeCheckpointError, load_state_dict

    def number(p: Path) -> int:
        return int(p.stem.rsplit("-", 1)[-1])

    found = [p for p in exp.iterdir() if re.match(r"^(checkpoint|epoch)-\d+\.pt$", p.name)]
    for p in sorted((p for p in found if not upto or number(p) <= upto), key=number, reverse=True):
        try:
            load_state_dict(p)
        except (UnsafeCheckpointError, ValueError, FileNotFoundError) as problem:
            return problem
    detail = (e.args[0] if isinstance(e, KeyError) and e.args else str(e)).strip()
    return ValueError(f"{exp}: cannot average its checkpoints ({detail.splitlines()[0] if detail else type(e).__name__})")


def _average_exp_dir(exp: Path, iter: int | None, epoch: int | None, avg: int | None,
                     use_averaged_model: bool) -> tuple[dict[str, Tensor], str]:
    from anyphone.training import checkpoint as ckpt  # only this path needs the checkpoint helpers

    if iter and epoch:
        raise ValueError("give iter or epoch, not both")
    k = avg or 1
    if iter:
        if avg and avg > 1 and use_averaged_model:
            return ckpt.average_checkpoints_with_averaged_model(exp, iter, k), f"iter-{iter}-avg-{k}"
        names = [p for p in ckpt.find_checkpoints(exp, iteration=-iter)]
        if not names or names[0].name != f"checkpoint-{iter}.pt":
            raise FileNotFoundError(f"{exp / f'checkpoint-{iter}.pt'}: not found (iter={iter})")
        if len(names) < k:
            raise FileNotFoundError(f"{exp}: avg={k} needs {k} checkpoints up to iter {iter}, found {len(names)}")
        return ckpt.average_checkpoints(names[:k]), f"iter-{iter}-avg-{k}"
    if epoch:
        if avg and avg > 1 and use_averaged_model:
            return ckpt.average_epochs_with_averaged_model(exp, epoch, k), f"epoch-{epoch}-avg-{k}"
        paths = [exp / f"epoch-{e}.pt" for e in range(epoch - k + 1, epoch + 1)]
        return ckpt.average_checkpoints(paths), f"epoch-{epoch}-avg-{k}"
    latest = ckpt.latest_checkpoint(exp)
    if latest is None:
        raise FileNotFoundError(f"{exp}: no readable checkpoint-N.pt or epoch-N.pt")
    log.info("%s: using %s (pass iter=/epoch= with avg= to average checkpoints)", exp, latest.name)
    return ckpt.average_checkpoints([latest]), latest.stem


def _read_json_config(*paths: Path) -> dict[str, Any] | None:
    for p in paths:
        if p.is_file():
            try:
                d = json.loads(p.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
            return d.get("model", d) if isinstance(d, dict) else None
    return None


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    device: str = "cpu",
    iter: int | None = None,  # icefall's --iter name
    avg: int | None = None,
    *,
    epoch: int | None = None,
    use_averaged_model: bool = True,
    tokens: str | os.PathLike | None = None,
    config: ZipformerConfig | Mapping[str, Any] | str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 8,
    chunk_seconds: float = 30.0,
    overlap_seconds: float = 2.0,
) -> PhoneRecognizer:
    """Load a phone recogniser from a published name, a ``.pth`` state_dict, a recipe exp dir or ONNX files.

    Args:
        name_or_path:
            * a published ZIPA model (``anyphone list-models``), e.g. ``zipa-cr-small-500k``, or a Hub repo id:
              taken from the Hugging Face cache, downloaded on first use (fails at once when HF_HUB_OFFLINE=1);
            * a ``.pth``/``.pt`` state_dict (ZIPA's averaged checkpoints, or ``{'model': sd}``), with
              ``tokens.txt`` beside it (or ``tokens=``; else the built-in ZIPA tokens when the vocab is 127);
            * a recipe exp dir holding ``checkpoint-N.pt``/``epoch-N.pt``: ``iter``/``epoch`` with ``avg`` as in
              icefall's decode.py (default: the newest checkpoint);
            * a ``.onnx`` file or a folder of exported ONNX models (delegated to anyphone.inference.onnx_runtime).
        device: "cpu", "cuda[:N]" or "auto".
        tokens: tokens.txt to use instead of the one found next to the model.
        config: model configuration (ZipformerConfig, dict or preset name); normally inferred from the tensors
            (family from the head keys, size from the shapes) or read from a ``config.json`` beside the model.
    Raises:
        anyphone.inference.hub.ModelNotAvailableError: unknown name, or not cached while offline.
        ValueError: a checkpoint that is not a ZIPA/anyphone Zipformer, or tokens that do not fit it.
    """
    from anyphone.inference import hub

    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    tok_path = Path(tokens).expanduser() if tokens is not None else None
    if tok_path is not None and not tok_path.is_file():
        raise FileNotFoundError(f"{tok_path}: tokens file not found")
    if text.endswith(".onnx") or (path.is_dir() and any(path.glob("*.onnx")) and not any(path.glob("*.pt*"))):
        return _load_onnx(path, tok_path, device, batch_size, chunk_seconds, overlap_seconds)

    label = text
    json_cfg = None
    if _is_exp_dir(path):
        sd, tag = _exp_dir_state_dict(path, iter, epoch, avg, use_averaged_model)
        label = f"{path}/{tag}"
        source_file = path / (f"checkpoint-{iter}.pt" if iter else f"epoch-{epoch}.pt" if epoch else f"{tag}.pt")
        tok_path = tok_path or _find_tokens([path / "tokens.txt", path.parent / "tokens.txt",
                                             path.parent / "ipa_simplified" / "tokens.txt",
                                             path.parent / "data" / "ipa_simplified" / "tokens.txt"])
        json_cfg = _read_json_config(path / "config.json", path / "model_config.json")
    else:
        if iter or epoch:
            raise ValueError(f"{text}: iter/epoch/avg need a recipe exp dir with checkpoint-N.pt files")
        files = hub.resolve_model(text, revision=revision, cache_dir=cache_dir)
        sd = hub.load_state_dict(files.checkpoint)
        source_file = files.checkpoint
        tok_path = tok_path or files.tokens
        label = files.name or text
        json_cfg = _read_json_config(files.checkpoint.with_suffix(".json"), files.checkpoint.parent / "config.json")
    try:
        family, cfg, use_ctc = config_from_state_dict(sd, config if config is not None else json_cfg)
    except ValueError as e:
        detail = str(e).removesuffix("; pass config=")
        asked = (config if isinstance(config, str) else getattr(config, "name", "given")) if config is not None \
            else ("config.json" if json_cfg is not None else None)
        raise CheckpointShapeError(source_file, detail, asked) from None
    model = _build(family, cfg, use_ctc)
    model.load_state_dict(sd, strict=True)
    tokenizer = _tokenizer_for(tok_path, _head_sizes(sd, family)["vocab_size"], label)
    log.info("loaded %s: %s, %s config, %s parameters", label, family, cfg.name,
             f"{sum(p.numel() for p in model.parameters()):,}")
    return PhoneRecognizer(model, tokenizer, family, device=device, batch_size=batch_size,
                           chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds, name=label)


def _pick_onnx(folder: Path, stem: str) -> Path | None:
    """``stem.onnx`` if present, else the first ``stem*.onnx`` (e.g. ``model.int8.onnx``)."""
    plain = folder / f"{stem}.onnx"
    if plain.is_file():
        return plain
    found = sorted(folder.glob(f"{stem}*.onnx"))
    return found[0] if found else None


def _load_onnx(path: Path, tokens: Path | None, device: str, batch_size: int, chunk_seconds: float,
               overlap_seconds: float) -> PhoneRecognizer:
    """Exported models (anyphone.export.onnx) run by anyphone.inference.onnx_runtime's sessions, with the same
    options and output formats as the torch models."""
    try:
        from anyphone.inference import onnx_runtime
    except ImportError as e:
        raise ImportError(f"{path}: ONNX models need anyphone.inference.onnx_runtime and onnxruntime ({e})") from e
    from anyphone.text.tokenizer import default_lang_dir

    provider = "cpu" if str(device) == "cpu" else ("cuda" if str(device).startswith("cuda") else "auto")
    if path.is_dir():
        encoder = _pick_onnx(path, "encoder")
        if encoder is not None and _pick_onnx(path, "joiner") is not None:
            family, target, folder = "transducer", path, path
            suffix = encoder.name[len("encoder"):]
        else:
            target = _pick_onnx(path, "model")
            if target is None:
                raise FileNotFoundError(f"{path}: expected model*.onnx (CTC) or encoder/decoder/joiner*.onnx")
            family, folder, suffix = "crctc", path, ""
    else:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: ONNX model not found")
        family, target, folder, suffix = "crctc", path, path.parent, ""
    tok = tokens or _find_tokens([folder / "tokens.txt"]) or default_lang_dir() / "tokens.txt"
    if family == "transducer":
        backend = onnx_runtime.OnnxTransducerRecognizer(target, tokens_path=tok, suffix=suffix, provider=provider)
    else:
        backend = onnx_runtime.OnnxCtcRecognizer(target, tokens_path=tok, provider=provider)
    return _OnnxRecognizer(backend, family, IpaTokenizer.from_tokens_file(tok), batch_size=batch_size,
                           chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds, name=str(path))


class _OnnxRecognizer(PhoneRecognizer):
    """PhoneRecognizer whose network runs in ONNX Runtime (features and decoding as for torch models)."""

    def __init__(self, backend: Any, family: str, tokenizer: IpaTokenizer, **kw: Any) -> None:
        super().__init__(None, tokenizer, family, device="cpu", **kw)
        self.backend = backend
        if family == "transducer":
            self._context_size = int(getattr(backend, "context_size", 2))

    def _ctc_log_probs(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        lp, lens = self.backend.log_probs(feats.cpu().numpy(), feat_lens.cpu().numpy())
        return torch.from_numpy(np.asarray(lp, dtype=np.float32)), torch.from_numpy(np.asarray(lens, dtype=np.int64))

    def _transducer_parts(self, feats: Tensor, feat_lens: Tensor):
        b = self.backend
        enc, lens = b.encode(feats.cpu().numpy(), feat_lens.cpu().numpy())

        def joiner(e: Tensor, d: Tensor) -> Tensor:
            feed = {"encoder_out": np.ascontiguousarray(e.numpy(), dtype=np.float32),
                    "decoder_out": np.ascontiguousarray(d.numpy(), dtype=np.float32)}
            return torch.from_numpy(b.joiner.run(None, feed)[0])

        def decoder(ids: Tensor) -> Tensor:
            return torch.from_numpy(b.decoder.run(None, {"y": np.ascontiguousarray(ids.numpy(), dtype=np.int64)})[0])

        return (torch.from_numpy(np.asarray(enc, dtype=np.float32)), torch.from_numpy(np.asarray(lens, dtype=np.int64)),
                joiner, decoder)
