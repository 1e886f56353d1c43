"""Tests for anyphone.inference.audio: formats, resampling, mix-down, chunking, errors, input expansion."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import soundfile as sf

from anyphone.inference.audio import (
    AudioError,
    SilentAudioError,
    SilentAudioWarning,
    expand_inputs,
    iter_audio_chunks,
    load_audio,
)


def _tone(sr: int, seconds: float, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    if channels == 1:
        return x.astype(np.float32)
    # second channel at half level, so the mix-down is 0.75 of channel 0
    return np.stack([x, 0.5 * x], axis=1).astype(np.float32)


@pytest.mark.parametrize(
    ("ext", "fmt", "subtype"),
    [(".wav", "WAV", "PCM_16"), (".flac", "FLAC", "PCM_16"), (".ogg", "OGG", "VORBIS"), (".mp3", "MP3", None)],
)
def test_formats_roundtrip_at_16k(tmp_path, ext, fmt, subtype):
    if fmt not in sf.available_formats():
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} cannot write {fmt}")
    path = tmp_path / f"a{ext}"
    x = _tone(16000, 1.0)
    sf.write(path, x, 16000, format=fmt, subtype=subtype)
    y, info = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert info.sample_rate == 16000 and not info.resampled and not info.mixed_down
    # lossy codecs add encoder delay/padding; lossless ones are exact in length
    if ext in (".wav", ".flac"):
        assert len(y) == 16000
        np.testing.assert_allclose(y, x, atol=1e-4)
    else:
        assert abs(len(y) - 16000) < 3000
        assert 0.3 < float(np.max(np.abs(y))) < 0.7


def test_resample_44k_quality(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, _tone(44100, 1.0, freq=1000.0), 44100, subtype="FLOAT")
    y, info = load_audio(path)
    assert info.resampled and info.sample_rate == 44100 and len(y) == 16000 == info.num_samples
    ref = _tone(16000, 1.0, freq=1000.0)
    # away from the edges the polyphase resampler reproduces the tone closely
    np.testing.assert_allclose(y[200:-200], ref[200:-200], atol=2e-3)
    assert info.duration == pytest.approx(1.0)


def test_8k_to_16k_length(tmp_path):
    path = tmp_path / "a.flac"
    sf.write(path, _tone(8000, 0.5, freq=300.0), 8000)
    y, info = load_audio(path)
    assert len(y) == 8000 and info.resampled


def test_stereo_mixdown_logs_one_line(tmp_path, caplog):
    path = tmp_path / "st.wav"
    sf.write(path, _tone(16000, 0.5, channels=2), 16000, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="anyphone.audio"):
        y, info = load_audio(path)
    assert info.channels == 2 and info.mixed_down
    np.testing.assert_allclose(y, 0.75 * _tone(16000, 0.5), atol=1e-6)
    notes = [r.getMessage() for r in caplog.records if "mixed down" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0] and "st.wav" in notes[0]


def test_errors_are_one_line_and_name_the_file(tmp_path):
    cases = {}
    cases["missing"] = tmp_path / "missing.wav"
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    cases["empty"] = empty
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 20)
    cases["not audio"] = text
    zero = tmp_path / "zero.wav"
    sf.write(zero, np.zeros(0, dtype=np.float32), 16000)
    cases["no audio samples"] = zero
    nan = tmp_path / "nan.wav"
    x = _tone(16000, 0.5)
    x[4000] = np.nan
    sf.write(nan, x, 16000, subtype="FLOAT")
    cases["NaN"] = nan
    inf = tmp_path / "inf.wav"
    x = _tone(16000, 0.5)
    x[100] = np.inf
    sf.write(inf, x, 16000, subtype="FLOAT")
    cases["inf"] = inf
    expected = {"missing": "no such file", "empty": "empty file", "not audio": "not a readable audio file",
                "no audio samples": "no audio samples", "NaN": "NaN sample at 0.250 s", "inf": "inf sample"}
    for key, path in cases.items():
        with pytest.raises(AudioError) as ei:
            load_audio(path)
        msg = str(ei.value)
        assert msg.startswith(str(path)) and "\n" not in msg, msg
        assert expected[key] in msg, msg
        assert ei.value.path == path


def test_silence_policy(tmp_path):
    path = tmp_path / "quiet.wav"
    sf.write(path, np.zeros(8000, dtype=np.float32), 16000)
    with pytest.warns(SilentAudioWarning, match="quiet.wav"):
        y, info = load_audio(path)
    assert info.silent and len(y) == 8000
    with pytest.raises(SilentAudioError, match="silent"):
        load_audio(path, on_silence="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_audio(path, on_silence="ignore")
    # SilentAudioError is an AudioError, so a caller catching AudioError also skips silent files
    assert issubclass(SilentAudioError, AudioError)


@pytest.mark.parametrize("sr", [16000, 44100, 22050])
def test_chunks_match_whole_file(tmp_path, sr):
    rng = np.random.default_rng(0)
    n = int(sr * 7.3)
    x = (0.1 * rng.standard_normal((n, 2))).astype(np.float32)
    path = tmp_path / "long.flac"
    sf.write(path, x, sr, subtype="PCM_24")
    whole, _ = load_audio(path)
    chunks = list(iter_audio_chunks(path, chunk_seconds=2.0, overlap_seconds=0.5, block_seconds=0.7))
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [c.start for c in chunks] == [i * 24000 for i in range(len(chunks))]
    assert chunks[-1].is_last and not any(c.is_last for c in chunks[:-1])
    for c in chunks:
        ref = whole[c.start: c.start + 32000]
        assert len(c.samples) == len(ref)
        np.testing.assert_allclose(c.samples, ref, atol=1e-5)
    assert chunks[-1].start + len(chunks[-1].samples) == len(whole)


def test_chunks_no_redundant_tail(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, _tone(16000, 4.0), 16000)
    chunks = list(iter_audio_chunks(path, 2.0, 0.0))
    assert [(c.start, len(c.samples)) for c in chunks] == [(0, 32000), (32000, 32000)]
    chunks = list(iter_audio_chunks(path, 3.0, 1.0))
    assert [(c.start, len(c.samples)) for c in chunks] == [(0, 48000), (32000, 32000)]
    assert chunks[1].start_seconds == 2.0 and chunks[1].end_seconds == 4.0
    with pytest.raises(ValueError, match="overlap"):
        list(iter_audio_chunks(path, 1.0, 1.0))


def test_chunks_bounded_memory(tmp_path, monkeypatch):
    """The rolling buffer never holds much more than one chunk plus one read block."""
    import anyphone.inference.audio as audio_mod

    sr = 8000
    path = tmp_path / "hour_like.wav"
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, subtype="PCM_16") as f:
        for _ in range(60):  # 60 s written in pieces
            f.write(_tone(sr, 1.0))
    sizes = []
    real = audio_mod._resample

    def spy(x, up, down):
        sizes.append(len(x))
        return real(x, up, down)

    monkeypatch.setattr(audio_mod, "_resample", spy)
    chunks = list(iter_audio_chunks(path, 5.0, 1.0, block_seconds=1.0))
    assert sum(1 for _ in chunks) == 15
    assert max(sizes) < (5.0 + 1.0) * sr + 2000  # one chunk + context, never the whole minute


def test_chunks_silence_and_errors(tmp_path):
    path = tmp_path / "q.wav"
    sf.write(path, np.zeros(32000, dtype=np.float32), 16000)
    with pytest.warns(SilentAudioWarning):
        assert len(list(iter_audio_chunks(path, 1.0))) == 2
    with pytest.raises(AudioError, match="no such file"):
        list(iter_audio_chunks(tmp_path / "nope.wav", 1.0))


def test_expand_inputs(tmp_path, monkeypatch):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    for name in ["b.wav", "a.FLAC", "c.mp3", "notes.txt", "sub/z.wav"]:
        (d / name).write_bytes(b"x")
    assert [p.name for p in expand_inputs(d)] == ["a.FLAC", "b.wav", "c.mp3"]
    assert [p.name for p in expand_inputs(d, recursive=True)] == ["a.FLAC", "b.wav", "c.mp3", "z.wav"]
    lst = tmp_path / "files.lst"
    lst.write_text(f"# my files\n\nd/b.wav\n{d / 'sub' / 'z.wav'}\n", encoding="utf-8")
    assert expand_inputs(lst) == [d / "b.wav", d / "sub" / "z.wav"]
    scp = tmp_path / "wav.scp"
    scp.write_text("utt1 d/c.mp3\n", encoding="utf-8")
    assert expand_inputs(scp) == [d / "c.mp3"]
    assert expand_inputs([d / "b.wav", lst]) == [d / "b.wav", d / "b.wav", d / "sub" / "z.wav"]
    bad = tmp_path / "bad.txt"
    bad.write_text("d/b.wav\nd/none.wav\n", encoding="utf-8")
    with pytest.raises(AudioError, match=r"line 2: d/none.wav not found"):
        expand_inputs(bad)
    with pytest.raises(AudioError, match="no such file"):
        expand_inputs(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AudioError, match="no audio files"):
        expand_inputs(tmp_path / "empty")
