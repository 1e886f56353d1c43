"""SpecAugment (anyphone.models.specaug): what CR-CTC's two views and the data pipeline's augmentation rely on."""

import torch

from anyphone.data.augment import SpecAugment as DataSpecAugment
from anyphone.models.specaug import SpecAugment, SpecAugmentConfig, mask_features


def _batch():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 400, 80, generator=g) * 4 - 6
    lens = torch.tensor([400, 250, 120])
    feats[1, 250:] = 0
    feats[2, 120:] = 0
    return feats, lens


def test_masks_fill_with_the_utterance_mean_and_leave_padding():
    feats, lens = _batch()
    cfg = SpecAugmentConfig(time_warp_factor=0, p=1.0)
    out = mask_features(feats, lens, cfg, torch.Generator().manual_seed(1))
    for i, n in enumerate(lens.tolist()):
        mean = feats[i, :n].mean()
        changed = out[i, :n] != feats[i, :n]
        assert changed.any(), "every utterance gets masks when p=1"
        assert torch.allclose(out[i, :n][changed], mean.expand(int(changed.sum())), atol=1e-5)
        assert torch.equal(out[i, n:], feats[i, n:])  # padding untouched


def test_no_augmentation_when_p_is_zero():
    feats, lens = _batch()
    out = SpecAugment(SpecAugmentConfig(p=0.0), seed=3)(feats, lens)
    assert torch.equal(out, feats)


def test_two_views_share_the_warp_and_differ_in_masks():
    feats, lens = _batch()
    # without masks the two views are the same warped batch
    no_masks = SpecAugmentConfig(num_freq_masks=0, num_time_masks=0, p=1.0)
    views, view_lens = SpecAugment(no_masks, seed=5).two_views(feats, lens)
    assert views.shape == (6, 400, 80) and view_lens.tolist() == lens.tolist() * 2
    assert torch.equal(views[:3], views[3:])
    assert not torch.equal(views[0], feats[0])  # utterance 0 is long enough to warp
    views, _ = SpecAugment(SpecAugmentConfig(p=1.0), seed=5).two_views(feats, lens)
    assert not torch.equal(views[0], views[3])


def test_seeded_augment_is_reproducible_and_leaves_the_global_rng_alone():
    feats, lens = _batch()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = DataSpecAugment(p=1.0, seed=7)(feats, lens)
    assert torch.equal(torch.get_rng_state(), before)
    b = DataSpecAugment(p=1.0, seed=7)(feats, lens)
    c = DataSpecAugment(p=1.0, seed=8)(feats, lens)
    assert torch.equal(a, b) and not torch.equal(a, c)
    aug = DataSpecAugment(p=1.0, seed=8)
    aug.reseed(7)
    assert torch.equal(aug(feats, lens), a)


def _warp_one_by_one(x, lens, centre, new_centre, apply):
    """The warp as a loop of F.interpolate calls, one utterance and segment at a time."""
    out = x.clone()
    for i, n in enumerate(lens.tolist()):
        if not apply[i]:
            continue
        c, nc = int(centre[i]), int(new_centre[i])
        seg = x[i, :n].t().unsqueeze(0)
        left = torch.nn.functional.interpolate(seg[:, :, :c], size=nc, mode="linear", align_corners=False)
        right = torch.nn.functional.interpolate(seg[:, :, c:], size=n - nc, mode="linear", align_corners=False)
        out[i, :n] = torch.cat([left, right], dim=2)[0].t()
    return out


def test_batched_time_warp_equals_per_utterance_interpolation():
    feats, lens = _batch()
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        centre = torch.stack([torch.randint(1, int(n) - 1, (), generator=g) for n in lens])
        shift = torch.stack([torch.randint(-int(c) + 1, int(n) - int(c), (), generator=g) for c, n in zip(centre, lens)])
        new_centre = centre + shift  # any split point: stretch on one side, squeeze on the other
        apply = torch.tensor([True, True, False])
        from anyphone.models.specaug import warp_frames

        out = warp_frames(feats, lens, centre, new_centre, apply)
        torch.testing.assert_close(out, _warp_one_by_one(feats, lens, centre, new_centre, apply), atol=1e-3, rtol=1e-4)
        assert torch.equal(out[2], feats[2]) and torch.equal(out[1, 250:], feats[1, 250:])


def test_time_warp_moves_frames_only_of_long_enough_utterances():
    from anyphone.models.specaug import time_warp

    feats, lens = _batch()
    out = time_warp(feats, lens, factor=80, p=1.0, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(out[0], feats[0]) and not torch.equal(out[1, :250], feats[1, :250])
    assert torch.equal(out[2], feats[2])  # 120 frames <= 2 * 80 + 2: left alone
    assert torch.equal(out[1, 250:], feats[1, 250:])
