"""Tests for anyphone.weights.checkpoint."""

import copy
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from anyphone.optim import Eden, ScaledAdam
from anyphone.weights import checkpoint as ck


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.norm = nn.BatchNorm1d(2)  # brings an integer buffer (num_batches_tracked)
        self.out = nn.Linear(2, 3, bias=False)

    def forward(self, x):
        return self.out(self.norm(self.lin(x)))


def _model(seed: int) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_save_load_roundtrip_with_weights_only(tmp_path):
    model = _model(0)
    opt = ScaledAdam(model.named_parameters(), lr=0.05, clipping_scale=2.0)
    sched = Eden(opt, lr_batches=10, lr_epochs=2)
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    path = ck.save_checkpoint(
        tmp_path / "checkpoint-8.pt", model, optimizer=opt, scheduler=sched, scaler=scaler,
        sampler={"epoch": 2, "diagnostics": {"kept": 5}},
        params={"epoch": 2, "exp_dir": tmp_path, "train_state": {"batch_idx_train": 8}},
    )
    raw = torch.load(path, weights_only=True)
    assert raw["batch_idx_train"] == 8 and raw["exp_dir"] == str(tmp_path)
    fresh = _model(1)
    rest = ck.load_checkpoint(path, fresh)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert rest["epoch"] == 2 and rest["sampler"] == {"epoch": 2, "diagnostics": {"kept": 5}}
    assert rest["train_state"] == {"batch_idx_train": 8}
    scaler2 = torch.amp.GradScaler("cpu", init_scale=1.0)
    ck.load_checkpoint(path, _model(2), scaler=scaler2)
    assert scaler2.get_scale() == 512.0


def test_optimizer_state_survives_save_load(tmp_path):
    x = torch.randn(16, 3)
    model = _model(0)
    opt = ScaledAdam(model.named_parameters(), lr=0.05, clipping_scale=2.0)
    sched = Eden(opt, lr_batches=10, lr_epochs=2, warmup_batches=4)
    model.train()

    def one_step(m, o, s):
        o.zero_grad()
        (m(x) ** 2).mean().backward()
        o.step()
        s.step_batch()

    for _ in range(12):
        one_step(model, opt, sched)
    path = ck.save_checkpoint(tmp_path / "checkpoint-12.pt", model, optimizer=opt, scheduler=sched)
    model2 = _model(5)
    opt2 = ScaledAdam(model2.named_parameters(), lr=0.05, clipping_scale=2.0)
    sched2 = Eden(opt2, lr_batches=10, lr_epochs=2, warmup_batches=4)
    ck.load_checkpoint(path, model2, optimizer=opt2, scheduler=sched2)
    assert sched2.batch == 12 and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for _ in range(6):
        one_step(model, opt, sched)
        one_step(model2, opt2, sched2)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    model = _model(0)
    target = tmp_path / "checkpoint-4.pt"
    ck.save_checkpoint(target, model, params={"batch_idx_train": 4})
    good = target.read_bytes()

    real_save = torch.save

    def exploding_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes of a checkpoint")
        raise KeyboardInterrupt("simulated crash during save")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(target, _model(1), params={"batch_idx_train": 4})
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(tmp_path / "checkpoint-8.pt", model)
    monkeypatch.setattr(torch, "save", real_save)
    assert _files(tmp_path) == ["checkpoint-4.pt"]  # no temporary or half-written file
    assert target.read_bytes() == good  # the old checkpoint is intact
    assert ck.latest_checkpoint(tmp_path) == target


def test_rng_restore_reproduces_random_numbers(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's legacy state
    path = ck.save_checkpoint(tmp_path / "checkpoint-1.pt", _model(0))

    def draw():
        return [random.random(), float(np.random.normal()), float(np.random.rand()), torch.rand(3).tolist()]

    first = draw()
    draw()  # move every generator on
    ck.load_checkpoint(path, _model(0), rng=True)
    assert draw() == first
    rest = ck.load_checkpoint(path, _model(0))
    ck.restore_rng_state(rest["rng"])
    assert draw() == first


def test_ddp_wrapped_model_and_prefixed_files(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    own_group = not dist.is_initialized()
    if own_group:  # a one-process gloo group on CPU is enough to build a real DDP wrapper
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = _model(0)
        wrapped = nn.parallel.DistributedDataParallel(model)
        path = ck.save_checkpoint(tmp_path / "checkpoint-2.pt", wrapped)
        assert all(not k.startswith("module.") for k in torch.load(path, weights_only=True)["model"])
        # a file written from the wrapper's own state_dict (module.* keys) loads into a bare or wrapped model
        torch.save({"model": wrapped.state_dict()}, tmp_path / "foreign.pt")
        bare, wrapped2 = _model(1), nn.parallel.DistributedDataParallel(_model(2))
        ck.load_checkpoint(tmp_path / "foreign.pt", bare)
        ck.load_checkpoint(tmp_path / "foreign.pt", wrapped2)
        for a, b, c in zip(model.state_dict().values(), bare.state_dict().values(),
                           wrapped2.module.state_dict().values()):
            assert torch.equal(a, b) and torch.equal(a, c)
        # update_averaged_model accepts the wrapper too
        avg = _model(3).double()
        ck.update_averaged_model(wrapped, avg, average_period=1, batch_idx_train=1)
        assert torch.allclose(avg.lin.weight, model.lin.weight.double())
    finally:
        if own_group:
            dist.destroy_process_group()


def test_find_latest_and_keep_last_k(tmp_path):
    model = _model(0)
    for n in (100, 20, 3000, 400):
        ck.save_checkpoint(tmp_path / f"checkpoint-{n}.pt", model, params={"batch_idx_train": n}, rng=False)
    (tmp_path / "checkpoint-x.pt").write_text("not a checkpoint name we use")
    names = [p.name for p in ck.find_checkpoints(tmp_path)]
    assert names == ["checkpoint-3000.pt", "checkpoint-400.pt", "checkpoint-100.pt", "checkpoint-20.pt"]
    assert [p.name for p in ck.find_checkpoints(tmp_path, iteration=-400)] == [
        "checkpoint-400.pt", "checkpoint-100.pt", "checkpoint-20.pt"]
    assert ck.latest_checkpoint(tmp_path).name == "checkpoint-3000.pt"
    removed = ck.remove_old_checkpoints(tmp_path, keep_last_k=2)
    assert sorted(p.name for p in removed) == ["checkpoint-100.pt", "checkpoint-20.pt"]
    assert _files(tmp_path) == ["checkpoint-3000.pt", "checkpoint-400.pt", "checkpoint-x.pt"]
    assert ck.remove_old_checkpoints(tmp_path, keep_last_k=0) == []
    # an epoch checkpoint saved later (more batches) wins; a truncated newest file is skipped
    ck.save_checkpoint(tmp_path / "epoch-3.pt", model, params={"train_state": {"batch_idx_train": 3500}})
    assert ck.latest_checkpoint(tmp_path).name == "epoch-3.pt"
    assert ck.latest_checkpoint(tmp_path, include_epochs=False).name == "checkpoint-3000.pt"
    (tmp_path / "checkpoint-9000.pt").write_bytes(b"truncated")
    assert ck.latest_checkpoint(tmp_path, include_epochs=False).name == "checkpoint-3000.pt"
    assert ck.latest_checkpoint(tmp_path / "nowhere") is None


def test_average_of_two_checkpoints_is_mean_of_weights(tmp_path):
    m1, m2 = _model(1), _model(2)
    m1.norm.num_batches_tracked.fill_(3)
    m2.norm.num_batches_tracked.fill_(6)
    p1 = ck.save_checkpoint(tmp_path / "checkpoint-1.pt", m1)
    p2 = ck.save_checkpoint(tmp_path / "checkpoint-2.pt", m2)
    avg = ck.average_checkpoints([p1, p2])
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert set(avg) == set(s1)
    for k in s1:
        if s1[k].is_floating_point():
            assert torch.allclose(avg[k], (s1[k] + s2[k]) / 2, atol=1e-7)
            assert avg[k].dtype == s1[k].dtype
    assert avg["norm.num_batches_tracked"].item() == 4  # floor((3 + 6) / 2), still an integer
    assert avg["norm.num_batches_tracked"].dtype == torch.int64
    model = _model(3)
    model.load_state_dict(avg)  # loadable as is


def test_missing_checkpoint_message_names_the_file(tmp_path):
    p1 = ck.save_checkpoint(tmp_path / "checkpoint-1.pt", _model(1))
    missing = tmp_path / "checkpoint-2.pt"
    with pytest.raises(FileNotFoundError, match="checkpoint-2.pt"):
        ck.average_checkpoints([p1, missing])
    with pytest.raises(FileNotFoundError, match="checkpoint-77.pt"):
        ck.load_checkpoint(tmp_path / "checkpoint-77.pt", _model(1))
    with pytest.raises(FileNotFoundError, match="checkpoint-5.pt"):
        ck.average_checkpoints_with_averaged_model(tmp_path, iter=5, avg=1)
    with pytest.raises(FileNotFoundError, match=r"checkpoint-0\.pt|checkpoint--"):
        ck.average_checkpoints_with_averaged_model(tmp_path, iter=1, avg=1, save_every_n=1)
    with pytest.raises(FileNotFoundError, match="epoch-2.pt"):
        ck.average_epochs_with_averaged_model(tmp_path, epoch=3, avg=1)


def test_update_averaged_model_matches_hand_computation():
    cur, avg = _model(1), copy.deepcopy(_model(2)).to(torch.float64)
    cur.norm.num_batches_tracked.fill_(7)
    w_cur = cur.lin.weight.detach().clone().double()
    w_avg = avg.lin.weight.detach().clone()
    ck.update_averaged_model(cur, avg, average_period=10, batch_idx_train=40)
    # w = 10 / 40: avg = 0.75 * avg + 0.25 * cur
    assert torch.allclose(avg.lin.weight, 0.75 * w_avg + 0.25 * w_cur, atol=1e-12)
    assert avg.norm.num_batches_tracked.item() == 7
    # the first update (batch_idx_train == average_period) replaces the initial copy
    ck.update_averaged_model(cur, avg, average_period=10, batch_idx_train=10)
    assert torch.allclose(avg.lin.weight, w_cur, atol=1e-12)
    with pytest.raises(ValueError, match="batch_idx_train=5"):
        ck.update_averaged_model(cur, avg, average_period=10, batch_idx_train=5)


def test_update_averaged_model_tied_weights_updated_once():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(2, 2, bias=False)
            self.b = nn.Linear(2, 2, bias=False)
            self.b.weight = self.a.weight

    torch.manual_seed(0)
    cur, avg = Tied(), Tied()
    w_cur, w_avg = cur.a.weight.detach().clone(), avg.a.weight.detach().clone()
    ck.update_averaged_model(cur, avg, average_period=1, batch_idx_train=2)
    assert torch.allclose(avg.b.weight, 0.5 * w_avg + 0.5 * w_cur)


def test_averaged_model_averaging_matches_hand_computation(tmp_path):
    """Train-like run: snapshots every 2 batches, checkpoints every 4; compare with the direct mean."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    model_avg = copy.deepcopy(model).to(torch.float64)
    average_period, save_every_n = 2, 4
    snapshots = {}
    for batch_idx in range(1, 13):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        if batch_idx % average_period == 0:
            ck.update_averaged_model(model, model_avg, average_period, batch_idx)
            snapshots[batch_idx] = {k: v.clone().double() for k, v in model.state_dict().items()}
        if batch_idx % save_every_n == 0:
            ck.save_checkpoint(ck.checkpoint_path(tmp_path, batch_idx), model, model_avg=model_avg,
                               params={"train_state": {"batch_idx_train": batch_idx}}, rng=False)
    # model_avg at batch 12 is the plain mean of the six snapshots
    for k, v in model_avg.state_dict().items():
        expected = torch.stack([s[k] for s in snapshots.values()]).mean(0)
        assert torch.allclose(v, expected, atol=1e-10)
    # --iter 12 --avg 2: average over batches (4, 12], i.e. snapshots at 6, 8, 10, 12
    got = ck.average_checkpoints_with_averaged_model(tmp_path, iter=12, avg=2, save_every_n=save_every_n)
    got_found = ck.average_checkpoints_with_averaged_model(tmp_path, iter=12, avg=2)
    for k in got:
        expected = torch.stack([snapshots[b][k] for b in (6, 8, 10, 12)]).mean(0)
        assert torch.allclose(got[k].double(), expected, atol=1e-5)
        assert got[k].dtype == torch.float32
        assert torch.equal(got[k], got_found[k])
    fresh = nn.Linear(4, 3)
    fresh.load_state_dict(got)
    with pytest.raises(FileNotFoundError, match="needs 4 checkpoint-N.pt"):
        ck.average_checkpoints_with_averaged_model(tmp_path, iter=12, avg=3)


def test_epoch_averaged_model(tmp_path):
    model = nn.Linear(2, 2)
    avg_model = copy.deepcopy(model).double()
    for epoch, batch_idx in ((1, 10), (2, 20), (3, 30)):
        with torch.no_grad():
            avg_model.weight.fill_(float(epoch))
            avg_model.bias.fill_(float(epoch))
        ck.save_checkpoint(tmp_path / f"epoch-{epoch}.pt", model, model_avg=avg_model,
                           params={"batch_idx_train": batch_idx}, rng=False)
    got = ck.average_epochs_with_averaged_model(tmp_path, epoch=3, avg=2)
    # (3 * 30 - 1 * 10) / 20 = 4
    assert torch.allclose(got["weight"], torch.full((2, 2), 4.0))
    with pytest.raises(ValueError, match="epoch - avg >= 1"):
        ck.average_epochs_with_averaged_model(tmp_path, epoch=3, avg=3)


def test_params_clash_and_non_plain_state(tmp_path):
    with pytest.raises(ValueError, match="'model'"):
        ck.save_checkpoint(tmp_path / "a.pt", _model(0), params={"model": 1})

    class Odd:
        pass

    with pytest.raises(TypeError, match="sampler"):
        ck.save_checkpoint(tmp_path / "b.pt", _model(0), sampler={"thing": Odd()})
    assert not (tmp_path / "b.pt").exists()


def test_weights_of_another_shape_are_refused_in_one_line(tmp_path):
    from torch import nn

    from anyphone.weights.checkpoint import CheckpointMismatchError, load_model_weights

    src = nn.Linear(4, 3).state_dict()
    with pytest.raises(CheckpointMismatchError, match=r"^w\.pt: .*weight has shape \(3, 4\), expected \(5, 4\)") as e:
        load_model_weights(nn.Linear(4, 5), src, "w.pt")
    assert "\n" not in str(e.value)
    model = nn.Linear(4, 3)
    load_model_weights(model, {"module." + k: v for k, v in src.items()}, "w.pt")  # DDP prefix stripped
    assert torch.equal(model.weight, src["weight"])
