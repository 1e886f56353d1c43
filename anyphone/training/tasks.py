"""Tasks: what differs between recipes (model, loss, greedy decoding) behind one small interface.

The training loop (`anyphone.training.loop`) and the decode service (`anyphone.decoding.run`) call:
  task.name, task.output_downsampling_factor
  task.add_arguments(parser)
  task.build_model(args, tokenizer) -> nn.Module
  task.compute_loss(model, batch, args, batch_idx_train, is_training) -> (loss, info with "frames" and *_loss)
  task.greedy_decode(model, batch) -> list[list[int]]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from anyphone.training.loop import str2bool


def _model_forward(model: nn.Module, x: torch.Tensor, x_lens: torch.Tensor):
    """Call through the (possibly DDP-wrapped) module so DDP sees the forward and syncs gradients."""
    return model(x, x_lens)


class CrCtcTask:
    """Zipformer + CTC head, optionally with consistency regularisation (CR-CTC), 50 Hz output."""

    name = "crctc"
    output_downsampling_factor = 1
    default_decoding_method = "ctc-greedy-search"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
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

    @staticmethod
    def build_model(args: argparse.Namespace, tokenizer) -> nn.Module:
        from anyphone.models.ctc import CtcModel
        from anyphone.models.presets import config_from_args

        cfg = config_from_args(args).replace(vocab_size=tokenizer.vocab_size)
        return CtcModel(cfg)

    def __init__(self) -> None:
        self._spec_aug = None

    def _specaug(self, args):
        if self._spec_aug is None:
            from anyphone.models.specaug import SpecAugment, SpecAugmentConfig

            self._spec_aug = SpecAugment(SpecAugmentConfig.for_cr_ctc(args.time_mask_ratio) if args.use_cr_ctc
                                         else SpecAugmentConfig())
        return self._spec_aug

    def compute_loss(self, model, batch: dict, args, batch_idx_train: int, is_training: bool):
        from anyphone.losses.crctc import cr_consistency_loss, cr_loss_scale_at

        x, x_lens = batch["features"], batch["feature_lens"]
        targets: list[list[int]] = batch["token_ids"]
        n = len(targets)
        cr_start = getattr(args, "cr_start_batch", 0)
        use_cr = args.use_cr_ctc and is_training and batch_idx_train >= cr_start
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
        return loss, info

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

    @staticmethod
    @torch.no_grad()
    def greedy_decode(model, batch: dict) -> list[list[int]]:
        from anyphone.decoding.ctc import ctc_greedy_search

        log_probs, out_lens = model(batch["features"], batch["feature_lens"])
        return ctc_greedy_search(log_probs, out_lens)

    @staticmethod
    @torch.no_grad()
    def decode(model, batch: dict, args) -> list[list[int]]:
        from anyphone.decoding.ctc import apply_blank_penalty, ctc_greedy_search, ctc_prefix_beam_search

        log_probs, out_lens = model(batch["features"], batch["feature_lens"])
        penalty = getattr(args, "blank_penalty", 0.0)
        if penalty:
            log_probs = apply_blank_penalty(log_probs, penalty)  # blank is id 0, as in ZIPA
        if args.decoding_method == "ctc-greedy-search":
            return ctc_greedy_search(log_probs, out_lens)
        if args.decoding_method == "ctc-prefix-beam-search":
            return ctc_prefix_beam_search(log_probs, out_lens, beam=args.beam_size)
        raise SystemExit(f"--decoding-method {args.decoding_method}: CR-CTC models decode with "
                         "ctc-greedy-search or ctc-prefix-beam-search")


class TransducerTask:
    """Zipformer pruned transducer (ZIPA's Zipa-T), 25 Hz output, optionally with a joint CTC head."""

    name = "transducer"
    output_downsampling_factor = 2
    default_decoding_method = "greedy_search"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("pruned transducer")
        g.add_argument("--prune-range", type=int, default=5, help="Symbols per frame kept by the pruned loss.")
        g.add_argument("--lm-scale", type=float, default=0.25, help="LM-only smoothing of the simple loss.")
        g.add_argument("--am-scale", type=float, default=0.0, help="AM-only smoothing of the simple loss.")
        g.add_argument("--simple-loss-scale", type=float, default=0.5,
                       help="Weight of the simple loss after --warm-step (it starts at 1.0).")
        g.add_argument("--warm-step", type=int, default=2000,
                       help="Batches over which the simple-loss weight falls to --simple-loss-scale and the "
                       "pruned-loss weight rises from 0.1 to 1.0 (ZIPA's warm-up).")
        g.add_argument("--use-ctc", type=str2bool, default=False, help="Add a joint CTC head.")
        g.add_argument("--ctc-loss-scale", type=float, default=0.2)
        g.add_argument("--rnnt-backend", type=str, default="torch", choices=["auto", "torch", "k2", "fast_rnnt"],
                       help="Pruned RNN-T loss: ours in PyTorch (default; it also takes the empty transcripts of "
                       "noise-only cuts, which k2 and fast_rnnt reject), or 'auto' to prefer k2/fast_rnnt when "
                       "importable.")
        g.add_argument("--enable-model-spec-aug", type=str2bool, default=True,
                       help="SpecAugment on the fbank inside the training step.")

    @staticmethod
    def build_model(args: argparse.Namespace, tokenizer) -> nn.Module:
        from anyphone.models.presets import config_from_args
        from anyphone.models.transducer import TransducerModel

        cfg = config_from_args(args).replace(vocab_size=tokenizer.vocab_size)
        return TransducerModel(cfg, use_ctc=getattr(args, "use_ctc", False),
                               rnnt_backend=getattr(args, "rnnt_backend", "torch"))

    def __init__(self) -> None:
        self._spec_aug = None

    def compute_loss(self, model, batch: dict, args, batch_idx_train: int, is_training: bool):
        from anyphone.models.specaug import SpecAugment
        from anyphone.models.transducer import transducer_loss_scales

        x, x_lens = batch["features"], batch["feature_lens"]
        if is_training and args.enable_model_spec_aug:
            if self._spec_aug is None:
                self._spec_aug = SpecAugment()
            x = self._spec_aug(x, x_lens)
        out = model(x, x_lens, batch["token_ids"], prune_range=args.prune_range,
                    am_scale=args.am_scale, lm_scale=args.lm_scale)
        simple, pruned = out[0], out[1]
        simple_scale, pruned_scale = transducer_loss_scales(batch_idx_train, args.warm_step,
                                                            args.simple_loss_scale)
        loss = simple_scale * simple + pruned_scale * pruned
        info = {"simple_loss": float(simple.detach()), "pruned_loss": float(pruned.detach())}
        if len(out) > 2:
            loss = loss + args.ctc_loss_scale * out[2]
            info["ctc_loss"] = float(out[2].detach())
        # frames at 25 Hz, computed like the encoder does, for per-frame logging
        info["frames"] = float((((x_lens - 7) // 2 + 1) // 2).sum())
        return loss, info

    @staticmethod
    @torch.no_grad()
    def greedy_decode(model, batch: dict) -> list[list[int]]:
        from anyphone.decoding.transducer import greedy_search_batch

        enc, enc_lens = model.forward_encoder(batch["features"], batch["feature_lens"])
        return greedy_search_batch(model, enc, enc_lens)

    @staticmethod
    @torch.no_grad()
    def decode(model, batch: dict, args) -> list[list[int]]:
        from anyphone.decoding.transducer import greedy_search_batch, modified_beam_search

        enc, enc_lens = model.forward_encoder(batch["features"], batch["feature_lens"])
        penalty = getattr(args, "blank_penalty", 0.0)
        if args.decoding_method == "greedy_search":
            return greedy_search_batch(model, enc, enc_lens, max_sym_per_frame=args.max_sym_per_frame,
                                       blank_penalty=penalty)
        if args.decoding_method == "modified_beam_search":
            return modified_beam_search(model, enc, enc_lens, beam=args.beam_size, blank_penalty=penalty)
        raise SystemExit(f"--decoding-method {args.decoding_method}: transducer models decode with "
                         "greedy_search or modified_beam_search")


TASKS = {"crctc": CrCtcTask, "transducer": TransducerTask}


def get_task(name: str):
    try:
        return TASKS[name]()
    except KeyError:
        raise SystemExit(f"unknown task {name!r}; expected one of {sorted(TASKS)}") from None
