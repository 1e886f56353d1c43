"""PhoneDataModule: Shar cut streams -> batches for phone recognition training and evaluation.

Batches are dicts (see the project brief):

* ``features`` (N, T, 80) float32 zero-padded and ``feature_lens`` (N,) int64, or with
  ``--fbank-on-device`` ``audio`` (N, S) float32 zero-padded and ``audio_lens`` (N,) int64
  (turn them into features with :class:`anyphone.data.fbank.FbankModule` on the device);
* ``token_ids`` list[list[int]], ``texts`` list[str] (normalised IPA), ``cut_ids`` list[str],
  ``languages`` list[str];
* ``label_kinds`` list[str] and the masks ``unsupervised`` / ``pseudo`` list[bool] (one per cut).

Three kinds of cut (noisy-student training). ``cut.custom["label_kind"]`` is ``"labelled"``, ``"pseudo"``
(a teacher's transcript, with ``custom["pseudo_confidence"]`` and ``custom["teacher"]``; written by
``local/pseudo_label.py``) or ``"unlabelled"``; without the field a cut with a transcript is labelled and one
without is unlabelled (``anyphone.data.shar.label_kind``). An unlabelled cut has no CTC target, ever: its
``token_ids`` are empty only as a placeholder and ``unsupervised`` marks it, so the task gives it the
consistency term alone (``--use-unsup-cr-ctc 1``). Without that flag (and for dev sets) unlabelled cuts are
dropped by :class:`CutFilter` and counted (a warning at the 1st, 10th, 100th, ... one), never trained as a
silence target. A cut whose audio the silence augmentation replaced by silence or noise is labelled, with the
empty transcript that is then true. ``--train-shar DIR:WEIGHT`` (repeatable) mixes labelled, pseudo-labelled and
unlabelled folders by weight.

The sampler (lhotse ``DynamicBucketingSampler``) runs in the main process and its batches of
cuts (with their FLAC bytes) go to the dataloader workers, which apply augmentation and compute
fbank. Keeping the sampler in the main process lets it split batches across DDP ranks.

Exact resume. Training must continue after a kill exactly as if it had never stopped, so nothing random
here lives in a long-lived generator whose state a checkpoint would have to carry:

* the training sampler is wrapped in :class:`ResumableSampler`, which numbers its batches (epoch, index) and
  whose state is the position of the last batch the training loop *received*; lhotse's own state counts the
  batches the sampler produced, which with dataloader workers runs several batches ahead (prefetching), so a
  resume from it skipped batches. The shard order of each epoch is a function of (seed, epoch) too.
* each training batch's augmentation (speed, volume, silence, noise, SpecAugment) draws from generators
  reseeded from (seed, rank, epoch, index) before the batch is made, so it does not matter which worker
  makes it, nor where a run was restarted. (Features are bitwise equal for equal torch thread counts: workers
  use one thread; with --num-workers 0 the training process computes them with its own.)
* the training step's own randomness (dropout, layer skipping, CR-CTC's masks) is reseeded per batch by the
  training loop from :func:`derive_seed` (seed, rank, batch count).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import logging
import zlib
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler
from torch.utils.data import DataLoader

from anyphone.data.augment import NoiseAugment, SilenceAugment, SpecAugment, SpeedPerturb, VolumePerturb
from anyphone.data.config import DataConfig
from anyphone.data.fbank import SAMPLE_RATE, compute_fbank, num_frames, pad_waves
from anyphone.data.shar import (
    label_kind,
    open_shar,
    open_train_shars,
    parse_named_dir,
    parse_weighted_dir,
    shar_fields,
    shar_read_options,
)
from anyphone.utils import str2bool

log = logging.getLogger(__name__)


def _snr_range(v: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in v.replace(":", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--snr-range: expected LOW,HIGH in dB (e.g. 0,30), got {v!r}")
    return (min(lo, hi), max(lo, hi))


def derive_seed(stream: str, *keys: int) -> int:
    """A 32-bit seed that is a fixed function of a stream name and integer keys, e.g.
    ``derive_seed("augment", seed, rank, epoch, batch_index)``.

    The same arguments give the same seed in any process, on any machine, before or after a resume, which is
    what lets every random draw of training be remade exactly instead of saved. Different stream names give
    unrelated seeds even for equal keys. Negative keys (a negative --seed) are allowed.
    """
    entropy = [zlib.crc32(stream.encode()), *(int(k) % 2**64 for k in keys)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def encoder_output_frames(num_fbank_frames: int, output_downsampling_factor: int = 1) -> int:
    """Encoder output length of the Zipformer for ``num_fbank_frames`` input frames.

    Conv2dSubsampling gives ``(T - 7) // 2`` frames (50 Hz); the encoder then downsamples by
    ``output_downsampling_factor`` rounding up: 1 for CR-CTC, 2 for the transducer
    (``((T - 7) // 2 + 1) // 2``).
    """
    t = (num_fbank_frames - 7) // 2
    f = output_downsampling_factor
    return max(0, (t + f - 1) // f)


def ctc_min_frames(token_ids: Sequence[int]) -> int:
    """Frames CTC needs for a label sequence: one per token plus a blank between repeats."""
    repeats = sum(1 for a, b in itertools.pairwise(token_ids) if a == b)
    return len(token_ids) + repeats


def _cut_text(cut: Any) -> str:
    return "".join(s.text for s in cut.supervisions if s.text)


def _cut_language(cut: Any) -> str:
    for s in cut.supervisions:
        if s.language:
            return str(s.language)
        if s.custom and s.custom.get("language"):
            return str(s.custom["language"])
    if cut.custom and cut.custom.get("language"):
        return str(cut.custom["language"])
    return ""


def _normalize(text: str) -> str:
    from anyphone.text.ipa import normalize_ipa

    return normalize_ipa(text, remove_diacritics=True)


class CutFilter:
    """Keeps cuts with ``min_duration <= duration <= max_duration``, a single channel, and enough
    encoder frames for CTC (``encoder_output_frames >= ctc_min_frames(tokens)``), evaluated at the
    fastest speed-perturbation factor. Unlabelled cuts (``anyphone.data.shar.label_kind``) are kept only with
    ``keep_unlabelled`` (they have no tokens to fit). Counts what it removes (in the process that iterates)."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        min_duration: float = 0.0,
        max_duration: float = float("inf"),
        output_downsampling_factor: int = 1,
        max_speed: float = 1.0,
        remove_diacritics: bool = False,
        keep_unlabelled: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.min_duration, self.max_duration = min_duration, max_duration
        self.factor = output_downsampling_factor
        self.max_speed = max_speed
        self.remove_diacritics = remove_diacritics
        self.keep_unlabelled = keep_unlabelled
        self.reset()

    def reset(self) -> None:
        """Zero the counts: ``kept`` cuts and ``removed`` ones (duration / channels / too_many_tokens /
        unlabelled)."""
        self.kept = 0
        self.removed = {"duration": 0, "channels": 0, "too_many_tokens": 0, "unlabelled": 0}

    def __call__(self, cut: Any) -> bool:
        if not (self.min_duration <= cut.duration <= self.max_duration):
            self.removed["duration"] += 1
            return False
        if cut.num_channels is not None and cut.num_channels != 1:
            self.removed["channels"] += 1
            return False
        if label_kind(cut) == "unlabelled":
            if self.keep_unlabelled:
                self.kept += 1
                return True
            self.removed["unlabelled"] += 1
            n = self.removed["unlabelled"]
            if n == 10 ** (len(str(n)) - 1):  # the 1st, 10th, 100th, ...
                log.warning(f"{n} unlabelled cut(s) dropped so far (the latest: {cut.id}); they have no "
                            "transcript, so only the consistency term could use them: pass --use-unsup-cr-ctc 1")
            return False
        text = _cut_text(cut)
        if self.remove_diacritics:
            text = _normalize(text)
        ids = self.tokenizer.encode([text])[0] if text else []
        samples = round(cut.duration / self.max_speed * SAMPLE_RATE)
        if encoder_output_frames(num_frames(samples), self.factor) < ctc_min_frames(ids):
            self.removed["too_many_tokens"] += 1
            if self.removed["too_many_tokens"] <= 5:
                log.debug(f"cut {cut.id}: {len(ids)} tokens do not fit {cut.duration:.2f} s; removed")
            return False
        self.kept += 1
        return True


class PhoneDataset(torch.utils.data.Dataset):
    """Maps a CutSet (one batch from the sampler) to the batch dict; runs in dataloader workers.

    Steps: cut transforms (speed/volume) -> load audio (mono, 16 kHz) -> silence augmentation
    (may empty transcripts) -> additive noise -> fbank (unless ``fbank_on_device``) ->
    SpecAugment (only with features) -> token ids.

    The item is a CutSet, or a :class:`PositionedBatch` from :class:`ResumableSampler`. For the latter,
    with ``seed`` given, every transform is first reseeded from (seed, rank, epoch, index), so the batch comes
    out the same in any worker and after any resume, and the batch dict gets ``position`` (epoch, index).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        cut_transforms: Sequence[Any] = (),
        silence_augment: SilenceAugment | None = None,
        noise_augment: NoiseAugment | None = None,
        spec_augment: SpecAugment | None = None,
        fbank_on_device: bool = False,
        remove_diacritics: bool = False,
        seed: int | None = None,
        rank: int = 0,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.cut_transforms = list(cut_transforms)
        self.silence_augment = silence_augment
        self.noise_augment = noise_augment
        self.spec_augment = spec_augment
        self.fbank_on_device = fbank_on_device
        self.remove_diacritics = remove_diacritics
        self.seed, self.rank = seed, rank

    def reseed(self, seed: int) -> None:
        """Give every random transform its own stream derived from ``seed``."""
        import random

        for k, t in enumerate(
            [*self.cut_transforms, self.silence_augment, self.noise_augment, self.spec_augment]
        ):
            if t is None:
                continue
            s = derive_seed("transform", seed, k)
            if hasattr(t, "reseed"):
                t.reseed(s)
            elif hasattr(t, "rng"):
                t.rng = random.Random(s)

    @staticmethod
    def _load(cut: Any) -> np.ndarray:
        if cut.sampling_rate != SAMPLE_RATE:
            cut = cut.resample(SAMPLE_RATE)
        audio = cut.load_audio()  # (C, S)
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 2:
            audio = audio.mean(axis=0) if audio.shape[0] > 1 else audio[0]
        return audio

    def __getitem__(self, item: CutSet | PositionedBatch) -> dict[str, Any]:
        position = None
        if isinstance(item, PositionedBatch):
            cuts, position = item.cuts, (item.epoch, item.index)
            if self.seed is not None:
                self.reseed(derive_seed("augment", self.seed, self.rank, *position))
        else:
            cuts = item
        for t in self.cut_transforms:
            cuts = t(cuts)
        kept, waves = [], []
        for cut in cuts:
            try:
                waves.append(self._load(cut))
                kept.append(cut)
            except Exception as e:  # noqa: BLE001 - one unreadable cut must not kill a long training run
                log.warning(f"cut {cut.id}: cannot load audio ({type(e).__name__}: {e}); dropped from batch")
        if not kept:
            raise RuntimeError(f"no cut of the batch could be loaded (first id {next(iter(cuts)).id})")
        kinds = [label_kind(c) for c in kept]
        texts = [_cut_text(c) if k != "unlabelled" else "" for c, k in zip(kept, kinds)]
        if self.remove_diacritics:
            texts = [_normalize(t) for t in texts]
        if self.silence_augment is not None:
            waves, emptied = self.silence_augment(waves)
            texts = ["" if e else t for t, e in zip(texts, emptied)]
            # silence or noise alone: its empty transcript is true whatever the cut was
            kinds = ["labelled" if e else k for k, e in zip(kinds, emptied)]
        if self.noise_augment is not None:
            waves = self.noise_augment(waves)
        batch: dict[str, Any] = {}
        if self.fbank_on_device:
            audio, audio_lens = pad_waves(waves)
            batch["audio"], batch["audio_lens"] = audio, audio_lens
        else:
            feats, feat_lens = compute_fbank(waves)
            if self.spec_augment is not None:
                feats = self.spec_augment(feats, feat_lens)
            batch["features"], batch["feature_lens"] = feats, feat_lens
        batch["token_ids"] = self.tokenizer.encode(texts) if texts else []
        batch["texts"] = texts
        batch["cut_ids"] = [c.id for c in kept]
        batch["languages"] = [_cut_language(c) for c in kept]
        batch["label_kinds"] = kinds
        batch["unsupervised"] = [k == "unlabelled" for k in kinds]
        batch["pseudo"] = [k == "pseudo" for k in kinds]
        if position is not None:
            batch["position"] = position
        return batch


class _WorkerInit:
    """Reseeds each worker's numpy RNG and augmentation from torch's per-worker seed (which differs per
    worker and per epoch, and follows the main process RNG) and the DDP rank. Training batches
    (:class:`PositionedBatch`) are reseeded again from their position, so this seed never shapes them."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def __call__(self, worker_id: int) -> None:
        info = torch.utils.data.get_worker_info()
        seed = (torch.initial_seed() + 7919 * self.rank) % (2**32)
        np.random.seed(seed)
        if info is not None and hasattr(info.dataset, "reseed"):
            info.dataset.reseed(seed)


class PositionedBatch(NamedTuple):
    """A batch of cuts and where the sampler made it: the ``index``-th batch (from 0) of sampler epoch
    ``epoch``. The cuts come first, so lhotse's ``find_pessimistic_batches`` reads it as a batch tuple."""

    cuts: CutSet
    epoch: int
    index: int


POSITION_STATE = "anyphone-sampler-position-1"


class SamplerStateError(ValueError):
    """A saved sampler state this run cannot continue from (other --seed or --world-size, unreadable)."""


def _shar_readers(cuts: Any) -> list[Any]:
    """The lazy Shar readers under a (filtered, muxed, repeated) CutSet."""
    from lhotse.shar.readers.lazy import LazySharIterator

    found, stack, seen = [], [cuts], set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, LazySharIterator):
            found.append(obj)
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif type(obj).__module__.startswith("lhotse") and hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())  # CutSet.cuts, LazyFilter.iterator, mux .iterators, ...
    return found


class ResumableSampler:
    """The training sampler (a lhotse CutSampler) with numbered batches and an exact resume point.

    Iterating yields :class:`PositionedBatch` items. The training DataLoader (:class:`TrainDataLoader`) calls
    :meth:`mark_received` for each batch it hands over, and :meth:`state_dict` is that position, so it
    stays exact however far dataloader workers prefetch. :meth:`load_state_dict` makes the next iteration
    start after the last received batch (the sampler replays the epoch up to there: same seed, same epoch,
    same batches).

    Each epoch's shard order is set from (seed, epoch): lhotse's Shar reader otherwise shuffles the shards
    by how many times it has been read in this process, which a restarted process does not know. (Its count
    when the sampler is built, after the sampler's look at the first cuts, is kept as the base, so epoch ``e``
    reads the shards in the order an uninterrupted process always used.)
    """

    def __init__(self, sampler: Any, cuts: CutSet, *, seed: int, world_size: int, rank: int = 0) -> None:
        self.sampler = sampler
        self.seed, self.world_size, self.rank = int(seed), int(world_size), int(rank)
        self._shar = [(reader, reader.epoch) for reader in _shar_readers(cuts)]
        self.readers: list[dict[str, Any]] | None = None  # every rank's reader_state(), set before a save
        self.epoch = 0
        self.received = 0  # batches of self.epoch the training loop has received
        self._resume_at = 0  # batches the next iteration skips (set by load_state_dict)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (from 0) at its first batch."""
        self.epoch, self.received, self._resume_at = int(epoch), 0, 0
        self.sampler.set_epoch(self.epoch)

    def __iter__(self) -> Iterator[PositionedBatch]:
        epoch, skip = self.epoch, self._resume_at
        self._resume_at = 0
        self.received = skip
        for reader, base in self._shar:
            reader.epoch = base + epoch
        self.sampler.set_epoch(epoch)
        self.sampler.allow_iter_to_reset_state()  # a fresh pass over the epoch, not lhotse's restored one
        for index, cuts in enumerate(self.sampler):
            if index >= skip:
                yield PositionedBatch(cuts, epoch, index)

    def mark_received(self, epoch: int, index: int) -> None:
        """The training loop has the ``index``-th batch of ``epoch``: a resume continues after it."""
        if epoch == self.epoch:
            self.received = max(self.received, index + 1)

    def reader_state(self) -> dict[str, Any]:
        """This rank's reader: its position, and the shards it reads per epoch of each train directory."""
        shards = [len(reader.shards[getattr(reader, "rank", 0)::getattr(reader, "world_size", 1)])
                  for reader, _ in self._shar]
        return {"rank": self.rank, "epoch": self.epoch, "batches": self.received, "shards": shards}

    def set_reader_states(self, states: list[dict[str, Any]]) -> None:
        """Every rank's :meth:`reader_state` (gathered by the training loop), saved with :meth:`state_dict`."""
        self.readers = [dict(s) for s in states]

    def state_dict(self) -> dict[str, Any]:
        state = {"format": POSITION_STATE, "epoch": self.epoch, "batches": self.received, "seed": self.seed,
                 "world_size": self.world_size}
        if self.readers is not None:
            state["readers"] = self.readers
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the saved position. Also reads the state of a bare lhotse sampler (checkpoints
        written before positions were kept), whose count may be a few batches ahead of training."""
        if state.get("format") == POSITION_STATE:
            epoch, batches = int(state["epoch"]), int(state["batches"])
            # a checkpoint of a job with several readers has each rank's own position: this rank takes its own
            mine = [r for r in state.get("readers") or [] if int(r.get("rank", -1)) == self.rank]
            if mine:
                epoch, batches = int(mine[0]["epoch"]), int(mine[0]["batches"])
        else:
            try:
                epoch = int(state["epoch"])
                diag = state["diagnostics"]
                stats = diag["stats_per_epoch"][diag["current_epoch"]]
                batches = int(stats["kept_batches"]) + int(stats["discarded_batches"])
            except (KeyError, TypeError, ValueError) as e:
                why = f"sampler state in the checkpoint is not one this version can read ({e!r})"
                raise SamplerStateError(why) from None
            log.warning("sampler state from an older checkpoint: lhotse's count, which may be a few batches "
                        "ahead of the training (dataloader prefetch); the resume is not exact")
        # (lhotse's own world_size is 1 where the ranks read different shards: only ours is comparable)
        checked = (("seed", self.seed), ("world_size", self.world_size))
        for key, now in checked if state.get("format") == POSITION_STATE else checked[:1]:
            if key in state and int(state[key]) != now:
                flag = "--seed" if key == "seed" else "--world-size"
                raise SamplerStateError(f"the checkpoint's sampler was saved with {flag} {state[key]}, this run "
                                        f"has {now}; resume with the flags it was trained with")
        self.epoch, self.received, self._resume_at = epoch, batches, batches


class TrainDataLoader(DataLoader):
    """The training DataLoader: tells its :class:`ResumableSampler` which batches the training loop received
    (the sampler itself runs ahead of the loop by the batches the workers prefetch)."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in super().__iter__():
            if isinstance(batch, dict) and "position" in batch:
                # the loader's conversion turns the (epoch, index) tuple into a list
                batch["position"] = epoch, index = tuple(int(v) for v in batch["position"])
                if hasattr(self.sampler, "mark_received"):
                    self.sampler.mark_received(epoch, index)
            yield batch


class PhoneDataModule:
    """Train/dev/test dataloaders over Shar directories.

    Args:
      config: the data knobs (:class:`anyphone.data.config.DataConfig`); a Namespace parsed with
        :meth:`add_arguments` is turned into one here, once (flags it lacks take the DataConfig defaults).
      world_size, rank: DDP layout (default: from torch.distributed when initialised, else 1/0).
        Train shards are split across ranks (each epoch's shuffled shard list, positions
        ``rank::world_size``) when every train directory has at least ``world_size`` shards, so each
        shard is read once per epoch by the whole job; otherwise every rank reads every shard, the
        sampler splits batches across ranks, and a warning points to ``local/reshard.py``.
      output_downsampling_factor: encoder frame-rate divisor after the 50 Hz subsampling (1 for
        CR-CTC, 2 for the transducer) used by the token-count filter (the task's
        ``output_downsampling_factor``).
    """

    def __init__(
        self,
        config: DataConfig | argparse.Namespace,
        *,
        world_size: int | None = None,
        rank: int | None = None,
        output_downsampling_factor: int = 1,
    ) -> None:
        self.config = config if isinstance(config, DataConfig) else DataConfig.from_args(config)
        if world_size is None or rank is None:
            dist_on = torch.distributed.is_available() and torch.distributed.is_initialized()
            world_size = torch.distributed.get_world_size() if dist_on else 1
            rank = torch.distributed.get_rank() if dist_on else 0
        if not 0 <= rank < world_size:
            raise ValueError(f"PhoneDataModule: rank={rank} must be in [0, world_size={world_size})")
        self.world_size, self.rank = world_size, rank
        self.output_downsampling_factor = int(output_downsampling_factor)
        self.train_filter: CutFilter | None = None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("data", "Shar inputs, batching, augmentation and features")

        class _Group:
            """Adds an option unless the parser already has it (e.g. --seed from the training
            loop), so the two argument sets combine in one parser."""

            def add_argument(self, flag: str, **kwargs: Any) -> None:
                if flag not in parser._option_string_actions:
                    group.add_argument(flag, **kwargs)

        g = _Group()
        D = DataConfig()  # the defaults live there
        g.add_argument("--train-shar", action="append", default=list(D.train_shar), metavar="DIR[:WEIGHT]",
                       help="Training Shar directory with an optional sampling weight; repeatable (labelled, "
                       "pseudo-labelled and unlabelled folders mix by weight; see --use-unsup-cr-ctc).")
        g.add_argument("--trust-data-commands", type=str2bool, default=D.trust_data_commands,
                       help="Allow cuts whose audio is loaded by running a command (lhotse 'command' or "
                       "'pipe:' sources, .sph files decoded with sph2pipe). Off: such cuts are refused.")
        g.add_argument("--max-bad-shards", type=int, default=D.max_bad_shards,
                       help="Shards that cannot be read (corrupt or truncated, or remote ones that still fail "
                       "after their retries) are named, skipped and counted, local and remote together; more "
                       "than this many stop the run.")
        g.add_argument("--keep-unk-cuts", type=str2bool, default=D.keep_unk_cuts,
                       help="Keep training cuts whose transcript has labels outside the inventory (they "
                       "train as <unk>). Off: they are counted per shard at start-up and dropped.")
        g.add_argument("--dev-shar", action="append", default=list(D.dev_shar), metavar="DIR",
                       help="Validation Shar directory; repeatable (concatenated).")
        g.add_argument("--test-shar", action="append", default=list(D.test_shar), metavar="NAME=DIR",
                       help="Named test Shar directory; repeatable.")
        g.add_argument("--repeat-train", type=str2bool, default=D.repeat_train,
                       help="Repeat every train source forever so the mux weights hold for the whole run "
                       "(infinite epoch: stop training by step count). False: one pass per epoch.")
        g.add_argument("--max-duration", type=float, default=D.max_duration,
                       help="Seconds of audio per batch (before speed perturbation).")
        g.add_argument("--num-buckets", type=int, default=D.num_buckets, help="Duration buckets of the sampler.")
        g.add_argument("--bucket-buffer-size", type=int, default=D.bucket_buffer_size,
                       help="Cuts the bucketing sampler holds (they carry their FLAC bytes in memory).")
        g.add_argument("--num-cuts-for-bins-estimate", type=int, default=D.num_cuts_for_bins_estimate,
                       help="Cuts read up front to estimate the duration buckets.")
        g.add_argument("--shuffle-buffer-size", type=int, default=D.shuffle_buffer_size,
                       help="Cuts in the shuffle buffer.")
        g.add_argument("--shuffle", type=str2bool, default=D.shuffle, help="Shuffle shards and cuts in training.")
        g.add_argument("--drop-last", type=str2bool, default=D.drop_last,
                       help="Drop the last partial training batch.")
        g.add_argument("--num-workers", type=int, default=D.num_workers, help="Dataloader worker processes.")
        g.add_argument("--min-duration", type=float, default=D.min_duration,
                       help="Drop training cuts shorter than this (s).")
        g.add_argument("--max-duration-per-cut", type=float, default=D.max_duration_per_cut,
                       help="Drop training cuts longer than this (s).")
        g.add_argument("--speed-perturb", type=str2bool, default=D.speed_perturb,
                       help="Speed perturbation with factors 0.9/1.0/1.1 (training only).")
        g.add_argument("--volume-perturb-prob", type=float, default=D.volume_perturb_prob,
                       help="Probability of a random gain in [1/8, 2] (training only).")
        g.add_argument("--noise-prob", type=float, default=D.noise_prob,
                       help="Probability of additive noise per training utterance (0 disables).")
        g.add_argument("--snr-range", type=_snr_range, default=D.snr_range, metavar="LOW,HIGH",
                       help="SNR range in dB for additive noise.")
        g.add_argument("--noise-dir", type=str, default=D.noise_dir,
                       help="Optional directory of wav/flac noise files or a noise Shar directory.")
        g.add_argument("--silence-pad-prob", type=float, default=D.silence_pad_prob,
                       help="Probability of 0-0.5 s of silence added at both ends of an utterance.")
        g.add_argument("--empty-prob", type=float, default=D.empty_prob,
                       help="Probability of replacing an utterance by silence/noise with an empty transcript.")
        g.add_argument("--enable-spec-aug", type=str2bool, default=D.enable_spec_aug,
                       help="SpecAugment in the data pipeline (off: the CR-CTC model does its own).")
        g.add_argument("--spec-aug-time-warp-factor", type=int, default=D.spec_aug_time_warp_factor,
                       help="Time warp of SpecAugment in frames (<1 disables).")
        g.add_argument("--fbank-on-device", type=str2bool, default=D.fbank_on_device,
                       help="Return padded audio; compute fbank in the training process with FbankModule.")
        g.add_argument("--remove-diacritics", type=str2bool, default=D.remove_diacritics,
                       help="Strip diacritics from transcripts (the no-diacritics ZIPA variants).")
        g.add_argument("--seed", type=int, default=D.seed, help="Seed for shard order, mux and sampler.")

    # -- helpers --------------------------------------------------------------------------------

    def _dataset(self, tokenizer: Any, train: bool) -> PhoneDataset:
        c = self.config
        seed = c.seed
        if not train:
            return PhoneDataset(tokenizer, fbank_on_device=c.fbank_on_device,
                                remove_diacritics=c.remove_diacritics)
        cut_transforms: list[Any] = []
        if c.speed_perturb:
            cut_transforms.append(SpeedPerturb((0.9, 1.0, 1.1), seed=seed))
        if c.volume_perturb_prob > 0:
            cut_transforms.append(VolumePerturb(p=c.volume_perturb_prob, seed=seed + 1))
        silence = None
        if c.silence_pad_prob > 0 or c.empty_prob > 0:
            silence = SilenceAugment(pad_prob=c.silence_pad_prob, empty_prob=c.empty_prob, seed=seed + 2)
        noise = None
        if c.noise_prob > 0:
            noise = NoiseAugment(p=c.noise_prob, snr_range=c.snr_range, noise_dir=c.noise_dir, seed=seed + 3)
        spec = None
        if c.enable_spec_aug:
            if c.fbank_on_device:
                log.warning("--enable-spec-aug has no effect in the data module with --fbank-on-device; "
                            "apply anyphone.data.augment.SpecAugment after FbankModule")
            else:
                spec = SpecAugment(time_warp=c.spec_aug_time_warp_factor, seed=seed + 4)
        return PhoneDataset(tokenizer, cut_transforms=cut_transforms, silence_augment=silence,
                            noise_augment=noise, spec_augment=spec, fbank_on_device=c.fbank_on_device,
                            remove_diacritics=c.remove_diacritics, seed=seed, rank=self.rank)

    def _loader(self, dataset: PhoneDataset, sampler: Any, num_workers: int,
                loader_class: type[DataLoader] = DataLoader) -> DataLoader:
        return loader_class(
            dataset,
            sampler=sampler,
            batch_size=None,  # the sampler yields whole batches (CutSets)
            num_workers=num_workers,
            persistent_workers=False,
            worker_init_fn=_WorkerInit(self.rank),
        )

    def _sampler(self, cuts: CutSet, **kwargs: Any) -> DynamicBucketingSampler | SimpleCutSampler:
        """A bucketing sampler; for tiny sets (fewer cuts than buckets, where lhotse cannot
        estimate bucket bins) fewer buckets, or a plain sampler below two cuts."""
        num_buckets = self.config.num_buckets
        head = sum(1 for _ in itertools.islice(iter(cuts), num_buckets))
        if head < 2:
            for k in ("buffer_size", "shuffle_buffer_size"):
                kwargs.pop(k, None)
            return SimpleCutSampler(cuts, max_duration=self.config.max_duration, **kwargs)
        return DynamicBucketingSampler(cuts, max_duration=self.config.max_duration,
                                       num_buckets=min(num_buckets, head),
                                       num_cuts_for_bins_estimate=self.config.num_cuts_for_bins_estimate,
                                       **kwargs)

    def _eval_sampler(self, cuts: CutSet) -> DynamicBucketingSampler | SimpleCutSampler:
        # every rank evaluates the full dev/test set
        return self._sampler(cuts, shuffle=False, drop_last=False, world_size=1, rank=0)

    # -- public ---------------------------------------------------------------------------------

    def train_cuts(self, tokenizer: Any) -> tuple[CutSet, bool]:
        """The filtered training CutSet and whether its shards are already split by rank."""
        a = self.config
        if not a.train_shar:
            raise ValueError("no training data: pass --train-shar DIR[:WEIGHT] at least once")
        specs = [parse_weighted_dir(s) for s in a.train_shar]
        # The readers are the ranks: the sampler runs in each rank's main process and its dataloader workers
        # only decode the batches it hands them, so a rank-level shard split reads every shard once per epoch
        # across the job. Ranks then run out of batches at different times in a finite epoch; the training
        # loop ends the epoch for all of them when the first one has no batch left (agree_on_batches).
        counts = {d: len(shar_fields(d)["cuts"]) for d, _ in specs}
        split = self.world_size > 1 and all(n >= self.world_size for n in counts.values())
        if split:
            log.info(f"readers: rank {self.rank} of {self.world_size} reads 1/{self.world_size} of the shards "
                     f"of each train directory per epoch ({', '.join(f'{d}: {n}' for d, n in counts.items())} "
                     "shards), " + ("the same ones on every pass of the endless stream" if a.repeat_train
                                    else "dealt afresh each epoch from --seed"))
        if self.world_size > 1 and not split and self.rank == 0:
            few = ", ".join(f"{d} ({n})" for d, n in counts.items() if n < self.world_size)
            log.warning(f"fewer shards than the {self.world_size} readers (ranks) in {few}: every rank reads "
                        f"every shard and keeps 1/{self.world_size} of the batches; rewrite it into at least "
                        f"{self.world_size} shards with local/reshard.py --num-shards K")
        cuts = open_train_shars(
            specs,
            seed=a.seed,
            shuffle_shards=a.shuffle,
            repeat=a.repeat_train,
            rank=self.rank if split else 0,
            world_size=self.world_size if split else 1,
            **shar_read_options(a, tokenizer),
        )
        self.train_filter = CutFilter(
            tokenizer,
            min_duration=a.min_duration,
            max_duration=a.max_duration_per_cut,
            output_downsampling_factor=self.output_downsampling_factor,
            max_speed=1.1 if a.speed_perturb else 1.0,
            remove_diacritics=a.remove_diacritics,
            # only the CR-CTC task has --use-unsup-cr-ctc; every other task drops unlabelled cuts
            keep_unlabelled=a.use_unsup_cr_ctc,
        )
        return cuts.filter(self.train_filter), split

    def train_dataloader(self, tokenizer: Any, sampler_state_dict: dict | None = None) -> DataLoader:
        """Training DataLoader; ``dl.sampler`` is a :class:`ResumableSampler` over the bucketing sampler
        (``state_dict()``: the position of the last batch this loader handed out; ``set_epoch(epoch)``).
        Pass a saved ``sampler_state_dict`` to resume right after that batch."""
        a = self.config
        cuts, split = self.train_cuts(tokenizer)
        sampler = self._sampler(
            cuts,
            shuffle=a.shuffle,
            drop_last=a.drop_last,
            buffer_size=a.bucket_buffer_size,
            shuffle_buffer_size=a.shuffle_buffer_size,
            world_size=1 if split else self.world_size,
            rank=0 if split else self.rank,
            seed=a.seed,
        )
        self.train_filter.reset()  # the sampler peeked at the first cuts
        resumable = ResumableSampler(sampler, cuts, seed=a.seed, world_size=self.world_size, rank=self.rank)
        if sampler_state_dict is not None:
            resumable.load_state_dict(copy.deepcopy(sampler_state_dict))
            log.info(f"resuming the training sampler: epoch {resumable.epoch} (from 0), after its batch "
                     f"{resumable.received}")
        return self._loader(self._dataset(tokenizer, train=True), resumable, a.num_workers, TrainDataLoader)

    def dev_dataloader(self, tokenizer: Any) -> DataLoader:
        """Validation DataLoader over all --dev-shar directories (no augmentation, full set on
        every rank; cuts whose tokens cannot fit the encoder frames are removed)."""
        a = self.config
        if not a.dev_shar:
            raise ValueError("no validation data: pass --dev-shar DIR")
        sets = [open_shar(d, **shar_read_options(a)) for d in a.dev_shar]
        cuts = sets[0]
        for more in sets[1:]:
            cuts = cuts + more  # lazy concatenation
        keep = CutFilter(tokenizer, output_downsampling_factor=self.output_downsampling_factor,
                         remove_diacritics=a.remove_diacritics)
        cuts = cuts.filter(keep)
        return self._loader(self._dataset(tokenizer, train=False), self._eval_sampler(cuts),
                            min(a.num_workers, 2))

    def test_dataloaders(self, tokenizer: Any) -> dict[str, DataLoader]:
        """One DataLoader per --test-shar NAME=DIR (no filtering, no augmentation)."""
        out: dict[str, DataLoader] = {}
        for spec in self.config.test_shar:
            name, d = parse_named_dir(spec)
            if name in out:
                raise ValueError(f"--test-shar {spec!r}: test set name {name!r} given twice")
            out[name] = self._loader(self._dataset(tokenizer, train=False),
                                     self._eval_sampler(open_shar(d, **shar_read_options(self.config))),
                                     self.config.num_workers)
        return out

