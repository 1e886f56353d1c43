"""Data: ZIPA fbank, Shar reading/writing and user corpora, augmentation, the PhoneDataModule."""

from anyphone.data.fbank import FbankModule, compute_fbank, num_frames
from anyphone.data.module import PhoneDataModule, PhoneDataset, str2bool
from anyphone.data.shar import (
    CorpusReport,
    kaldi_dir_to_shar,
    lhotse_manifests_to_shar,
    open_shar,
    open_train_shars,
    write_shar,
)

__all__ = [
    "CorpusReport",
    "FbankModule",
    "PhoneDataModule",
    "PhoneDataset",
    "compute_fbank",
    "kaldi_dir_to_shar",
    "lhotse_manifests_to_shar",
    "num_frames",
    "open_shar",
    "open_train_shars",
    "str2bool",
    "write_shar",
]
