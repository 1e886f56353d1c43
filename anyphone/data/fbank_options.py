"""ZIPA's front end as numbers, with no torch import: the one definition that the PyTorch fbank
(:mod:`anyphone.data.fbank`, lhotse's ``Wav2LogFilterBank``) and the ONNX runtime's
(:mod:`anyphone.inference.onnx_runtime`, kaldi-native-fbank) are both built from."""

from __future__ import annotations

from typing import TypeVar

_Count = TypeVar("_Count")  # an int, or an int tensor / array

SAMPLE_RATE = 16000
FRAME_SHIFT_SAMPLES = 160  # 10 ms at 16 kHz
NUM_MEL_BINS = 80

# The lhotse FbankConfig defaults that ZIPA relies on, spelled out so that a change of the lhotse defaults
# cannot silently change our features.
ZIPA_FBANK_OPTIONS = {
    "sampling_rate": SAMPLE_RATE,
    "frame_length": 0.025,
    "frame_shift": FRAME_SHIFT_SAMPLES / SAMPLE_RATE,
    "round_to_power_of_two": True,
    "remove_dc_offset": True,
    "preemph_coeff": 0.97,
    "window_type": "povey",
    "dither": 0.0,
    "snip_edges": False,
    "energy_floor": 1e-10,
    "raw_energy": True,
    "use_energy": False,
    "use_fft_mag": False,
    "low_freq": 20.0,
    "high_freq": -400.0,
    "num_filters": NUM_MEL_BINS,
    "norm_filters": False,
    "torchaudio_compatible_mel_scale": True,
}


def num_frames(num_samples: _Count) -> _Count:
    """Frames for ``num_samples`` samples at 16 kHz with ``snip_edges=False``: ``(num_samples + 80) // 160``, i.e.
    ``num_samples / 160`` rounded half up (lhotse's ``compute_num_frames_from_samples``); ints or int arrays."""
    return (num_samples + FRAME_SHIFT_SAMPLES // 2) // FRAME_SHIFT_SAMPLES
