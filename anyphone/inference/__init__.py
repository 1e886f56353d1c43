"""Inference services: published-model hub access and audio input.

The model-side API (``load_model``, ``recognize``) and the ONNX runtime build on these; importing this package
does not import torch (hub.load_state_dict imports it when called).
"""

from anyphone.inference.audio import (
    AudioChunk,
    AudioError,
    AudioInfo,
    SilentAudioError,
    SilentAudioWarning,
    expand_inputs,
    iter_audio_chunks,
    load_audio,
)
from anyphone.inference.hub import (
    MODELS,
    ModelFiles,
    ModelNotAvailableError,
    UnsafeCheckpointError,
    download_model,
    infer_family_size,
    list_models,
    load_state_dict,
    remove_model,
    resolve_model,
)

__all__ = [
    "MODELS",
    "AudioChunk",
    "AudioError",
    "AudioInfo",
    "ModelFiles",
    "ModelNotAvailableError",
    "SilentAudioError",
    "SilentAudioWarning",
    "UnsafeCheckpointError",
    "download_model",
    "expand_inputs",
    "infer_family_size",
    "iter_audio_chunks",
    "list_models",
    "load_audio",
    "load_state_dict",
    "remove_model",
    "resolve_model",
]


# The model-side API imports torch, so it is loaded only when asked for.
_LAZY = {"load_model": "anyphone.inference.loading", "PhoneRecognizer": "anyphone.inference.recognizer",
         "plot_posteriorgram": "anyphone.inference.plot"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'anyphone.inference' has no attribute {name!r}")
