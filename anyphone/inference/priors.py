"""Allosaurus priors: a file of ``phone logprob`` lines (or a dict) as additive scores per token id."""

from __future__ import annotations

import math
import os
import unicodedata
from collections.abc import Mapping
from pathlib import Path

__all__ = ["read_prior"]


def read_prior(prior: str | os.PathLike | Mapping[str, float] | None, token2id: Mapping[str, int]
               ) -> dict[int, float]:
    """Allosaurus prior (a file of ``phone logprob`` lines, or a dict phone -> value) as token id -> value.

    ``<blk>`` names the blank. A phone must be one model token (one code point); others raise ValueError
    naming the line, as do malformed lines. Blank lines and ``#`` comments are skipped.
    """
    if prior is None:
        return {}
    items: list[tuple[str, float, str]] = []
    if isinstance(prior, Mapping):
        items = [(str(k), float(v), f"prior entry {k!r}") for k, v in prior.items()]
    else:
        path = Path(prior)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: prior file not found; expected lines 'phone logprob'")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            body = line.strip()
            if not body or body.startswith("#"):
                continue
            parts = body.split()
            where = f"{path}:{n}"
            if len(parts) != 2:
                raise ValueError(f"{where}: {line.strip()!r}, expected 'phone logprob' (two fields)")
            try:
                value = float(parts[1])
            except ValueError:
                raise ValueError(f"{where}: {parts[1]!r} is not a number; expected 'phone logprob'") from None
            items.append((parts[0], value, where))
    out: dict[int, float] = {}
    for phone, value, where in items:
        if not math.isfinite(value):
            raise ValueError(f"{where}: prior {value} for {phone!r}, expected a finite number")
        key = unicodedata.normalize("NFD", phone).replace("c\u0327", "ç")
        tid = token2id.get(phone, token2id.get(key))
        if tid is None:
            raise ValueError(f"{where}: {phone!r} is not a token of this model (priors apply to single tokens "
                             "such as 'a', 'ʰ' or '<blk>')")
        out[tid] = value
    return out
