"""In-process eSpeak NG synthesis: audio and IPA from one and the same synthesis call.

The shared library and its data come from the PyPI package ``espeakng-loader``; no system install and no
command-line binary is used.  The library is loaded once per process through ctypes and initialised in
``AUDIO_OUTPUT_SYNCHRONOUS`` mode: ``espeak_Synth`` returns only when the whole text is spoken, and during
that call eSpeak hands us

* the int16 samples (22050 Hz) through the synth callback, and
* for every clause, the phoneme string it is about to speak through the phoneme callback. With the
  phoneme trace mode set to IPA (``espeak_SetPhonemeTrace(espeakPHONEMES_IPA, ...)``) that string is IPA,
  so the transcript is exactly what the audio says (eSpeak's own translation, not a second G2P pass).

eSpeak keeps global state, so everything here goes through one per-process engine guarded by a lock.
Each worker process of a multiprocessing pool gets its own engine the first time it synthesises.

Example::

    syn = EspeakSynthesizer("de", variant="m3", rate=190, pitch=40)
    audio, ipa = syn.synthesize("Guten Tag")   # audio: (S,) float32 at 16 kHz; ipa: "ɡˈuːtən tˈɑːk"
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "ESPEAK_SAMPLE_RATE",
    "TARGET_SAMPLE_RATE",
    "EspeakSynthesizer",
    "espeak_data_dir",
    "list_variants",
    "list_voices",
    "resample_to_16k",
    "reset_engine",
]

ESPEAK_SAMPLE_RATE = 22050
TARGET_SAMPLE_RATE = 16000

# Constants from eSpeak NG's public header speak_lib.h (API revision 12).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PHONEMES_IPA = 0x02
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7
_EE_OK = 0

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_PhonemeCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p)


def espeak_data_dir() -> Path:
    """Return the ``espeak-ng-data`` directory shipped by ``espeakng-loader``."""
    import espeakng_loader

    return Path(espeakng_loader.get_data_path())


@lru_cache(maxsize=1)
def list_variants() -> tuple[str, ...]:
    """Names of the voice variants (files in ``espeak-ng-data/voices/!v``), usable as ``lang+variant``."""
    vdir = espeak_data_dir() / "voices" / "!v"
    if not vdir.is_dir():
        raise FileNotFoundError(f"{vdir}: eSpeak variant folder not found; expected it in espeakng-loader's data")
    # Names with spaces cannot be passed in "lang+variant" form.
    return tuple(sorted(p.name for p in vdir.iterdir() if p.is_file() and " " not in p.name))


@lru_cache(maxsize=1)
def list_voices() -> tuple[str, ...]:
    """Language voice identifiers known to eSpeak (file names under ``espeak-ng-data/lang``), e.g. ``en-US``."""
    ldir = espeak_data_dir() / "lang"
    return tuple(sorted(p.name for p in ldir.rglob("*") if p.is_file()))


@lru_cache(maxsize=4)
def _resample_filter(up: int, down: int) -> np.ndarray:
    import scipy.signal

    # Kaiser-windowed sinc low-pass at the new Nyquist (the same design resample_poly uses by default),
    # computed once: designing it is more expensive than applying it to a short utterance.
    max_rate = max(up, down)
    half_len = 10 * max_rate
    h = scipy.signal.firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0))
    return h.astype(np.float32)  # resample_poly applies the gain of `up` itself


def resample_to_16k(samples: np.ndarray, sample_rate: int = ESPEAK_SAMPLE_RATE) -> np.ndarray:
    """Polyphase-resample mono audio to 16 kHz.

    Args:
        samples: (S,) int16 or float audio.
        sample_rate: its rate in Hz.
    Returns:
        (S * 16000 / sample_rate,) float32 in [-1, 1] when the input was int16.
    """
    import scipy.signal

    x = np.asarray(samples)
    if x.dtype == np.int16:
        x = x.astype(np.float32) / 32768.0
    else:
        x = x.astype(np.float32, copy=False)
    if sample_rate == TARGET_SAMPLE_RATE:
        return x
    g = np.gcd(sample_rate, TARGET_SAMPLE_RATE)
    up, down = TARGET_SAMPLE_RATE // g, sample_rate // g
    y = scipy.signal.resample_poly(x, up, down, window=_resample_filter(up, down))
    return y.astype(np.float32, copy=False)


_COPY_COUNTER = itertools.count()


def _private_library_copy(lib_path: str) -> str:
    """Copy the .so under a unique name: dlopen of a new path maps a new instance with fresh static state.

    The copy goes into a fresh folder from ``tempfile.mkdtemp`` (unpredictable name, created with
    ``O_EXCL`` semantics and mode 0700) and is created with ``O_CREAT | O_EXCL | O_NOFOLLOW``, so nothing
    another user planted in /tmp (a folder or a symlink under a guessable name) is followed or overwritten,
    and no one else can swap the library before it is loaded. The caller removes file and folder.
    """
    tmp_dir = tempfile.mkdtemp(prefix="anyphone-espeak-")
    dst = os.path.join(tmp_dir, f"libespeak-ng-{next(_COPY_COUNTER)}.so")
    try:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o700)
        with os.fdopen(fd, "wb") as out, open(lib_path, "rb") as src:
            shutil.copyfileobj(src, out)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return dst


class _Engine:
    """One initialised eSpeak NG library instance plus the buffers its callbacks fill.

    With ``private=True`` the library is loaded from a private copy of the .so, so its static variables
    start from their initial values (used by :func:`reset_engine`).
    """

    def __init__(self, private: bool = False) -> None:
        import espeakng_loader

        self.pid = os.getpid()
        self.lock = threading.Lock()
        lib_path = espeakng_loader.get_library_path()
        load_path = _private_library_copy(lib_path) if private else lib_path
        try:
            lib = ctypes.CDLL(load_path)
        except OSError as e:
            raise OSError(f"{lib_path}: cannot load eSpeak NG library ({e}); expected espeakng-loader's .so") from e
        finally:
            if private:
                os.unlink(load_path)  # the mapping stays valid; nothing is left behind in /tmp
                try:
                    os.rmdir(os.path.dirname(load_path))
                except OSError:
                    pass
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_SetPhonemeTrace.argtypes = [ctypes.c_int, ctypes.c_void_p]
        lib.espeak_SetPhonemeTrace.restype = None
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetPhonemeCallback.argtypes = [_PhonemeCallback]
        lib.espeak_SetPhonemeCallback.restype = None
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        # eSpeak seeds its own noise generator from time(NULL) in espeak_Initialize; this resets it.
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None
        self.lib = lib

        data_dir = espeakng_loader.get_data_path()
        # buflength 200 ms: fewer callback round trips into Python than the 60 ms default.
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 200, data_dir.encode(), 0)
        if rate <= 0:
            raise RuntimeError(f"{data_dir}: espeak_Initialize returned {rate}; expected a sample rate in Hz")
        self.sample_rate = rate

        self.chunks: list[np.ndarray] = []
        self.clauses: list[str] = []

        def on_audio(wav, n, events):
            if n > 0 and wav:
                self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        def on_phonemes(text):
            if text:
                self.clauses.append(text.decode("utf-8", errors="replace"))
            return 0

        # Keep references: ctypes callbacks must outlive every call that may invoke them.
        self._audio_cb = _SynthCallback(on_audio)
        self._phon_cb = _PhonemeCallback(on_phonemes)
        lib.espeak_SetSynthCallback(self._audio_cb)
        lib.espeak_SetPhonemeCallback(self._phon_cb)

        # The phoneme callback gets the string in the trace's mode; IPA mode also prints it to the trace
        # stream, which we send to /dev/null (default would be stdout).
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.fopen.restype = ctypes.c_void_p
        self._devnull = libc.fopen(os.devnull.encode(), b"w")
        if not self._devnull:
            raise OSError(f"{os.devnull}: fopen failed; needed as eSpeak's phoneme trace stream")
        lib.espeak_SetPhonemeTrace(_PHONEMES_IPA, self._devnull)
        self._libc = libc
        libc.srand.argtypes = [ctypes.c_uint]
        libc.srand.restype = None
        self.current_voice: str | None = None

    def close(self) -> None:
        """Terminate eSpeak and unload this library instance (only for private copies)."""
        import _ctypes

        with self.lock:
            self.lib.espeak_Terminate()
            self._libc.fclose.argtypes = [ctypes.c_void_p]
            self._libc.fclose(self._devnull)
            _ctypes.dlclose(self.lib._handle)

    def _select(self, voice: str) -> None:
        if voice != self.current_voice:
            err = self.lib.espeak_SetVoiceByName(voice.encode())
            if err != _EE_OK:
                self.current_voice = None
                raise ValueError(f"eSpeak voice {voice!r}: espeak_SetVoiceByName returned {err}; "
                                 f"expected a language from list_voices() with an optional +variant")
            self.current_voice = voice

    def phonemize(self, voice: str, text: str) -> str:
        with self.lock:
            self._select(voice)
            buf = ctypes.create_string_buffer(text.encode("utf-8"))
            ptr = ctypes.c_void_p(ctypes.addressof(buf))
            parts = []
            # Each call translates up to the next clause end and advances ptr; NULL means the text is done.
            while ptr.value:
                out = self.lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, _PHONEMES_IPA)
                if out:
                    parts.append(out.decode("utf-8", errors="replace").strip())
            return " ".join(p for p in parts if p)

    def synth(
        self, voice: str, params: tuple[int, int, int, int], text: str, seed: int | None = None
    ) -> tuple[np.ndarray, str]:
        with self.lock:
            self._select(voice)
            if seed is not None:
                # eSpeak draws noise (breath, voice roughness) from its own generator and from libc rand().
                self.lib.espeak_ng_SetRandSeed(seed & 0x7FFFFFFF)
                self._libc.srand(seed & 0xFFFFFFFF)
            rate, pitch, prange, gap = params
            self.lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
            self.lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
            self.lib.espeak_SetParameter(_PARAM_RANGE, prange, 0)
            self.lib.espeak_SetParameter(_PARAM_WORDGAP, gap, 0)
            self.lib.espeak_SetParameter(_PARAM_VOLUME, 100, 0)
            self.chunks = []
            self.clauses = []
            data = text.encode("utf-8")
            err = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if err != _EE_OK:
                raise RuntimeError(f"eSpeak voice {voice!r}: espeak_Synth returned {err} for text {text[:60]!r}")
            audio = np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.int16)
            ipa = " ".join(c.strip() for c in self.clauses if c.strip())
            self.chunks = []
            self.clauses = []
        return audio, ipa


_ENGINE: _Engine | None = None
_ENGINE_LOCK = threading.Lock()
_ENGINE_IS_PRIVATE = False


def reset_engine() -> None:
    """Start the next synthesis from eSpeak's initial state.

    eSpeak NG keeps static state between calls (e.g. the pitch-flutter phase in its wave generator), so
    one utterance's samples depend on what the process synthesised before.  This loads a fresh instance
    of the library (a private copy of the .so, a few ms), which makes a fixed sequence of
    ``synthesize(..., seed=...)`` calls reproducible whatever ran earlier in the process.
    """
    global _ENGINE, _ENGINE_IS_PRIVATE
    with _ENGINE_LOCK:
        old, was_private = _ENGINE, _ENGINE_IS_PRIVATE
        _ENGINE = _Engine(private=True)
        _ENGINE_IS_PRIVATE = True
        if old is not None and was_private and old.pid == os.getpid():
            old.close()


def _engine() -> _Engine:
    global _ENGINE
    with _ENGINE_LOCK:
        # A forked child inherits a usable copy (synchronous mode runs no threads), so one initialisation
        # per process is enough; spawned workers start with _ENGINE = None.
        if _ENGINE is None:
            _ENGINE = _Engine()
        return _ENGINE


@dataclass
class EspeakSynthesizer:
    """One eSpeak voice configuration.

    Args:
        lang: eSpeak language voice, e.g. ``en``, ``en-US``, ``cmn``, ``pt-BR``.
        variant: voice variant from :func:`list_variants` (``m3``, ``f2``, ``klatt``, ...) or None.
        rate: speaking rate in words per minute (eSpeak accepts 80-450; 175 is normal).
        pitch: base pitch 0-100 (50 normal).
        pitch_range: pitch range 0-100 (0 monotone, 50 normal).
        word_gap: extra pause between words, in units of 10 ms.

    eSpeak seeds its noise generator from the clock and keeps static state between calls, so for
    bit-identical audio pass ``seed=`` and call :func:`reset_engine` before a fixed sequence of calls.
    """

    lang: str
    variant: str | None = None
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50
    word_gap: int = 0

    @property
    def voice(self) -> str:
        """The eSpeak voice name, ``lang`` or ``lang+variant``."""
        return f"{self.lang}+{self.variant}" if self.variant else self.lang

    def synthesize_raw(self, text: str, seed: int | None = None) -> tuple[np.ndarray, str]:
        """Synthesise ``text``; return ((S,) int16 audio at 22050 Hz, raw eSpeak IPA with clauses joined by
        spaces).  ``seed`` seeds eSpeak's noise source for this call (see :func:`reset_engine`)."""
        params = (int(self.rate), int(self.pitch), int(self.pitch_range), int(self.word_gap))
        return _engine().synth(self.voice, params, text, seed)

    def phonemize(self, text: str) -> str:
        """Raw eSpeak IPA of ``text`` without synthesising audio (``espeak_TextToPhonemes``; same
        translation as :meth:`synthesize` gives, used to vet vocabulary cheaply)."""
        return _engine().phonemize(self.voice, text)

    def synthesize(self, text: str, seed: int | None = None) -> tuple[np.ndarray, str]:
        """Synthesise ``text``; return ((S,) float32 audio at 16 kHz, raw eSpeak IPA of the same call)."""
        audio, ipa = self.synthesize_raw(text, seed)
        return resample_to_16k(audio, _engine().sample_rate), ipa
