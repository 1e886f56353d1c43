"""A baseline family: a bidirectional LSTM with a CTC head, of the kind PyTorch-Kaldi offers.

Front end: three 3x3 convolutions over the 80-bin fbank (strides 1, 2, 1 in time, no padding), so the output
has ``(T - 7) // 2`` frames at 50 Hz, the Zipformer CR-CTC model's frame rate and count; then ``num_layers``
bidirectional LSTM layers of ``hidden_dim`` units per direction, and a linear CTC head over the SentencePiece
vocabulary. The backward direction of every layer reads each utterance from its own last frame (not from the
padding), so an utterance gives the same output whatever it is batched with. Trained with plain CTC (the
repo's :func:`anyphone.losses.crctc.ctc_loss`), decoded with the shared CTC searches, exported to ONNX as one
graph of log-probs (the LSTM layers as ONNX ``LSTM`` ops with per-utterance ``sequence_lens``).

Its only footprint outside this file is its line in :data:`anyphone.families.REGISTRY`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from anyphone.decoding.options import DecodeOptions
from anyphone.families.base import CtcFamily, OnnxGraph, example_features, feature_dynamic_shapes
from anyphone.utils import state_dict_mismatch, str2bool

_PRESETS: dict[str, dict[str, Any]] = {
    # ~4.5M parameters: trains on a CPU
    "tiny": {"num_layers": 3, "hidden_dim": 256, "conv_channels": 32, "dropout": 0.1},
    "small": {"num_layers": 4, "hidden_dim": 512, "conv_channels": 64, "dropout": 0.2},
}
_FLAGS = (("--blstm-layers", "num_layers", int, "BLSTM layers."),
          ("--blstm-hidden-dim", "hidden_dim", int, "LSTM units per direction."),
          ("--blstm-conv-channels", "conv_channels", int, "Channels of the convolutional front end."),
          ("--blstm-dropout", "dropout", float, "Dropout between the layers (training only)."))


@dataclass(frozen=True)
class BlstmConfig:
    """The BLSTM-CTC model's shape (lhotse-style: ``to_dict``/``from_dict``/``replace``)."""

    num_layers: int = 3
    hidden_dim: int = 256
    conv_channels: int = 32
    dropout: float = 0.1
    feature_dim: int = 80
    vocab_size: int = 127
    name: str = "tiny"

    def __post_init__(self) -> None:
        for f in ("num_layers", "hidden_dim", "conv_channels", "feature_dim", "vocab_size"):
            v = getattr(self, f)
            if int(v) != v or v < 1:
                raise ValueError(f"BlstmConfig {f}={v!r}, expected an integer >= 1")
        if self.feature_dim < 7:
            raise ValueError(f"BlstmConfig feature_dim={self.feature_dim}, expected >= 7 (three 3x3 convolutions)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"BlstmConfig dropout={self.dropout!r}, expected 0 <= dropout < 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlstmConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown BlstmConfig field(s) {unknown}; expected some of {sorted(known)}")
        return cls(**dict(data))

    def replace(self, **overrides: Any) -> BlstmConfig:
        return replace(self, **overrides)

    @property
    def front_dim(self) -> int:
        """Features per frame after the front end: channels x frequency bins left by the three convolutions."""
        return self.conv_channels * ((self.feature_dim - 5) // 2 - 1)


def _reverse_index(lens: Tensor, t: int | torch.SymInt) -> Tensor:
    """(N, t) frame indices that read each row backwards from its own last frame (padding frames map to
    themselves)."""
    ar = torch.arange(t, device=lens.device).unsqueeze(0)
    idx = lens.unsqueeze(1) - 1 - ar
    return torch.where(idx >= 0, idx, ar)


def _reverse(x: Tensor, idx: Tensor) -> Tensor:
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[2]))


class BlstmCtcModel(nn.Module):
    """x (N, T, 80) zero-padded fbank, x_lens (N,) -> (CTC log-probs (N, (T-7)//2, V), lengths (N,))."""

    def __init__(self, cfg: BlstmConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.conv_channels
        self.frontend = nn.Sequential(
            nn.Conv2d(1, c // 4 or 1, 3), nn.ReLU(),
            nn.Conv2d(c // 4 or 1, c, 3, stride=2), nn.ReLU(),
            nn.Conv2d(c, c, 3), nn.ReLU(),
        )
        self.input_proj = nn.Linear(cfg.front_dim, cfg.hidden_dim)
        self.forward_lstms = nn.ModuleList()
        self.backward_lstms = nn.ModuleList()
        for i in range(cfg.num_layers):
            size = cfg.hidden_dim if i == 0 else 2 * cfg.hidden_dim
            self.forward_lstms.append(nn.LSTM(size, cfg.hidden_dim, batch_first=True))
            self.backward_lstms.append(nn.LSTM(size, cfg.hidden_dim, batch_first=True))
        self.dropout = nn.Dropout(cfg.dropout)
        self.ctc_head = nn.Linear(2 * cfg.hidden_dim, cfg.vocab_size)

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def front(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """(N, T, F) -> (N, (T-7)//2, hidden_dim), lengths."""
        x = self.frontend(x.unsqueeze(1))  # (N, C, T', F')
        n, c, t, f = x.shape
        x = self.input_proj(x.transpose(1, 2).reshape(n, t, c * f))
        return x, torch.div(x_lens - 7, 2, rounding_mode="floor")

    def layer(self, i: int, x: Tensor, lens: Tensor, rev: Tensor) -> Tensor:
        """One bidirectional layer; padding frames come out as zeros."""
        fwd, _ = self.forward_lstms[i](x)
        bwd, _ = self.backward_lstms[i](_reverse(x, rev))
        valid = (torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lens.unsqueeze(1)).unsqueeze(-1)
        return torch.cat((fwd, _reverse(bwd, rev)), dim=-1) * valid

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        x, lens = self.front(x, x_lens)
        rev = _reverse_index(lens, x.shape[1])
        for i in range(self.cfg.num_layers):
            x = self.layer(i, self.dropout(x), lens, rev)
        return self.ctc_head(self.dropout(x)).log_softmax(-1), lens


# ---- ONNX: each layer is one custom op that the exporter writes as an ONNX LSTM ----------------------------
@torch.library.custom_op("anyphone_blstm::bilstm", mutates_args=())
def _bilstm_op(x: Tensor, lens: Tensor, w_ih: Tensor, w_hh: Tensor, b: Tensor) -> Tensor:
    """x (N, T, C), lens (N,); w_ih (2, 4H, C), w_hh (2, 4H, H), b (2, 8H) (b_ih then b_hh) per direction, in
    PyTorch's gate order (i, f, g, o) -> (N, T, 2H), zeros on padding. Eager: the model's own arithmetic."""
    h = w_hh.shape[2]
    rev = _reverse_index(lens, x.shape[1])
    outs = []
    for d in range(2):
        lstm = nn.LSTM(x.shape[2], h, batch_first=True).to(x.dtype)
        with torch.no_grad():
            lstm.weight_ih_l0.copy_(w_ih[d])
            lstm.weight_hh_l0.copy_(w_hh[d])
            lstm.bias_ih_l0.copy_(b[d, : 4 * h])
            lstm.bias_hh_l0.copy_(b[d, 4 * h:])
            y, _ = lstm(x if d == 0 else _reverse(x, rev))
        outs.append(y if d == 0 else _reverse(y, rev))
    valid = (torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lens.unsqueeze(1)).unsqueeze(-1)
    return torch.cat(outs, dim=-1) * valid


@_bilstm_op.register_fake
def _(x: Tensor, lens: Tensor, w_ih: Tensor, w_hh: Tensor, b: Tensor) -> Tensor:
    return x.new_empty(x.shape[0], x.shape[1], 2 * w_hh.shape[2])


def _onnx_bilstm(hidden: int):
    """The onnxscript function writing :func:`_bilstm_op` as ONNX's bidirectional LSTM (gate order i, o, f, c;
    ``sequence_lens`` makes the backward direction start at each utterance's last frame)."""
    from onnxscript import opset18 as op

    def bilstm(x, lens, w_ih, w_hh, b):
        def gates(w):
            i, f, g, o = op.Split(w, num_outputs=4, axis=1)
            return op.Concat(i, o, f, g, axis=1)

        b_ih, b_hh = op.Split(b, num_outputs=2, axis=1)
        y, _, _ = op.LSTM(op.Transpose(x, perm=[1, 0, 2]), gates(w_ih), gates(w_hh),
                          op.Concat(gates(b_ih), gates(b_hh), axis=1), op.Cast(lens, to=6),
                          direction="bidirectional", hidden_size=hidden)
        y = op.Transpose(y, perm=[2, 0, 1, 3])  # (T, 2, N, H) -> (N, T, 2, H)
        return op.Reshape(y, op.Concat(op.Shape(y, start=0, end=2), op.Constant(value_ints=[-1]), axis=0))

    return bilstm


class BlstmCtcExportWrapper(nn.Module):
    """x (N, T, 80), x_lens (N,) -> (log_probs (N, T', V), log_prob_lens (N,)), each layer one ONNX LSTM."""

    def __init__(self, model: BlstmCtcModel) -> None:
        super().__init__()
        self.model = model
        for i, (f, r) in enumerate(zip(model.forward_lstms, model.backward_lstms)):
            self.register_buffer(f"w_ih{i}", torch.stack((f.weight_ih_l0, r.weight_ih_l0)).detach())
            self.register_buffer(f"w_hh{i}", torch.stack((f.weight_hh_l0, r.weight_hh_l0)).detach())
            self.register_buffer(f"b{i}", torch.stack((torch.cat((f.bias_ih_l0, f.bias_hh_l0)),
                                                       torch.cat((r.bias_ih_l0, r.bias_hh_l0)))).detach())

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        x, lens = self.model.front(x, x_lens)
        for i in range(self.model.cfg.num_layers):
            x = _bilstm_op(x, lens, getattr(self, f"w_ih{i}"), getattr(self, f"w_hh{i}"), getattr(self, f"b{i}"))
        return self.model.ctc_head(x).log_softmax(-1), lens


class BlstmCtcFamily(CtcFamily):
    """BLSTM + CTC head at 50 Hz, plain CTC loss."""

    name = "blstm_ctc"
    config_type = BlstmConfig
    output_downsampling_factor = 1
    recommended_decode_options = DecodeOptions(method="ctc-prefix-beam-search", blank_penalty=0.0)

    def __init__(self) -> None:
        self._spec_aug = None

    def add_model_arguments(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("BLSTM-CTC model")
        g.add_argument("--model-size", type=str, default=None, choices=sorted(_PRESETS),
                       help="Preset whose values are used for every --blstm-* flag not given (default: tiny; "
                       "decode.py and export.py read the exp dir's config.json instead)")
        for flag, dest, kind, help_ in _FLAGS:
            g.add_argument(flag, dest=f"blstm_{dest}", type=kind, default=None, help=help_)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        self.add_model_arguments(parser)
        g = parser.add_argument_group("BLSTM-CTC training")
        g.add_argument("--enable-model-spec-aug", type=str2bool, default=True,
                       help="SpecAugment on the fbank inside the training step.")

    def model_flags_given(self, args: argparse.Namespace) -> bool:
        return getattr(args, "model_size", None) is not None or any(
            getattr(args, f"blstm_{dest}", None) is not None for _, dest, _, _ in _FLAGS)

    def config_from_args(self, args: argparse.Namespace, vocab_size: int | None = None) -> BlstmConfig:
        size = getattr(args, "model_size", None) or "tiny"
        values = dict(_PRESETS[size])
        for _, dest, _, _ in _FLAGS:
            v = getattr(args, f"blstm_{dest}", None)
            if v is not None:
                values[dest] = v
        name = size if values == _PRESETS[size] else "custom"
        return BlstmConfig(**values, name=name, **({"vocab_size": vocab_size} if vocab_size else {}))

    def build(self, cfg: BlstmConfig, **options: Any) -> nn.Module:
        return BlstmCtcModel(cfg)

    def recognises(self, state_dict: Mapping[str, Any]) -> bool:
        return "ctc_head.weight" in state_dict and "forward_lstms.0.weight_ih_l0" in state_dict

    def vocab_size_of(self, state_dict: Mapping[str, Any]) -> int:
        return int(state_dict["ctc_head.weight"].shape[0])

    def config_from_state_dict(self, state_dict: Mapping[str, Any], config: Any = None
                               ) -> tuple[BlstmConfig, dict[str, Any]]:
        if not self.recognises(state_dict):
            raise ValueError("not a BLSTM-CTC state_dict (no ctc_head.* / forward_lstms.* weights)")
        if isinstance(config, str):
            if config not in _PRESETS:
                raise ValueError(f"config={config!r}: unknown preset, expected one of {sorted(_PRESETS)}")
            config = BlstmConfig(**_PRESETS[config], name=config)
        elif config is not None and not isinstance(config, BlstmConfig):
            config = BlstmConfig.from_dict(dict(config))
        if config is None:
            layers = sum(1 for k in state_dict if k.startswith("forward_lstms.") and k.endswith(".weight_ih_l0"))
            hidden = int(state_dict["forward_lstms.0.weight_hh_l0"].shape[1])
            channels = int(state_dict["frontend.4.weight"].shape[0])
            values = {"num_layers": layers, "hidden_dim": hidden, "conv_channels": channels}
            preset = next((k for k, v in _PRESETS.items()
                           if all(v[f] == values[f] for f in values)), None)
            bins = int(state_dict["input_proj.weight"].shape[1]) // channels  # (F - 5) // 2 - 1 bins are left
            config = BlstmConfig(**values, dropout=_PRESETS[preset]["dropout"] if preset else 0.1,
                                 feature_dim=80 if (80 - 5) // 2 - 1 == bins else 2 * bins + 7,
                                 name=preset or "custom")
        config = config.replace(vocab_size=self.vocab_size_of(state_dict))
        with torch.device("meta"):
            why = state_dict_mismatch(self.build(config).state_dict(), state_dict)
        if why:
            raise ValueError(f"the BLSTM-CTC config ({config.name}) does not fit the checkpoint: {why}")
        return config, {}

    def compute_loss(self, model: nn.Module, batch: dict, args: argparse.Namespace, batch_idx_train: int,
                     is_training: bool) -> tuple[Tensor, dict[str, float]]:
        from anyphone.losses.crctc import ctc_loss

        unsup = [bool(u) for u in batch.get("unsupervised", [])]
        if any(unsup):
            raise ValueError(f"the batch holds {sum(unsup)} unlabelled cut(s); BLSTM-CTC trains on transcripts only")
        x, x_lens = batch["features"], batch["feature_lens"]
        if is_training and getattr(args, "enable_model_spec_aug", True):
            if self._spec_aug is None:
                from anyphone.models.specaug import SpecAugment

                self._spec_aug = SpecAugment()
            x = self._spec_aug(x, x_lens)
        log_probs, out_lens = model(x, x_lens)
        loss = ctc_loss(log_probs, out_lens, batch["token_ids"])
        return loss, {"ctc_loss": float(loss.detach()), "frames": float(out_lens.sum())}

    def onnx_graphs(self, model: nn.Module, label: str) -> list[OnnxGraph]:
        cfg = model.cfg
        x, lens = example_features(cfg.feature_dim)
        return [OnnxGraph("model", f"model-{label}" if label else "model", BlstmCtcExportWrapper(model).eval(),
                          (x, lens), ["x", "x_lens"], ["log_probs", "log_prob_lens"], feature_dynamic_shapes(9),
                          {"vocab_size": cfg.vocab_size, "context_size": 0, "config": cfg.to_dict()},
                          translations={torch.ops.anyphone_blstm.bilstm.default: _onnx_bilstm(cfg.hidden_dim)},
                          fp16_keep_ops=("LSTM",), patch=False)]


FAMILY = BlstmCtcFamily
