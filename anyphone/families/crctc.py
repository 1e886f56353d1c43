"""The CR-CTC family (ZIPA's Zipa-Cr): a Zipformer with a CTC head at 50 Hz, trained with consistency-regularised
CTC (two SpecAugment views and a KL term between them) or plain CTC."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from anyphone.families.base import CtcFamily, OnnxGraph, example_features, feature_dynamic_shapes
from anyphone.families.zipformer import ZipformerFamily, encode
from anyphone.models.presets import ZipformerConfig
from anyphone.utils import str2bool


def _model_forward(model: nn.Module, x: torch.Tensor, x_lens: torch.Tensor):
    """Call through the (possibly DDP-wrapped) module so DDP sees the forward and syncs gradients."""
    return model(x, x_lens)


class CtcExportWrapper(nn.Module):
    """x (N, T, 80), x_lens (N,) -> (log_probs (N, T', V), log_prob_lens (N,))."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder_embed = model.encoder_embed
        self.encoder = model.encoder
        self.ctc_output = model.ctc_output

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        out, lens = encode(self.encoder_embed, self.encoder, x, x_lens)
        return self.ctc_output(out), lens


class CrCtcFamily(CtcFamily, ZipformerFamily):
    """Zipformer + CTC head, optionally with consistency regularisation (CR-CTC), 50 Hz output."""

    name = "crctc"
    aliases = ("ctc",)  # the ONNX model_type of CTC exports (older exports carry no family name)
    output_downsampling_factor = 1

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        self.add_model_arguments(parser)
        g = parser.add_argument_group("CTC / CR-CTC")
        g.add_argument("--use-cr-ctc", type=str2bool, default=True, help="Consistency-regularised CTC.")
        g.add_argument("--cr-loss-scale", type=float, default=0.15, help="Weight of the CR (KL) term (ZIPA).")
        g.add_argument("--cr-warmup-batches", type=int, default=400,
                       help="Ramp the CR weight in linearly over this many batches (counted from "
                       "--cr-start-batch).")
        g.add_argument("--cr-start-batch", type=int, default=0,
                       help="Before this batch train plain CTC on the unmasked batch, from it on CR-CTC's two "
                       "masked views. While CTC still emits only blanks both views agree and the CR term teaches "
                       "nothing, and the masks delay the moment CTC starts to align (about 2x in our CPU runs), so "
                       "on a small compute budget the second view is better spent later (the CPU demo uses this).")
        g.add_argument("--ctc-loss-scale", type=float, default=1.0)
        g.add_argument("--time-mask-ratio", type=float, default=2.5,
                       help="CR-CTC scales SpecAugment's time masks by this (2.5 in the CR-CTC paper).")
        g.add_argument("--enable-model-spec-aug", type=str2bool, default=True,
                       help="SpecAugment inside the model (CR-CTC's two views, or one view for plain CTC).")
        g.add_argument("--use-unsup-cr-ctc", type=str2bool, default=False,
                       help="Train on unlabelled cuts (custom label_kind 'unlabelled', or no transcript) with the "
                       "CR consistency term alone, never a CTC target (ZIPA's noisy-student models). Off: "
                       "unlabelled cuts are dropped and counted.")
        g.add_argument("--unsup-cr-ctc-loss-scale", type=float, default=0.5,
                       help="Weight of the CR term of unlabelled cuts (labelled and pseudo-labelled ones get 1).")
        g.add_argument("--pseudo-ctc-loss-scale", type=float, default=1.0,
                       help="Weight of the CTC term of pseudo-labelled cuts (custom label_kind 'pseudo', written "
                       "by local/pseudo_label.py); labelled cuts get 1.")

    def build(self, cfg: ZipformerConfig, **options: Any) -> nn.Module:
        from anyphone.models.ctc import CtcModel

        return CtcModel(cfg)

    def recognises(self, state_dict: Mapping[str, Any]) -> bool:
        keys = state_dict.keys()
        return any(k.startswith("ctc_output.") for k in keys) and any(k.startswith("encoder.encoders.") for k in keys) \
            and not any(k.startswith(("decoder.", "joiner.")) for k in keys)

    def vocab_size_of(self, state_dict: Mapping[str, Any]) -> int:
        return int(state_dict["ctc_output.1.weight"].shape[0])

    def __init__(self) -> None:
        self._spec_aug = None

    def _specaug(self, args):
        if self._spec_aug is None:
            from anyphone.models.specaug import SpecAugment, SpecAugmentConfig

            self._spec_aug = SpecAugment(SpecAugmentConfig.for_cr_ctc(args.time_mask_ratio) if args.use_cr_ctc
                                         else SpecAugmentConfig())
        return self._spec_aug

    @staticmethod
    def _cr_start_batch(args) -> int | None:
        """The first training batch with CR-CTC's two views (--cr-start-batch); None without CR-CTC. The loss and
        the progress estimate both ask here, so they agree on the switch."""
        return getattr(args, "cr_start_batch", 0) if args.use_cr_ctc else None

    def work_between(self, args, first: int, last: int) -> float:
        # from --cr-start-batch on the encoder runs on both masked views of every cut: those batches count twice
        start = self._cr_start_batch(args)
        two_views = 0 if start is None else max(last - max(first, start) + 1, 0)
        return super().work_between(args, first, last) + two_views

    def compute_loss(self, model, batch: dict, args, batch_idx_train: int, is_training: bool):
        loss, info, _ = self._loss_and_log_probs(model, batch, args, batch_idx_train, is_training)
        return loss, info

    def validation_step(self, model, batch: dict, args, batch_idx_train: int):
        from anyphone.decoding.ctc import ctc_greedy_search

        # the dev loss and the dev PER from one encoder pass (greedy_decode would run a second, identical one)
        loss, info, (log_probs, out_lens) = self._loss_and_log_probs(model, batch, args, batch_idx_train, False)
        return loss, info, ctc_greedy_search(log_probs, out_lens)

    def _loss_and_log_probs(self, model, batch: dict, args, batch_idx_train: int, is_training: bool):
        from anyphone.losses.crctc import cr_consistency_loss, cr_loss_scale_at

        x, x_lens = batch["features"], batch["feature_lens"]
        targets: list[list[int]] = batch["token_ids"]
        n = len(targets)
        cr_start = self._cr_start_batch(args)
        use_cr = is_training and cr_start is not None and batch_idx_train >= cr_start
        warming_up = args.use_cr_ctc and is_training and not use_cr
        if is_training and args.enable_model_spec_aug and not warming_up:
            aug = self._specaug(args)
            if use_cr:
                x, x_lens = aug.two_views(x, x_lens)
            else:
                x = aug(x, x_lens)
        elif use_cr:
            x, x_lens = x.repeat(2, 1, 1), x_lens.repeat(2)
        log_probs, out_lens = _model_forward(model, x, x_lens)
        info: dict[str, float] = {}
        # per-cut CTC weights: labelled 1, pseudo-labelled --pseudo-ctc-loss-scale, unlabelled 0 (never a target);
        # per-cut CR weights: 1, 1, --unsup-cr-ctc-loss-scale
        ctc_w, cr_w = self.cut_weights(batch, args, n)
        views = 2 if use_cr else 1
        ctc = self._weighted_ctc(log_probs, out_lens, targets * views, ctc_w * views) * (1.0 / views)
        loss = args.ctc_loss_scale * ctc
        info["ctc_loss"] = float(ctc.detach())
        if use_cr:
            cr = cr_consistency_loss(log_probs, out_lens, torch.tensor(cr_w * 2)) * 0.5
            cr_scale = cr_loss_scale_at(batch_idx_train - cr_start, args.cr_loss_scale, args.cr_warmup_batches)
            loss = loss + cr_scale * cr
            info["cr_loss"] = float(cr.detach())
        frames = float(out_lens[:n].sum())
        info["frames"] = frames
        return loss, info, (log_probs, out_lens)

    @staticmethod
    def cut_weights(batch: dict, args, n: int) -> tuple[list[float], list[float]]:
        """(CTC weight, CR weight) per cut from the batch's ``unsupervised`` and ``pseudo`` masks.

        Unlabelled cuts get CTC weight 0 (their empty ``token_ids`` are a placeholder, never a silence target)
        and CR weight ``--unsup-cr-ctc-loss-scale``; they are refused when ``--use-unsup-cr-ctc`` is off (the
        data module drops them then, so a batch holding one was built elsewhere).
        """
        unsup = [bool(u) for u in batch.get("unsupervised", [False] * n)]
        pseudo = [bool(p) for p in batch.get("pseudo", [False] * n)]
        if len(unsup) != n or len(pseudo) != n:
            raise ValueError(f"batch masks have {len(unsup)}/{len(pseudo)} entries for {n} cuts")
        if any(unsup) and not getattr(args, "use_unsup_cr_ctc", False):
            first = next(c for c, u in zip(batch.get("cut_ids", ["?"] * n), unsup) if u)
            raise ValueError(f"the batch holds {sum(unsup)} unlabelled cut(s) (e.g. {first}) but --use-unsup-cr-ctc "
                             "is off: they have no CTC target and must not train as silence")
        pseudo_scale = float(getattr(args, "pseudo_ctc_loss_scale", 1.0))
        unsup_scale = float(getattr(args, "unsup_cr_ctc_loss_scale", 0.5))
        ctc_w = [0.0 if u else (pseudo_scale if p else 1.0) for u, p in zip(unsup, pseudo)]
        cr_w = [unsup_scale if u else 1.0 for u in unsup]
        return ctc_w, cr_w

    @staticmethod
    def _weighted_ctc(log_probs: torch.Tensor, out_lens: torch.Tensor, targets: list[list[int]],
                      weights: list[float]) -> torch.Tensor:
        """Sum over rows of weight * CTC loss; rows of weight 0 are left out of the loss entirely."""
        from anyphone.losses.crctc import ctc_loss

        if all(w == 1.0 for w in weights):  # no boolean indexing (a GPU sync) in the plain case
            return ctc_loss(log_probs, out_lens, targets)
        rows = [i for i, w in enumerate(weights) if w != 0.0]
        if not rows:
            return log_probs.sum() * 0.0  # keeps the graph (DDP) with an exact zero
        keep = torch.tensor(rows, device=log_probs.device)
        per_row = ctc_loss(log_probs[keep], out_lens[keep], [targets[i] for i in rows], reduction="none")
        return (per_row * torch.tensor([weights[i] for i in rows], device=per_row.device)).sum()

    def ctc_log_probs(self, model: nn.Module, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        enc, enc_lens = model.forward_encoder(feats, feat_lens)
        return model.ctc_output(enc).float().cpu(), enc_lens.cpu()

    def onnx_graphs(self, model: nn.Module, label: str) -> list[OnnxGraph]:
        cfg = model.cfg
        x, lens = example_features(cfg.feature_dim)
        return [OnnxGraph("model", f"model-{label}" if label else "model", CtcExportWrapper(model).eval(), (x, lens),
                          ["x", "x_lens"], ["log_probs", "log_prob_lens"], feature_dynamic_shapes(),
                          {"vocab_size": int(model.ctc_output[1].out_features), "context_size": 0,
                           "config": cfg.to_dict()})]


FAMILY = CrCtcFamily
