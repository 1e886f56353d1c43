"""Loading a phone recogniser from a published name, a ``.pth`` state_dict, a recipe exp dir or ONNX files.

An exp dir describes itself: its ``config.json`` gives the model configuration and the decode options chosen on
a dev set (:mod:`anyphone.weights.expdir`); a published checkpoint is described by its tensors alone
and its model family is found by the registry (:func:`anyphone.families.detect_family`: each family recognises
its own keys); an exp dir's ``config.json`` names its family.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anyphone.decoding.options import DecodeOptions
from anyphone.evaluation.config import WeightChoice
from anyphone.families import detect_family, get_family
from anyphone.families.base import ModelFamily
from anyphone.inference.recognizer import PhoneRecognizer
from anyphone.text.tokenizer import IpaTokenizer
from anyphone.weights.expdir import CONFIG_FILE, is_exp_dir, model_section, read_config, select_state_dict

__all__ = ["DEFAULT_MODEL", "CheckpointShapeError", "load_model"]

log = logging.getLogger("anyphone.recognize")

DEFAULT_MODEL = "zipa-cr-small-500k"


class CheckpointShapeError(ValueError):
    """Weights whose keys or shapes fit no configuration of their family, or not the one asked for.

    ``path`` is the checkpoint, ``detail`` the problem (naming the first tensor that differs) and ``asked`` the
    configuration that was asked for (None when it was inferred), so that each face can say what to pass: the
    API ``config=``, the command line ``--model-size``.
    """

    def __init__(self, path: str | os.PathLike, detail: str, asked: str | None = None) -> None:
        self.path = Path(path)
        self.detail = detail
        self.asked = asked
        super().__init__(f"{path}: {detail}; pass config= (a preset name such as 'small', or a ZipformerConfig)")


def _find_tokens(candidates: Iterable[Path]) -> Path | None:
    for c in candidates:
        if c is not None and c.is_file():
            return c
    return None


def _tokenizer_for(tokens: Path | None, vocab: int, where: str) -> IpaTokenizer:
    if tokens is not None:
        return IpaTokenizer.from_tokens_file(tokens)
    tok = IpaTokenizer.default()
    if tok.vocab_size != vocab:
        raise FileNotFoundError(f"{where}: no tokens.txt found and the model has {vocab} outputs, not the "
                                f"{tok.vocab_size} of the built-in ZIPA vocabulary; pass tokens=PATH")
    log.info("%s: no tokens.txt beside the model, using the built-in ZIPA tokens (127)", where)
    return tok


def _card(*paths: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The first config.json among ``paths`` that exists, and its contents."""
    for p in paths:
        if p.is_file():
            return p, read_config(p)
    return None, None


def _decode_options(where: Path | None, card: Mapping[str, Any] | None,
                    given: DecodeOptions | Mapping[str, Any] | None) -> DecodeOptions:
    if given is not None:
        return given if isinstance(given, DecodeOptions) else DecodeOptions.from_dict(given, "decode_options")
    recorded = card.get("decode") if card is not None and "model" in card else None
    return DecodeOptions.from_dict(recorded, f"{where}: decode") if recorded is not None else DecodeOptions()


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    device: str = "cpu",
    iter: int | None = None,  # icefall's --iter name
    avg: int | None = None,
    *,
    epoch: int | None = None,
    use_averaged_model: bool = True,
    tokens: str | os.PathLike | None = None,
    config: Any = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 8,
    chunk_seconds: float = 30.0,
    overlap_seconds: float = 2.0,
    decode_options: DecodeOptions | Mapping[str, Any] | None = None,
) -> PhoneRecognizer:
    """Load a phone recogniser from a published name, a ``.pth`` state_dict, a recipe exp dir or ONNX files.

    Args:
        name_or_path:
            * a published ZIPA model (``anyphone list-models``), e.g. ``zipa-cr-small-500k``, or a Hub repo id:
              taken from the Hugging Face cache, downloaded on first use (fails at once when HF_HUB_OFFLINE=1);
            * a ``.pth``/``.pt`` state_dict (ZIPA's averaged checkpoints, or ``{'model': sd}``), with
              ``tokens.txt`` beside it (or ``tokens=``; else the built-in ZIPA tokens when the vocab is 127);
            * a recipe exp dir holding ``checkpoint-N.pt``/``epoch-N.pt``: ``iter``/``epoch`` with ``avg`` as in
              icefall's decode.py (default: the newest checkpoint);
            * a ``.onnx`` file or a folder of exported ONNX models (delegated to anyphone.inference.onnx_runtime).
        device: "cpu", "cuda[:N]" or "auto".
        tokens: tokens.txt to use instead of the one found next to the model.
        config: model configuration (the family's config, e.g. a ZipformerConfig, its dict or a preset name);
            normally inferred from the tensors (family from the key names, size from the shapes) or read from a
            ``config.json`` beside the model.
        decode_options: :class:`DecodeOptions` (or its dict); default: the ``decode`` entry of the exp dir's
            ``config.json`` (``decode.py --save-decode-options 1``), else none. Its blank penalty is the
            recogniser's default ``emit`` (``emit = exp(blank_penalty)``).
    Raises:
        anyphone.inference.hub.ModelNotAvailableError: unknown name, or not cached while offline.
        ValueError: a checkpoint that is not a ZIPA/anyphone Zipformer, or tokens that do not fit it.
    """
    from anyphone.inference import hub

    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    tok_path = Path(tokens).expanduser() if tokens is not None else None
    if tok_path is not None and not tok_path.is_file():
        raise FileNotFoundError(f"{tok_path}: tokens file not found")
    if text.endswith(".onnx") or (path.is_dir() and any(path.glob("*.onnx")) and not any(path.glob("*.pt*"))):
        return _load_onnx(path, tok_path, device, batch_size, chunk_seconds, overlap_seconds)

    label = text
    if is_exp_dir(path):
        k = avg or 1
        # decode.py's selection, the same function: with iter/epoch and use_averaged_model, the running
        # averages of the checkpoint and of the one k intervals older (--avg 1 included); the tag is decode.py's
        sd, source = select_state_dict(path, iter=iter or 0, epoch=epoch or 0, avg=k,
                                       use_averaged_model=use_averaged_model)
        tag = WeightChoice(path, iter=iter or 0, epoch=epoch or 0, avg=k,
                           use_averaged_model=use_averaged_model).label if (iter or epoch) else Path(source).stem
        label = f"{path}/{tag}"
        source_file = path / (f"checkpoint-{iter}.pt" if iter else f"epoch-{epoch}.pt" if epoch else f"{tag}.pt")
        tok_path = tok_path or _find_tokens([path / "tokens.txt", path.parent / "tokens.txt",
                                             path.parent / "ipa_simplified" / "tokens.txt",
                                             path.parent / "data" / "ipa_simplified" / "tokens.txt"])
        where, card = _card(path / CONFIG_FILE, path / "model_config.json")
    else:
        if iter or epoch:
            raise ValueError(f"{text}: iter/epoch/avg need a recipe exp dir with checkpoint-N.pt files")
        files = hub.resolve_model(text, revision=revision, cache_dir=cache_dir)
        sd = hub.load_state_dict(files.checkpoint)
        source_file = files.checkpoint
        tok_path = tok_path or files.tokens
        label = files.name or text
        where, card = _card(files.checkpoint.with_suffix(".json"), files.checkpoint.parent / CONFIG_FILE)
    json_cfg = model_section(card)
    options = _decode_options(where, card, decode_options)
    try:
        family = _family_of(card, sd)
        cfg, build_options = family.config_from_state_dict(sd, config if config is not None else json_cfg)
    except ValueError as e:
        detail = str(e).removesuffix("; pass config=")
        asked = (config if isinstance(config, str) else getattr(config, "name", "given")) if config is not None \
            else ("config.json" if json_cfg is not None else None)
        raise CheckpointShapeError(source_file, detail, asked) from None
    model = family.build(cfg, **build_options)
    model.load_state_dict(sd, strict=True)
    tokenizer = _tokenizer_for(tok_path, family.vocab_size_of(sd), label)
    log.info("loaded %s: %s, %s config, %s parameters", label, family.name, getattr(cfg, "name", "custom"),
             f"{sum(p.numel() for p in model.parameters()):,}")
    return PhoneRecognizer(model, tokenizer, family, device=device, batch_size=batch_size,
                           chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds, name=label,
                           decode_options=options)


def _family_of(card: Mapping[str, Any] | None, sd: Mapping[str, Any]) -> ModelFamily:
    """The family a config.json names (one with a ``model`` section), else the one whose keys the weights have."""
    named = card.get("family") if card is not None and "model" in card else None
    return get_family(named) if isinstance(named, str) else detect_family(sd)


def _pick_onnx(folder: Path, stem: str) -> Path | None:
    """``stem.onnx`` if present, else the first ``stem*.onnx`` (e.g. ``model.int8.onnx``)."""
    plain = folder / f"{stem}.onnx"
    if plain.is_file():
        return plain
    found = sorted(folder.glob(f"{stem}*.onnx"))
    return found[0] if found else None


def _load_onnx(path: Path, tokens: Path | None, device: str, batch_size: int, chunk_seconds: float,
               overlap_seconds: float) -> PhoneRecognizer:
    """Exported models (anyphone.export.onnx) run by anyphone.inference.onnx_runtime's sessions, with the same
    options and output formats as the torch models."""
    try:
        from anyphone.inference import onnx_runtime
    except ImportError as e:
        raise ImportError(f"{path}: ONNX models need anyphone.inference.onnx_runtime and onnxruntime ({e})") from e
    from anyphone.text.tokenizer import default_lang_dir

    provider = "cpu" if str(device) == "cpu" else ("cuda" if str(device).startswith("cuda") else "auto")
    if path.is_dir():
        encoder = _pick_onnx(path, "encoder")
        if encoder is not None and _pick_onnx(path, "joiner") is not None:
            kind, target, folder = "transducer", path, path
            suffix = encoder.name[len("encoder"):]
        else:
            target = _pick_onnx(path, "model")
            if target is None:
                raise FileNotFoundError(f"{path}: expected model*.onnx (CTC) or encoder/decoder/joiner*.onnx")
            kind, folder, suffix = "ctc", path, ""
    else:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: ONNX model not found")
        kind, target, folder, suffix = "ctc", path, path.parent, ""
    tok = tokens or _find_tokens([folder / "tokens.txt"]) or default_lang_dir() / "tokens.txt"
    if kind == "transducer":
        backend = onnx_runtime.OnnxTransducerRecognizer(target, tokens_path=tok, suffix=suffix, provider=provider)
    else:
        backend = onnx_runtime.OnnxCtcRecognizer(target, tokens_path=tok, provider=provider)
    # the family the export recorded; older exports only say how their outputs decode (model_type "ctc" is the
    # CR-CTC family's deprecated alias)
    meta = getattr(backend, "meta", None) or {}
    family = get_family(meta.get("family") or meta.get("model_type") or kind)
    if family.onnx_model_type != kind:
        raise ValueError(f"{target}: a {family.name} model ({family.onnx_model_type} outputs) in {kind} files")
    return _OnnxRecognizer(backend, family, IpaTokenizer.from_tokens_file(tok), batch_size=batch_size,
                           chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds, name=str(path))


class _OnnxRecognizer(PhoneRecognizer):
    """PhoneRecognizer whose network runs in ONNX Runtime (features and decoding as for torch models)."""

    def __init__(self, backend: Any, family: str | ModelFamily, tokenizer: IpaTokenizer, **kw: Any) -> None:
        super().__init__(None, tokenizer, family, device="cpu", **kw)
        self.backend = backend
        if not self.model_family.has_ctc:
            self._context_size = int(getattr(backend, "context_size", 2))

    def _ctc_log_probs(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        lp, lens = self.backend.log_probs(feats.cpu().numpy(), feat_lens.cpu().numpy())
        return torch.from_numpy(np.asarray(lp, dtype=np.float32)), torch.from_numpy(np.asarray(lens, dtype=np.int64))

    def _transducer_parts(self, feats: Tensor, feat_lens: Tensor):
        b = self.backend
        enc, lens = b.encode(feats.cpu().numpy(), feat_lens.cpu().numpy())

        def joiner(e: Tensor, d: Tensor) -> Tensor:
            feed = {"encoder_out": np.ascontiguousarray(e.numpy(), dtype=np.float32),
                    "decoder_out": np.ascontiguousarray(d.numpy(), dtype=np.float32)}
            return torch.from_numpy(b.joiner.run(None, feed)[0])

        def decoder(ids: Tensor) -> Tensor:
            return torch.from_numpy(b.decoder.run(None, {"y": np.ascontiguousarray(ids.numpy(), dtype=np.int64)})[0])

        return (torch.from_numpy(np.asarray(enc, dtype=np.float32)), torch.from_numpy(np.asarray(lens, dtype=np.int64)),
                joiner, decoder)
