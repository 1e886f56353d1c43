"""Data: ZIPA fbank, Shar reading/writing and user corpora, augmentation, the PhoneDataModule.

Names are imported lazily, so that reading package data (language inventories under anyphone/data/) or
the eSpeak wrapper never pulls in lhotse's dataset machinery.
"""

from importlib import import_module

_EXPORTS = {
    "FbankModule": "anyphone.data.fbank",
    "compute_fbank": "anyphone.data.fbank",
    "num_frames": "anyphone.data.fbank",
    "PhoneDataModule": "anyphone.data.module",
    "PhoneDataset": "anyphone.data.module",
    "str2bool": "anyphone.data.module",
    "CorpusReport": "anyphone.data.shar",
    "kaldi_dir_to_shar": "anyphone.data.shar",
    "lhotse_manifests_to_shar": "anyphone.data.shar",
    "open_shar": "anyphone.data.shar",
    "open_train_shars": "anyphone.data.shar",
    "write_shar": "anyphone.data.shar",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'anyphone.data' has no attribute {name!r}")
