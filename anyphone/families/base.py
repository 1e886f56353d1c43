"""The model-family interface: everything that differs between kinds of model, behind one object.

A family (CR-CTC, the pruned transducer, a BLSTM-CTC baseline, ...) knows how to

* configure and build its model: ``config_type`` (a dataclass with ``to_dict``/``from_dict``/``replace`` and a
  ``name``), ``add_model_arguments``/``add_arguments`` (its own flags), ``config_from_args``, ``build(cfg,
  **options)`` and, for the training loop, ``build_model(args, tokenizer)``;
* train it: ``compute_loss(model, batch, args, batch_idx_train, is_training) -> (loss, info)`` (``info`` has
  ``frames`` and the ``*_loss`` terms), ``output_downsampling_factor`` (1: 50 Hz output, 2: 25 Hz);
* decode it: ``greedy_decode(model, batch)`` and ``decode(model, batch, options)`` (the search a
  :class:`~anyphone.decoding.options.DecodeOptions` names, among ``decoding_methods``), both giving token-id
  lists; ``default_decoding_method`` (options without a method, decode.py without ``--decoding-method``) and
  ``recommended_decode_options`` (method and blank penalty chosen on the demo's dev set);
* recognise its own weights: ``recognises(state_dict)``, ``config_from_state_dict(sd, config=None) -> (cfg,
  options)`` (``options``: build options read off the tensors, such as a transducer's joint CTC head) and
  ``vocab_size_of(sd)``;
* run in the recogniser: ``has_ctc`` (its output is CTC log-probabilities: recognition by CTC search, forced
  alignment) with ``ctc_log_probs(model, feats, lens)``; otherwise ``transducer_parts(model, feats, lens)``;
* export to ONNX: ``onnx_graphs(model, label)`` lists the graphs (wrapper module, example inputs, names, dynamic
  axes, file name, metadata) that :mod:`anyphone.export.onnx` writes; ``onnx_model_type`` is how their outputs
  are decoded at run time ("ctc": log-probs, "transducer": encoder/decoder/joiner), the ``model_type`` metadata
  that the torch-free runtime reads.

Family names live in one registry, :mod:`anyphone.families`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from anyphone.decoding.options import DecodeOptions

__all__ = ["CtcFamily", "ModelFamily", "OnnxGraph", "example_features", "feature_dynamic_shapes"]


@dataclass
class OnnxGraph:
    """One ONNX file of an export: ``module(*example)`` is the computation, traced with dynamic axes.

    ``stem``: the file name without ``.onnx`` (``model-<label>``, ``encoder-<label>``...); ``meta``: the
    family's metadata for this file (the exporter adds the common keys); ``translations``: custom ops of the
    module and the onnxscript functions that write them (torch.onnx's ``custom_translation_table``);
    ``fp16_keep_ops``: op types the fp16 variant keeps in float32.
    """

    part: str
    stem: str
    module: nn.Module
    example: tuple[Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_shapes: dict[str, dict[int, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    translations: dict[Any, Callable] = field(default_factory=dict)
    fp16_keep_ops: tuple[str, ...] = ()
    patch: bool = True  # export under anyphone.export.traceable.export_friendly (Zipformer's traceable forwards)


def example_features(feature_dim: int, batch: int = 2, frames: int = 200) -> tuple[Tensor, Tensor]:
    """Zero-padded random fbank (batch, frames, feature_dim) and lengths, for tracing (batch >= 2 keeps the batch
    axis free)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, frames, feature_dim, generator=g)
    lens = torch.tensor([frames - 37 * i for i in range(batch)], dtype=torch.int64)
    for i, n in enumerate(lens.tolist()):
        x[i, n:] = 0.0
    return x, lens


def feature_dynamic_shapes(min_frames: int = 23) -> dict[str, dict[int, Any]]:
    """Free batch and time axes of ``x`` (N, T, C) and ``x_lens`` (N,); T >= ``min_frames`` (the Zipformer needs
    23: every stack, down to 1/16 of 50 Hz, at least a frame long)."""
    dim = torch.export.Dim
    n = dim("N", min=1, max=1024)
    t = dim("T", min=min_frames, max=100_000)
    return {"x": {0: n, 1: t}, "x_lens": {0: n}}


class ModelFamily:
    """Base class of the families; see the module docstring. Instances are cheap and picklable (mp.spawn); a
    family may cache training helpers (SpecAugment) on its instance, so get one per run with
    :func:`anyphone.families.get_family`."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()  # older names still found on disk
    config_type: ClassVar[type] = object
    has_ctc: ClassVar[bool] = False
    output_downsampling_factor: ClassVar[int] = 1
    decoding_methods: ClassVar[tuple[str, ...]] = ()
    default_decoding_method: ClassVar[str] = ""
    recommended_decode_options: ClassVar[DecodeOptions] = DecodeOptions()
    onnx_model_type: ClassVar[str] = ""

    def __repr__(self) -> str:
        return f"<model family {self.name}>"

    # ---- configuration and construction -------------------------------------------------------------
    def add_model_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The flags that shape the model (``--model-size`` and the family's own)."""
        raise NotImplementedError

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Every flag of the family for train.py: the model's and the loss's."""
        self.add_model_arguments(parser)

    def model_flags_given(self, args: argparse.Namespace) -> bool:
        """True when the command line gave any model flag (else the weights or config.json describe the model)."""
        raise NotImplementedError

    def config_from_args(self, args: argparse.Namespace, vocab_size: int | None = None) -> Any:
        raise NotImplementedError

    def config_for_weights(self, args: argparse.Namespace, state_dict: Mapping[str, Any]) -> Any:
        """The config the model flags give, with the output sizes (vocab...) of ``state_dict``."""
        return self.config_from_args(args, self.vocab_size_of(state_dict))

    def config_from_dict(self, data: Mapping[str, Any]) -> Any:
        """The config of a config.json ``model`` section."""
        return self.config_type.from_dict(dict(data))

    def build(self, cfg: Any, **options: Any) -> nn.Module:
        """The untrained model of ``cfg`` (vocab size included); ``options`` as given by
        :meth:`config_from_state_dict` or :meth:`model_options`."""
        raise NotImplementedError

    def model_options(self, args: argparse.Namespace) -> dict[str, Any]:
        """Build options of the training flags (beyond the config)."""
        return {}

    def build_model(self, args: argparse.Namespace, tokenizer: Any) -> nn.Module:
        """The training loop's entry: the model the flags describe, over the tokenizer's vocabulary."""
        return self.build(self.config_from_args(args, tokenizer.vocab_size), **self.model_options(args))

    # ---- weights ------------------------------------------------------------------------------------
    def recognises(self, state_dict: Mapping[str, Any]) -> bool:
        raise NotImplementedError

    def config_from_state_dict(self, state_dict: Mapping[str, Any], config: Any = None
                               ) -> tuple[Any, dict[str, Any]]:
        """(config, build options) that rebuild ``state_dict`` exactly; ``config`` (a config, its dict or a
        preset name) is checked rather than inferred. Raises ValueError naming the first mismatch."""
        raise NotImplementedError

    def vocab_size_of(self, state_dict: Mapping[str, Any]) -> int:
        raise NotImplementedError

    def published_size(self, state_dict: Mapping[str, Any]) -> str | None:
        """The size name of a published release these weights have ("small", "large"), else None."""
        return None

    # ---- training and decoding -----------------------------------------------------------------------
    def compute_loss(self, model: nn.Module, batch: dict, args: argparse.Namespace, batch_idx_train: int,
                     is_training: bool) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def work_between(self, args: argparse.Namespace, first: int, last: int) -> float:
        """The relative compute of training batches ``first`` to ``last`` (inclusive; a plain step is 1); the
        progress message's time estimate weighs the batches still to do by it."""
        return float(max(last - first + 1, 0))

    def greedy_decode(self, model: nn.Module, batch: dict) -> list[list[int]]:
        raise NotImplementedError

    def validation_step(self, model: nn.Module, batch: dict, args: argparse.Namespace, batch_idx_train: int
                        ) -> tuple[Tensor, dict[str, float], list[list[int]] | None]:
        """Dev loss, its info and the greedy hypotheses of one batch (eval mode, no grad). A family whose loss
        and greedy search read the same encoder pass returns the hypotheses, which halves a dev pass; None
        means the loop calls :meth:`greedy_decode` (a second pass)."""
        loss, info = self.compute_loss(model, batch, args, batch_idx_train, False)
        return loss, info, None

    def decode(self, model: nn.Module, batch: dict, options: DecodeOptions) -> list[list[int]]:
        """The search ``options`` names (its method, else :attr:`default_decoding_method`) over the batch's
        ``features`` (N, T, 80) / ``feature_lens`` (N,): a token-id list per cut."""
        raise NotImplementedError

    def decoding_method(self, options: DecodeOptions) -> str:
        """The search ``options`` name (``method`` None: the family's default); one of ours, else SystemExit."""
        method = options.method or self.default_decoding_method
        self.check_decoding_method(method)
        return method

    def check_decoding_method(self, method: str) -> None:
        if method not in self.decoding_methods:
            raise SystemExit(f"--decoding-method {method}: {self.name} models decode with "
                             f"{' or '.join(self.decoding_methods)}")

    # ---- recognition --------------------------------------------------------------------------------
    def ctc_log_probs(self, model: nn.Module, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        """feats (N, T, 80), feat_lens (N,) -> CTC log-probs (N, T', V) float32 on CPU, lengths (N,) on CPU."""
        raise ValueError(f"{self.name} models have no CTC output")

    def transducer_parts(self, model: nn.Module, feats: Tensor, feat_lens: Tensor):
        raise ValueError(f"{self.name} models are not transducers")

    # ---- export -------------------------------------------------------------------------------------
    def onnx_graphs(self, model: nn.Module, label: str) -> list[OnnxGraph]:
        """The graphs of an ONNX export of ``model``; file stems carry ``label`` (``model-iter-8-avg-1``)."""
        raise NotImplementedError


class CtcFamily(ModelFamily):
    """What every CTC family shares: the searches over its log-probs and the recognition hook.

    Subclasses give ``log_probs(model, x, x_lens) -> (log_probs (N, T', V), lens (N,))``.
    """

    has_ctc = True
    onnx_model_type = "ctc"
    decoding_methods = ("ctc-greedy-search", "ctc-prefix-beam-search")
    default_decoding_method = "ctc-greedy-search"
    recommended_decode_options = DecodeOptions(method="ctc-prefix-beam-search", blank_penalty=0.5)

    def log_probs(self, model: nn.Module, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        return model(x, x_lens)

    @torch.no_grad()
    def greedy_decode(self, model: nn.Module, batch: dict) -> list[list[int]]:
        from anyphone.decoding.ctc import ctc_greedy_search

        log_probs, out_lens = self.log_probs(model, batch["features"], batch["feature_lens"])
        return ctc_greedy_search(log_probs, out_lens)

    @torch.no_grad()
    def decode(self, model: nn.Module, batch: dict, options: DecodeOptions) -> list[list[int]]:
        from anyphone.decoding.ctc import apply_blank_penalty, ctc_greedy_search, ctc_prefix_beam_search

        method = self.decoding_method(options)
        log_probs, out_lens = self.log_probs(model, batch["features"], batch["feature_lens"])
        if options.blank_penalty:
            log_probs = apply_blank_penalty(log_probs, options.blank_penalty)  # blank is id 0, as in ZIPA
        if method == "ctc-greedy-search":
            return ctc_greedy_search(log_probs, out_lens)
        return ctc_prefix_beam_search(log_probs, out_lens, beam=options.beam_size)

    def ctc_log_probs(self, model: nn.Module, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        lp, lens = self.log_probs(model, feats, feat_lens)
        return lp.float().cpu(), lens.cpu()
