"""The pruned-transducer family (ZIPA's Zipa-T): a Zipformer at 25 Hz with a stateless decoder and a joiner,
optionally with a joint CTC head."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from anyphone.decoding.options import DecodeOptions
from anyphone.families.base import OnnxGraph, example_features, feature_dynamic_shapes
from anyphone.families.zipformer import ZipformerFamily, encode
from anyphone.models.presets import ZipformerConfig
from anyphone.utils import str2bool


class EncoderExportWrapper(nn.Module):
    """x (N, T, 80), x_lens (N,) -> (joiner.encoder_proj(encoder_out) (N, T', J), lens (N,))."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder_embed = model.encoder_embed
        self.encoder = model.encoder
        self.encoder_proj = model.joiner.encoder_proj

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        out, lens = encode(self.encoder_embed, self.encoder, x, x_lens)
        return self.encoder_proj(out), lens


class DecoderExportWrapper(nn.Module):
    """y (N, context) int64 -> joiner.decoder_proj(decoder(y, need_pad=False)) (N, J)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.decoder = model.decoder
        self.decoder_proj = model.joiner.decoder_proj

    def forward(self, y: Tensor) -> Tensor:
        out = self.decoder(y, need_pad=False)  # (N, 1, decoder_dim)
        return self.decoder_proj(out.squeeze(1))


class JoinerExportWrapper(nn.Module):
    """(encoder_out (N, J), decoder_out (N, J)), both projected -> logit (N, V)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.joiner = model.joiner

    def forward(self, encoder_out: Tensor, decoder_out: Tensor) -> Tensor:
        return self.joiner(encoder_out, decoder_out, project_input=False)


class TransducerFamily(ZipformerFamily):
    """Zipformer pruned transducer (ZIPA's Zipa-T), 25 Hz output, optionally with a joint CTC head."""

    name = "transducer"
    output_downsampling_factor = 2
    onnx_model_type = "transducer"
    decoding_methods = ("greedy_search", "modified_beam_search")
    default_decoding_method = "greedy_search"
    recommended_decode_options = DecodeOptions(method="greedy_search", blank_penalty=1.0)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        self.add_model_arguments(parser)
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

    def build(self, cfg: ZipformerConfig, *, use_ctc: bool = False, rnnt_backend: str = "torch",
              **options: Any) -> nn.Module:
        from anyphone.models.transducer import TransducerModel

        return TransducerModel(cfg, use_ctc=use_ctc, rnnt_backend=rnnt_backend)

    def model_options(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"use_ctc": getattr(args, "use_ctc", False), "rnnt_backend": getattr(args, "rnnt_backend", "torch")}

    def recognises(self, state_dict: Mapping[str, Any]) -> bool:
        return any(k.startswith(("decoder.", "joiner.")) for k in state_dict)

    def vocab_size_of(self, state_dict: Mapping[str, Any]) -> int:
        return int(state_dict["joiner.output_linear.weight"].shape[0])

    def head_sizes(self, state_dict: Mapping[str, Any]) -> dict[str, int]:
        conv = state_dict.get("decoder.conv.weight")
        return {"vocab_size": self.vocab_size_of(state_dict),
                "joiner_dim": int(state_dict["joiner.output_linear.weight"].shape[1]),
                "decoder_dim": int(state_dict["decoder.embedding.weight"].shape[1]),
                "context_size": int(conv.shape[-1]) if conv is not None else 1}

    def options_of(self, state_dict: Mapping[str, Any]) -> dict[str, Any]:
        return {"use_ctc": "ctc_output.1.weight" in state_dict}

    def __init__(self) -> None:
        self._spec_aug = None

    def compute_loss(self, model, batch: dict, args, batch_idx_train: int, is_training: bool):
        from anyphone.models.specaug import SpecAugment

        x, x_lens = batch["features"], batch["feature_lens"]
        if is_training and args.enable_model_spec_aug:
            if self._spec_aug is None:
                self._spec_aug = SpecAugment()
            x = self._spec_aug(x, x_lens)
        out = model(x, x_lens, batch["token_ids"], prune_range=args.prune_range,
                    am_scale=args.am_scale, lm_scale=args.lm_scale)
        return self._weighted_losses(out, x_lens, args, batch_idx_train)

    def validation_step(self, model, batch: dict, args, batch_idx_train: int):
        from anyphone.decoding.transducer import greedy_search_batch

        # the dev losses and the greedy hypotheses from one encoder pass (model(...) runs forward_encoder too)
        x, x_lens = batch["features"], batch["feature_lens"]
        enc, enc_lens = model.forward_encoder(x, x_lens)
        out = model.losses(enc, enc_lens, batch["token_ids"], prune_range=args.prune_range,
                           am_scale=args.am_scale, lm_scale=args.lm_scale)
        loss, info = self._weighted_losses(out, x_lens, args, batch_idx_train)
        return loss, info, greedy_search_batch(model, enc, enc_lens)

    @staticmethod
    def _weighted_losses(out, x_lens, args, batch_idx_train: int):
        from anyphone.models.transducer import transducer_loss_scales

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

    @torch.no_grad()
    def greedy_decode(self, model: nn.Module, batch: dict) -> list[list[int]]:
        from anyphone.decoding.transducer import greedy_search_batch

        enc, enc_lens = model.forward_encoder(batch["features"], batch["feature_lens"])
        return greedy_search_batch(model, enc, enc_lens)

    @torch.no_grad()
    def decode(self, model: nn.Module, batch: dict, options: DecodeOptions) -> list[list[int]]:
        from anyphone.decoding.transducer import greedy_search_batch, modified_beam_search

        method = self.decoding_method(options)
        enc, enc_lens = model.forward_encoder(batch["features"], batch["feature_lens"])
        if method == "greedy_search":
            return greedy_search_batch(model, enc, enc_lens, max_sym_per_frame=options.max_sym_per_frame,
                                       blank_penalty=options.blank_penalty)
        return modified_beam_search(model, enc, enc_lens, beam=options.beam_size, blank_penalty=options.blank_penalty)

    def transducer_parts(self, model: nn.Module, feats: Tensor, feat_lens: Tensor):
        """-> (projected encoder out (N, T', J), lengths (N,) on CPU, joiner(enc (A, J), dec (A, J)) -> logits
        (A, V), decoder(context ids (E, context_size) int64) -> projected (E, J))."""
        enc, enc_lens = model.forward_encoder(feats, feat_lens)

        def joiner(e: Tensor, d: Tensor) -> Tensor:
            return model.joiner(e, d, project_input=False)

        def decoder(ids: Tensor) -> Tensor:
            return model.joiner.decoder_proj(model.decoder(ids.to(enc.device), need_pad=False)).squeeze(1)

        return model.joiner.encoder_proj(enc), enc_lens.cpu(), joiner, decoder

    def onnx_graphs(self, model: nn.Module, label: str) -> list[OnnxGraph]:
        """encoder/decoder/joiner-<label>.onnx, as icefall's export-onnx.py splits them (a joint CTC head is not
        exported)."""
        cfg = model.cfg
        tag = f"-{label}" if label else ""
        context = int(getattr(model.decoder, "context_size", cfg.context_size))
        joiner_dim = int(model.joiner.encoder_proj.out_features)
        vocab = int(model.joiner.output_linear.out_features)
        meta = {"vocab_size": vocab, "context_size": context, "joiner_dim": joiner_dim, "config": cfg.to_dict()}
        dim = torch.export.Dim
        x, lens = example_features(cfg.feature_dim)
        y = torch.tensor([[-1, 0], [3, 7], [9, 4]], dtype=torch.int64)[:, -context:] if context <= 2 else \
            torch.randint(0, vocab, (3, context))
        nj = dim("N", min=1, max=1_000_000)
        return [
            OnnxGraph("encoder", f"encoder{tag}", EncoderExportWrapper(model).eval(), (x, lens), ["x", "x_lens"],
                      ["encoder_out", "encoder_out_lens"], feature_dynamic_shapes(), {**meta, "part": "encoder"}),
            OnnxGraph("decoder", f"decoder{tag}", DecoderExportWrapper(model).eval(), (y,), ["y"], ["decoder_out"],
                      {"y": {0: dim("N", min=1, max=4096)}}, {**meta, "part": "decoder"}),
            OnnxGraph("joiner", f"joiner{tag}", JoinerExportWrapper(model).eval(),
                      (torch.randn(3, joiner_dim), torch.randn(3, joiner_dim)), ["encoder_out", "decoder_out"],
                      ["logit"], {"encoder_out": {0: nj}, "decoder_out": {0: nj}}, {**meta, "part": "joiner"}),
        ]


FAMILY = TransducerFamily
