"""PhoneDataModule: batches, filters, weighted Shar mixing, DDP split, sampler resume, augmentation."""

import argparse
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from anyphone.data.augment import (
    NoiseAugment,
    SilenceAugment,
    SpecAugment,
    coloured_noise,
    mix_at_snr,
)
from anyphone.data.config import DataConfig
from anyphone.data.fbank import compute_fbank, num_frames
from anyphone.data.module import (
    PhoneDataModule,
    ctc_min_frames,
    encoder_output_frames,
    str2bool,
)
from anyphone.data.shar import make_cut, open_train_shars, parse_weighted_dir, write_shar
from anyphone.text.tokenizer import IpaTokenizer

TEXTS = ["aba", "kʰæt", "ʃiː", "mama", "goʊ", "tʃɛk", "nɪŋ", "pɑt"]


def _make_shar(out: Path, prefix: str, n: int, lang: str, seed: int, shard_size: int = 4) -> list[str]:
    rng = np.random.default_rng(seed)
    cuts = []
    for i in range(n):
        dur = float(rng.uniform(0.4, 1.6))
        t = np.arange(int(dur * 16000)) / 16000
        wave = (0.2 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.01 * rng.standard_normal(len(t)))
        cuts.append(make_cut(f"{prefix}{i:03d}", wave.astype(np.float32), TEXTS[i % len(TEXTS)], lang))
    write_shar(cuts, out, shard_size=shard_size)
    return [c.id for c in cuts]


@pytest.fixture(scope="module")
def shars(tmp_path_factory):
    root = tmp_path_factory.mktemp("shar")
    a = _make_shar(root / "a", "a", 16, "eng", 0)
    b = _make_shar(root / "b", "b", 8, "deu", 1)
    return root, a, b


@pytest.fixture(scope="module")
def tok():
    return IpaTokenizer.default()


def _args(*extra: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    PhoneDataModule.add_arguments(p)
    plain = ["--speed-perturb", "false", "--noise-prob", "0", "--volume-perturb-prob", "0",
             "--silence-pad-prob", "0", "--empty-prob", "0", "--num-workers", "0", "--num-buckets", "2",
             "--min-duration", "0"]
    return p.parse_args(plain + list(extra))


def test_arguments_and_str2bool():
    for v, want in [("True", True), ("false", False), ("1", True), ("0", False), ("yes", True)]:
        assert str2bool(v) is want
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("maybe")
    a = _args("--train-shar", "/x/a", "--train-shar", "/x/b:0.25", "--test-shar", "t1=/y", "--snr-range", "20,5",
              "--fbank-on-device", "1", "--enable-spec-aug", "True")
    assert a.train_shar == ["/x/a", "/x/b:0.25"]
    assert [parse_weighted_dir(s) for s in a.train_shar] == [("/x/a", 1.0), ("/x/b", 0.25)]
    assert a.snr_range == (5.0, 20.0) and a.fbank_on_device is True and a.enable_spec_aug is True
    assert a.remove_diacritics is False and a.shuffle is True and a.drop_last is True
    # options the trainer already defines (e.g. --seed) are shared, not redefined
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=5)
    PhoneDataModule.add_arguments(p)
    assert p.parse_args([]).seed == 5 and p.parse_args(["--seed", "9"]).seed == 9


def test_frame_rule():
    # ZIPA reference: 231 frames -> 112 (CR-CTC), 56 (transducer)
    assert encoder_output_frames(231, 1) == 112 and encoder_output_frames(231, 2) == 56
    assert encoder_output_frames(160, 2) == 38 and encoder_output_frames(97, 2) == 23
    assert ctc_min_frames([4, 4, 5, 5, 5]) == 8 and ctc_min_frames([]) == 0


def test_dev_batch_contents(shars, tok):
    root, a_ids, _ = shars
    dm = PhoneDataModule(_args("--dev-shar", str(root / "a"), "--max-duration", "4"))
    batches = list(dm.dev_dataloader(tok))
    seen = [cid for b in batches for cid in b["cut_ids"]]
    assert sorted(seen) == sorted(a_ids)  # every dev cut exactly once
    b = batches[0]
    n = len(b["cut_ids"])
    assert set(b) == {"features", "feature_lens", "token_ids", "texts", "cut_ids", "languages",
                      "label_kinds", "unsupervised", "pseudo"}
    assert b["features"].dtype == torch.float32 and b["feature_lens"].dtype == torch.int64
    assert b["features"].shape == (n, int(b["feature_lens"].max()), 80)
    assert b["languages"] == ["eng"] * n
    assert b["token_ids"] == tok.encode(b["texts"])
    assert all(t in TEXTS for t in b["texts"])
    # features equal an independent extraction of the same audio; padding is exactly 0
    from lhotse import CutSet

    cuts = {c.id: c for c in CutSet.from_shar(in_dir=root / "a")}
    waves = [cuts[c].load_audio()[0] for c in b["cut_ids"]]
    ref, ref_lens = compute_fbank(waves)
    assert b["feature_lens"].tolist() == ref_lens.tolist() == [num_frames(len(w)) for w in waves]
    torch.testing.assert_close(b["features"], ref)
    for i, t in enumerate(b["feature_lens"].tolist()):
        assert torch.all(b["features"][i, t:] == 0)
        assert b["features"][i, :t].abs().sum() > 0


def test_fbank_on_device_batch(shars, tok):
    root, _, _ = shars
    dm = PhoneDataModule(_args("--test-shar", f"bset={root / 'b'}", "--fbank-on-device", "true"))
    dls = dm.test_dataloaders(tok)
    assert list(dls) == ["bset"]
    b = next(iter(dls["bset"]))
    assert "features" not in b and b["audio"].dtype == torch.float32 and b["audio_lens"].dtype == torch.int64
    assert b["audio"].shape == (len(b["cut_ids"]), int(b["audio_lens"].max()))
    for i, s in enumerate(b["audio_lens"].tolist()):
        assert torch.all(b["audio"][i, s:] == 0)
    assert b["languages"][0] == "deu"


def test_train_filters(tmp_path, tok):
    long_text = "abababababababababababab"  # 24 tokens, 0 repeats
    cuts = [
        make_cut("ok", np.zeros(16000, np.float32) + 0.01, "aba"),
        make_cut("too_short", np.zeros(1600, np.float32) + 0.01, "a"),
        # 0.4 s -> 40 frames -> (40-7)//2 = 16 encoder frames < 24 tokens
        make_cut("dense", np.zeros(6400, np.float32) + 0.01, long_text),
        make_cut("repeats", np.full(8000, 0.01, np.float32), "aaaaaaaaaaaaaaaaaaaa"),  # 20 tok + 19 rep > 36
    ]
    write_shar(cuts, tmp_path / "f", shard_size=10)
    dm = PhoneDataModule(_args("--train-shar", str(tmp_path / "f"), "--min-duration", "0.2",
                               "--max-duration", "100", "--drop-last", "false"))
    got = [cid for b in dm.train_dataloader(tok) for cid in b["cut_ids"]]
    assert got == ["ok"]
    assert dm.train_filter.removed == {"duration": 1, "channels": 0, "too_many_tokens": 2, "unlabelled": 0}
    # the transducer rate (factor 2) is stricter
    assert encoder_output_frames(num_frames(16000), 2) == 23


def test_weighted_mux_and_repeat(shars):
    root, a_ids, b_ids = shars
    cuts = open_train_shars([f"{root / 'a'}:1", f"{root / 'b'}:3"], seed=3, repeat=True)
    first = [c.id for _, c in zip(range(200), cuts)]
    n_b = sum(cid.startswith("b") for cid in first)
    assert 120 < n_b < 180  # about 3/4 from b, which has only 8 cuts: it is repeated
    assert set(first) <= set(a_ids) | set(b_ids)


def test_ddp_ranks_get_disjoint_data(shars, tok):
    root, a_ids, _ = shars
    seen = []
    for rank in (0, 1):
        dm = PhoneDataModule(_args("--train-shar", str(root / "a"), "--max-duration", "3", "--drop-last", "false"),
                             world_size=2, rank=rank)
        seen.append({cid for b in dm.train_dataloader(tok) for cid in b["cut_ids"]})
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert seen[0] | seen[1] <= set(a_ids) and len(seen[0] | seen[1]) >= 12  # sampler split, tail dropped
    # with an infinite stream the shards themselves are split (a has 4 shards of 4 cuts)
    shard_seen = []
    for rank in (0, 1):
        dm = PhoneDataModule(_args("--train-shar", str(root / "a"), "--max-duration", "3", "--repeat-train", "1",
                                   "--num-cuts-for-bins-estimate", "50", "--bucket-buffer-size", "50",
                                   "--shuffle-buffer-size", "50"), world_size=2, rank=rank)
        it = iter(dm.train_dataloader(tok))
        shard_seen.append({cid for _ in range(10) for cid in next(it)["cut_ids"]})
    assert 0 < len(shard_seen[0]) <= 8 and 0 < len(shard_seen[1]) <= 8 and not shard_seen[0] & shard_seen[1]
    with pytest.raises(ValueError, match="rank=2"):
        PhoneDataModule(_args(), world_size=2, rank=2)


def test_sampler_state_resume(shars, tok):
    root, _, _ = shars
    args = _args("--train-shar", f"{root / 'a'}:1", "--train-shar", f"{root / 'b'}:1", "--max-duration", "3",
                 "--repeat-train", "true", "--seed", "7", "--bucket-buffer-size", "64",
                 "--shuffle-buffer-size", "64", "--num-cuts-for-bins-estimate", "100")
    dm = PhoneDataModule(args)
    dl = dm.train_dataloader(tok)
    it = iter(dl)
    done = [next(it)["cut_ids"] for _ in range(3)]
    state = dl.sampler.state_dict()
    rest = [next(it)["cut_ids"] for _ in range(3)]
    assert done and rest

    dl2 = PhoneDataModule(args).train_dataloader(tok, sampler_state_dict=state)
    it2 = iter(dl2)
    assert [next(it2)["cut_ids"] for _ in range(3)] == rest


def test_train_with_all_augmentations_in_worker(shars, tok, tmp_path):
    root, _, _ = shars
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    import soundfile as sf

    sf.write(noise_dir / "n.wav", 0.1 * coloured_noise(8000, "pink", np.random.default_rng(0)), 8000)
    args = argparse.ArgumentParser()
    PhoneDataModule.add_arguments(args)
    a = args.parse_args(["--train-shar", str(root / "a"), "--max-duration", "4", "--num-workers", "1",
                         "--num-buckets", "2", "--noise-prob", "1", "--noise-dir", str(noise_dir),
                         "--empty-prob", "0.3", "--silence-pad-prob", "0.5", "--enable-spec-aug", "true",
                         "--min-duration", "0"])
    dm = PhoneDataModule(a)
    batches = list(dm.train_dataloader(tok))
    assert batches
    n_sp = 0
    for b in batches:
        n = len(b["cut_ids"])
        assert b["features"].shape[0] == n == len(b["token_ids"]) == len(b["texts"]) == b["feature_lens"].shape[0]
        assert b["features"].shape[1] == int(b["feature_lens"].max()) and b["features"].shape[2] == 80
        assert torch.isfinite(b["features"]).all()
        assert b["token_ids"] == tok.encode(b["texts"])
        n_sp += sum("_sp" in c for c in b["cut_ids"])
    assert n_sp > 0  # speed perturbation is on by default


def test_augment_units_keep_shapes():
    rng = np.random.default_rng(0)
    waves = [0.1 * np.sin(np.arange(n) / 10).astype(np.float32) for n in (8000, 12000, 3000)]
    noisy = NoiseAugment(p=1.0, snr_range=(10, 10), seed=0)(list(waves))
    assert [len(w) for w in noisy] == [len(w) for w in waves]
    for w, y in zip(waves, noisy):
        snr = 10 * np.log10(np.mean(w**2) / np.mean((y - w) ** 2))
        assert abs(snr - 10) < 0.5
    for kind in ("white", "pink", "brown", "hum", "babble"):
        x = NoiseAugment(seed=1).make_noise(kind, 4000, waves)
        assert x.shape == (4000,) and abs(np.sqrt(np.mean(x**2)) - 1) < 1e-3
    # pink noise has more low-frequency power than white noise
    p = np.abs(np.fft.rfft(coloured_noise(16000, "pink", rng))) ** 2
    assert p[10:200].mean() > 5 * p[4000:8000].mean()
    # silent signal: noise at an absolute low level, no division by zero
    y = mix_at_snr(np.zeros(1000, np.float32), coloured_noise(1000, "white", rng), 5.0, rng)
    assert np.isfinite(y).all() and 0 < np.abs(y).max() < 0.5

    padded, emptied = SilenceAugment(pad_prob=1.0, empty_prob=0.0, seed=0)(list(waves))
    assert not any(emptied) and all(len(p) >= len(w) for p, w in zip(padded, waves))
    out, emptied = SilenceAugment(pad_prob=0.0, empty_prob=1.0, seed=0)(list(waves))
    assert all(emptied) and [len(w) for w in out] == [len(w) for w in waves]

    feats = torch.randn(3, 300, 80)
    lens = torch.tensor([300, 200, 50])
    feats[1, 200:] = 0
    feats[2, 50:] = 0
    aug = SpecAugment(p=1.0, seed=0)(feats, lens)
    assert aug.shape == feats.shape
    assert torch.all(aug[1, 200:] == 0) and torch.all(aug[2, 50:] == 0)
    assert not torch.equal(aug[0], feats[0])


def test_noise_bank_from_shar_dir(shars):
    root, _, _ = shars
    aug = NoiseAugment(p=1.0, snr_range=(5, 5), noise_dir=root / "b", kind_weights={
        "white": 0, "pink": 0, "brown": 0, "hum": 0, "babble": 0}, seed=0)
    assert aug.kinds == ["file"]
    x = aug.make_noise("file", 40000, [])  # longer than any noise cut: tiled
    assert x.shape == (40000,) and abs(np.sqrt(np.mean(x**2)) - 1) < 1e-3
    with pytest.raises(FileNotFoundError, match="does not exist"):
        NoiseAugment(noise_dir=root / "nope")


def test_a_namespace_without_the_flags_gets_the_flags_defaults():
    """API callers that build PhoneDataModule from a bare Namespace get the same augmentation as the command line:
    the fallbacks are DataConfig's defaults, which are the parser's (they used to be 0.0 for all four)."""
    parser = argparse.ArgumentParser()
    PhoneDataModule.add_arguments(parser)
    cli = parser.parse_args([])
    bare = PhoneDataModule(argparse.Namespace())
    for name in ("volume_perturb_prob", "silence_pad_prob", "empty_prob", "noise_prob", "seed"):
        assert getattr(bare.config, name) == getattr(cli, name), name
    assert bare.config.noise_prob == 0.3 and bare.config == DataConfig()


def test_data_config_defaults_are_the_flags_defaults():
    parser = argparse.ArgumentParser()
    PhoneDataModule.add_arguments(parser)
    cli = parser.parse_args([])
    from_cli, plain = DataConfig.from_args(cli), DataConfig()
    for f in fields(DataConfig):
        assert getattr(from_cli, f.name) == getattr(plain, f.name), f.name
        if f.name != "use_unsup_cr_ctc":  # the CR-CTC task's flag, not the data module's
            given = getattr(cli, f.name)  # the repeatable flags give lists, the config keeps tuples
            assert (tuple(given) if isinstance(given, list) else given) == getattr(plain, f.name), f.name
    # every flag of the data module is a field (and nothing else is read from the Namespace)
    assert set(vars(cli)) == {f.name for f in fields(DataConfig)} - {"use_unsup_cr_ctc"}
    # given flags arrive typed; attributes the config does not declare are not read
    ns = parser.parse_args(["--train-shar", "/x/a", "--train-shar", "/x/b:0.5", "--snr-range", "20,5",
                            "--max-bad-shards", "3", "--keep-unk-cuts", "1"])
    ns.use_unsup_cr_ctc, ns.not_a_data_flag = True, "ignored"
    cfg = DataConfig.from_args(ns)
    assert cfg.train_shar == ("/x/a", "/x/b:0.5") and cfg.snr_range == (5.0, 20.0)
    assert cfg.max_bad_shards == 3 and cfg.keep_unk_cuts is True and cfg.use_unsup_cr_ctc is True
    # the module takes the config itself, or converts a Namespace once at the door
    assert PhoneDataModule(cfg).config is cfg and PhoneDataModule(ns).config == cfg


def test_data_config_round_trips_through_json_and_refuses_bad_keys():
    import json

    cfg = DataConfig(train_shar=("/a:2", "/b"), dev_shar=("/d",), noise_dir="/n", snr_range=(30, 0),
                     max_duration=120, num_workers=0, use_unsup_cr_ctc=True)
    assert cfg.snr_range == (0.0, 30.0)
    again = DataConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and isinstance(again.train_shar, tuple) and isinstance(again.snr_range, tuple)
    assert cfg.to_dict()["train_shar"] == ["/a:2", "/b"]
    with pytest.raises(ValueError) as e:
        DataConfig.from_dict({"max_duration": 60, "max_durration": 30}, where="run.json")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("run.json: data config: unknown key(s) ['max_durration']")
    with pytest.raises(ValueError, match=r"^run\.json: data config: num_workers='2', expected an integer$"):
        DataConfig.from_dict({"num_workers": "2"}, where="run.json")
    with pytest.raises(ValueError, match=r"^data config: shuffle='yes', expected true or false$"):
        DataConfig.from_dict({"shuffle": "yes"})
    with pytest.raises(ValueError, match="max_bad_shards=-1"):
        DataConfig(max_bad_shards=-1)
    with pytest.raises(ValueError, match="expected an object"):
        DataConfig.from_dict(["max_duration", 60])
