"""Phone recognition with exported ONNX models, without torch.

Needs only numpy, onnxruntime and kaldi-native-fbank (plus soundfile to read files, and scipy only to
resample audio that is not 16 kHz).  Nothing on this path imports torch; the test suite checks it.

    from anyphone.inference.onnx_runtime import OnnxCtcRecognizer, OnnxTransducerRecognizer

    rec = OnnxCtcRecognizer("exp/model.int8.onnx", "exp/tokens.txt")
    rec.recognize([wave_16k_float32])                  # -> ["həloʊ"]

    rec = OnnxTransducerRecognizer("exp", "exp/tokens.txt", suffix="-epoch-30-avg-5.int8.onnx")
    # reads exp/encoder-epoch-30-avg-5.int8.onnx, exp/decoder-..., exp/joiner-...

Features reproduce ZIPA's batched front end (lhotse ``Fbank().extract_batch`` + ``pad_sequence``):
waves are zero-padded to the longest one *before* the fbank (which changes the last two frames of
shorter items, exactly as in ZIPA), each item keeps ``round(num_samples / 160)`` frames, and the
feature batch is padded with 0.0.  Decoding is greedy: CTC argmax/collapse/drop blank, or transducer
greedy search (:mod:`anyphone.decoding.greedy_loop`, the loop of the PyTorch models too) with at most one
symbol per frame and initial context ``[-1, ..., -1, blank]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from anyphone.data.fbank_options import NUM_MEL_BINS, SAMPLE_RATE, num_frames
from anyphone.decoding.greedy_loop import greedy_transducer_search
from anyphone.text.tokenizer import IpaTokenizer

__all__ = [
    "OnnxCtcRecognizer",
    "OnnxTransducerRecognizer",
    "TokenTable",
    "ctc_greedy_ids",
    "fbank_batch",
    "make_session",
    "num_frames",
    "onnx_steps",
    "read_model_metadata",
]


# ---------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------


class TokenTable(IpaTokenizer):
    """An exported model's ``tokens.txt`` (``<symbol> <id>`` per line): :class:`IpaTokenizer`, whose ``decode``
    drops <blk>, <sos/eos>, <unk> and ``▁``; ``from_file`` is the runtime's name for ``from_tokens_file``."""

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TokenTable:
        return cls.from_tokens_file(path)


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------


def _fbank_options():
    import kaldi_native_fbank as knf

    from anyphone.data.fbank_options import ZIPA_FBANK_OPTIONS as z  # the PyTorch front end's numbers

    o = knf.FbankOptions()
    fo = o.frame_opts
    fo.samp_freq = z["sampling_rate"]
    fo.frame_shift_ms = 1000.0 * z["frame_shift"]
    fo.frame_length_ms = 1000.0 * z["frame_length"]
    fo.dither = z["dither"]
    fo.preemph_coeff = z["preemph_coeff"]
    fo.remove_dc_offset = z["remove_dc_offset"]
    fo.window_type = z["window_type"]
    fo.round_to_power_of_two = z["round_to_power_of_two"]
    fo.snip_edges = z["snip_edges"]
    mo = o.mel_opts
    mo.num_bins = z["num_filters"]
    mo.low_freq = z["low_freq"]
    mo.high_freq = z["high_freq"]
    # Kaldi's mel banks (1127 ln(1 + f/700), unnormalised triangles) = lhotse's torchaudio-compatible ones
    mo.is_librosa = False
    mo.htk_mode = False
    o.use_energy = z["use_energy"]
    o.use_power = True
    o.use_log_fbank = True
    # log(max(energy, float32 eps)), as lhotse does
    o.use_log_floor = True
    return o


def _fbank_one(wave: np.ndarray, opts) -> np.ndarray:
    import kaldi_native_fbank as knf

    f = knf.OnlineFbank(opts)
    f.accept_waveform(SAMPLE_RATE, wave.tolist())
    f.input_finished()
    n = f.num_frames_ready
    out = np.empty((n, NUM_MEL_BINS), dtype=np.float32)
    for i in range(n):
        out[i] = f.get_frame(i)
    return out


def fbank_batch(waves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """16 kHz float waves in [-1, 1] -> (features (N, T, 80) float32 zero-padded, lengths (N,) int64).

    As lhotse's ``extract_batch``: every wave is zero-padded to the longest before the fbank, then
    item n keeps its first ``num_frames(len(wave_n))`` frames.
    """
    if len(waves) == 0:
        raise ValueError("fbank_batch: got no waves, expected at least one")
    waves = [np.asarray(w, dtype=np.float32).reshape(-1) for w in waves]
    longest = max(w.size for w in waves)
    lens = np.array([num_frames(w.size) for w in waves], dtype=np.int64)
    opts = _fbank_options()
    feats = np.zeros((len(waves), int(lens.max()), NUM_MEL_BINS), dtype=np.float32)
    for i, w in enumerate(waves):
        if w.size < longest:
            w = np.concatenate((w, np.zeros(longest - w.size, np.float32)))
        f = _fbank_one(w, opts)
        feats[i, : lens[i]] = f[: lens[i]]
    return feats, lens


def _resample(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    if sample_rate == SAMPLE_RATE:
        return wave
    try:
        from math import gcd

        from scipy.signal import resample_poly
    except ImportError as e:  # pragma: no cover - scipy is a lhotse dependency here
        raise ValueError(f"audio at {sample_rate} Hz needs scipy to resample to {SAMPLE_RATE} Hz; "
                         "install scipy or pass 16 kHz audio") from e
    g = gcd(int(sample_rate), SAMPLE_RATE)
    return resample_poly(wave, SAMPLE_RATE // g, int(sample_rate) // g).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------------------------


def make_session(path: str | os.PathLike, provider: str = "auto", num_threads: int | None = None,
                 fp16: bool | None = None):
    """onnxruntime InferenceSession for ``path``.

    provider: "cpu", "cuda" or "auto" (CUDA when onnxruntime has it, else CPU).
    num_threads: intra-op threads (None: onnxruntime's default).
    fp16: the model is an fp16 export (None: guess from "fp16" in the file name).  onnxruntime 1.2x's
      NCHWc layout pass crashes (SIGSEGV) on these graphs on CPU, so it is turned off for them (it
      speeds up the fp32 models' 2-D convolutions by ~7 %).
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX model not found")
    available = ort.get_available_providers()
    if provider == "cpu":
        providers = ["CPUExecutionProvider"]
    elif provider == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ValueError(f"provider 'cuda': onnxruntime here has only {available}")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    elif provider == "auto":
        providers = (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + [
            "CPUExecutionProvider"
        ]
    else:
        raise ValueError(f"provider {provider!r}, expected 'cpu', 'cuda' or 'auto'")
    so = ort.SessionOptions()
    if num_threads:
        so.intra_op_num_threads = int(num_threads)
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if fp16 is None:
        fp16 = "fp16" in path.name
    disabled = ["NchwcTransformer"] if fp16 else []
    try:
        return ort.InferenceSession(str(path), so, providers=providers, disabled_optimizers=disabled)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime's errors (InvalidProtobuf, Fail, ...) derive from Exception
        # "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from X failed:Protobuf parsing failed."
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        detail = detail.rsplit(" failed:", 1)[-1].strip() or detail
        raise ValueError(f"{path}: not a readable ONNX model ({detail}); export it again with export.py "
                         "--onnx 1") from None


def read_model_metadata(session) -> dict[str, str]:
    """The custom metadata of a session's model (written by anyphone.export.onnx)."""
    return dict(session.get_modelmeta().custom_metadata_map)


def _meta_int(meta: dict[str, str], key: str, default: int, where: str) -> int:
    v = meta.get(key)
    if v is None:
        return default
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"{where}: metadata {key}={v!r}, expected an integer") from None


def ctc_greedy_ids(log_probs: np.ndarray, lens: Sequence[int], blank_id: int = 0) -> list[list[int]]:
    """(N, T, V) scores, valid lengths -> per utterance: argmax, collapse repeats, drop blank."""
    out = []
    best = log_probs.argmax(axis=-1)
    for n, length in enumerate(lens):
        b = best[n, : int(length)]
        if b.size == 0:
            out.append([])
            continue
        keep = np.ones(b.size, dtype=bool)
        keep[1:] = b[1:] != b[:-1]
        out.append([int(t) for t in b[keep] if t != blank_id])
    return out


def onnx_steps(decoder_session, joiner_session) -> tuple[Callable[[np.ndarray], np.ndarray],
                                                         Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """The (decoder, joiner) steps of :func:`anyphone.decoding.greedy_loop.greedy_transducer_search` for exported
    ``decoder``/``joiner`` sessions: contexts (E, context_size) int64 -> projected decoder output (E, J), and
    projected encoder frames, decoder outputs (A, J) -> logits (A, V)."""

    def decoder(contexts: np.ndarray) -> np.ndarray:
        return decoder_session.run(None, {"y": np.ascontiguousarray(contexts, dtype=np.int64)})[0]

    def joiner(enc: np.ndarray, dec: np.ndarray) -> np.ndarray:
        return joiner_session.run(None, {"encoder_out": np.ascontiguousarray(enc, dtype=np.float32),
                                         "decoder_out": np.ascontiguousarray(dec, dtype=np.float32)})[0]

    return decoder, joiner


def _prepare_waves(waves: Sequence[np.ndarray], sample_rate: int) -> list[np.ndarray]:
    if isinstance(waves, np.ndarray) and waves.ndim == 1:
        raise TypeError("recognize: pass a list of 1-D waves, not one wave")
    out = []
    for i, w in enumerate(waves):
        w = np.asarray(w, dtype=np.float32)
        if w.ndim != 1:
            raise ValueError(f"recognize: wave {i} has shape {w.shape}, expected (num_samples,) mono")
        out.append(_resample(w, sample_rate))
    return out


# ---------------------------------------------------------------------------------------------
# Recognizers
# ---------------------------------------------------------------------------------------------


class OnnxCtcRecognizer:
    """Greedy CTC recognition with ``model.onnx`` from :func:`anyphone.export.onnx.export_ctc_model`.

    tokens_path: tokens.txt; default: ``tokens.txt`` next to the model.
    """

    def __init__(self, model_path: str | os.PathLike, tokens_path: str | os.PathLike | None = None,
                 provider: str = "auto", num_threads: int | None = None) -> None:
        self.model_path = Path(model_path)
        self.session = make_session(self.model_path, provider, num_threads)
        self.meta = read_model_metadata(self.session)
        mt = self.meta.get("model_type", "ctc")
        if mt != "ctc":
            raise ValueError(f"{self.model_path}: model_type={mt!r}, expected 'ctc' (use OnnxTransducerRecognizer)")
        self.tokens = TokenTable.from_file(tokens_path or self.model_path.parent / "tokens.txt")
        self.blank_id = _meta_int(self.meta, "blank_id", 0, str(self.model_path))
        vocab = _meta_int(self.meta, "vocab_size", len(self.tokens), str(self.model_path))
        if vocab != len(self.tokens):
            raise ValueError(f"{self.tokens.source}: {len(self.tokens)} tokens, expected {vocab} "
                             f"(vocab_size of {self.model_path})")

    def log_probs(self, x: np.ndarray, x_lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x (N, T, 80) float32 zero-padded, x_lens (N,) -> (log_probs (N, T', V), lens (N,))."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        x_lens = np.asarray(x_lens, dtype=np.int64)
        lp, lens = self.session.run(None, {"x": x, "x_lens": x_lens})
        return lp, lens

    def recognize_ids(self, waves: Sequence[np.ndarray], sample_rate: int = SAMPLE_RATE
                      ) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
        """-> (greedy ids per wave, log_probs (N, T', V), lens (N,))."""
        x, x_lens = fbank_batch(_prepare_waves(waves, sample_rate))
        lp, lens = self.log_probs(x, x_lens)
        return ctc_greedy_ids(lp, lens, self.blank_id), lp, lens

    def recognize(self, waves: Sequence[np.ndarray], sample_rate: int = SAMPLE_RATE,
                  return_log_probs: bool = False):
        """list of mono float waves (in [-1, 1]) -> list of IPA strings.

        With ``return_log_probs`` also returns each wave's log-probs (T'_n, V) (valid frames only).
        """
        ids, lp, lens = self.recognize_ids(waves, sample_rate)
        texts = [self.tokens.decode(h) for h in ids]
        if return_log_probs:
            return texts, [lp[n, : int(lens[n])] for n in range(len(texts))]
        return texts


class OnnxTransducerRecognizer:
    """Greedy transducer recognition with ``encoder{suffix}``, ``decoder{suffix}``, ``joiner{suffix}`` in
    ``model_dir`` (from :func:`anyphone.export.onnx.export_transducer_model`), e.g. suffix ".int8.onnx"
    or "-epoch-30-avg-5.onnx".  tokens_path default: ``model_dir/tokens.txt``.
    """

    def __init__(self, model_dir: str | os.PathLike, tokens_path: str | os.PathLike | None = None,
                 suffix: str = ".onnx", provider: str = "auto", num_threads: int | None = None) -> None:
        d = Path(model_dir)
        self.encoder = make_session(d / f"encoder{suffix}", provider, num_threads)
        self.decoder = make_session(d / f"decoder{suffix}", provider, num_threads)
        self.joiner = make_session(d / f"joiner{suffix}", provider, num_threads)
        self.meta = read_model_metadata(self.encoder)
        where = str(d / f"encoder{suffix}")
        mt = self.meta.get("model_type", "transducer")
        if mt != "transducer":
            raise ValueError(f"{where}: model_type={mt!r}, expected 'transducer'")
        self.context_size = _meta_int(read_model_metadata(self.decoder), "context_size", 2, where)
        self.blank_id = _meta_int(self.meta, "blank_id", 0, where)
        self.tokens = TokenTable.from_file(tokens_path or d / "tokens.txt")
        vocab = _meta_int(self.meta, "vocab_size", len(self.tokens), where)
        if vocab != len(self.tokens):
            raise ValueError(f"{self.tokens.source}: {len(self.tokens)} tokens, expected {vocab} "
                             f"(vocab_size of {where})")

    def encode(self, x: np.ndarray, x_lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x (N, T, 80), x_lens (N,) -> (projected encoder_out (N, T', J), lens (N,))."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        return tuple(self.encoder.run(None, {"x": x, "x_lens": np.asarray(x_lens, dtype=np.int64)}))

    def greedy_search(self, encoder_out: np.ndarray, lens: Sequence[int], max_sym_per_frame: int = 1,
                      blank_penalty: float = 0.0) -> list[list[int]]:
        """Batch greedy search (:func:`anyphone.decoding.greedy_loop.greedy_transducer_search`, the loop of the
        PyTorch models too); by default ZIPA's ``greedy_search_batch``: one symbol per frame, no blank penalty.
        <unk> is an ordinary output.  encoder_out is the projected encoder output (N, T', J)."""
        decoder, joiner = onnx_steps(self.decoder, self.joiner)
        out = greedy_transducer_search(decoder, joiner, encoder_out, lens, blank_id=self.blank_id,
                                       context_size=self.context_size, max_sym_per_frame=max_sym_per_frame,
                                       blank_penalty=blank_penalty)
        return [h.tokens for h in out.hyps]

    def recognize_ids(self, waves: Sequence[np.ndarray], sample_rate: int = SAMPLE_RATE) -> list[list[int]]:
        x, x_lens = fbank_batch(_prepare_waves(waves, sample_rate))
        enc, lens = self.encode(x, x_lens)
        return self.greedy_search(enc, lens)

    def recognize(self, waves: Sequence[np.ndarray], sample_rate: int = SAMPLE_RATE) -> list[str]:
        """list of mono float waves (in [-1, 1]) -> list of IPA strings (greedy search)."""
        return [self.tokens.decode(h) for h in self.recognize_ids(waves, sample_rate)]
