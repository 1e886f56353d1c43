"""Phone posteriorgram pictures: frame probabilities of the most active phones over time, with the recognised
phones written under the picture at their timestamps (:func:`plot_posteriorgram`), or, for an alignment, with a
Praat-like phone tier and word tier under it (:func:`plot_alignment`). matplotlib, Agg backend; no display."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

__all__ = ["plot_alignment", "plot_posteriorgram"]

log = logging.getLogger("anyphone.plot")

# Code points DejaVu Sans (matplotlib's default font) lacks, drawn as a look-alike sequence instead.
_DISPLAY = {"\u1d91": "\u0257\u0322"}  # ᶑ (implosive retroflex) -> ɗ + combining retroflex hook


def _show(token: str) -> str:
    return "".join(_DISPLAY.get(ch, ch) for ch in token)


def plot_posteriorgram(result, path: str | os.PathLike, *, max_rows: int = 24, start: float = 0.0,
                       end: float | None = None, max_seconds: float = 30.0, title: str | None = None) -> Path:
    """Draw ``result.posteriors`` (from ``recognize(..., return_result=True, keep_posteriors=True)``) to ``path``.

    Rows are the ``max_rows`` tokens with the largest peak probability in the window (blank first, in grey),
    time runs along x in seconds, and the recognised phones are written under the picture at their start times.
    Results longer than ``max_seconds`` are drawn from ``start`` to ``start + max_seconds`` unless ``end`` is
    given (a posteriorgram of an hour is not readable).

    Returns:
        The PNG path.
    Raises:
        ValueError: the result holds no posteriors.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    post = getattr(result, "posteriors", None)
    if post is None:
        raise ValueError("plot_posteriorgram: the result has no posteriors; recognise with keep_posteriors=True")
    id2token = list(result.id2token)
    shift = float(result.frame_shift)
    total = post.shape[0] * shift
    if end is None:
        end = min(total, start + max_seconds)
        if total > start + max_seconds:
            log.warning("plot: %.1f s of audio, drawing %.1f-%.1f s only (pass end= for more)", total, start, end)
    f0, f1 = max(0, round(start / shift)), max(0, min(post.shape[0], round(end / shift)))
    window = post[f0:f1] if f1 > f0 else np.zeros((1, len(id2token)), dtype=np.float32)
    blank = int(result.blank_id)

    peak = window.max(axis=0)
    peak[blank] = -1.0
    order = [int(i) for i in np.argsort(-peak, kind="stable") if peak[i] > 0.02][: max(1, max_rows - 1)]
    # rows in order of first strong appearance, so the picture reads left to right like the transcript
    first = {i: int(np.argmax(window[:, i] >= 0.5 * peak[i])) for i in order}
    order.sort(key=lambda i: first[i])
    rows = [blank] + order
    labels = [_show(id2token[i]) for i in rows]
    img = window[:, rows].T  # (R, T)

    seconds = max(end - start, shift)
    shown = [s for s in result.segments if start <= s.start < end]
    # wide enough for the time span and for the phone labels (two staggered rows of them)
    width = float(np.clip(max(2.0 + seconds * 2.2, 2.0 + 0.22 * len(shown)), 7.0, 40.0))
    height = 1.6 + 0.28 * len(rows)
    fig, (ax, lab) = plt.subplots(2, 1, figsize=(width, height), sharex=True,
                                  gridspec_kw={"height_ratios": [max(3, len(rows)), 2.2], "hspace": 0.05})
    extent = (start, start + img.shape[1] * shift, len(rows) - 0.5, -0.5)
    im = ax.imshow(img, aspect="auto", interpolation="nearest", cmap="Greys", vmin=0.0, vmax=1.0, extent=extent)
    blank_mask = np.ones_like(img, dtype=bool)
    blank_mask[0] = False
    im_blank = np.ma.masked_array(np.nan_to_num(img), mask=blank_mask)
    ax.imshow(im_blank, aspect="auto", interpolation="nearest", cmap="Blues", vmin=0.0, vmax=1.6, extent=extent)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=11)
    ax.set_ylabel("token")
    for y in np.arange(0.5, len(rows) - 0.5):
        ax.axhline(y, color="#e6e6e6", lw=0.5)
    duration = float(getattr(result, "duration", 0.0) or total)
    name = Path(str(result.source)).name if getattr(result, "source", None) else "audio"
    ax.set_title(title or f"{name}: phone posteriorgram ({len(result.phones)} phones, {duration:.2f} s)", fontsize=11)
    cbar = fig.colorbar(im, ax=[ax, lab], fraction=0.015, pad=0.01)
    cbar.set_label("posterior")

    lab.set_ylim(0, 1)
    lab.set_yticks([])
    for side in ("left", "right", "top"):
        lab.spines[side].set_visible(False)
    for k, seg in enumerate(shown):
        x = seg.start + min(seg.duration, shift) / 2
        y = 0.68 if k % 2 == 0 else 0.25  # two staggered lines so neighbours never overlap
        lab.text(x, y, _show(seg.phone), ha="center", va="center", fontsize=13)
        lab.axvline(seg.start, ymin=y + 0.18, ymax=1.0, color="#b0b0b0", lw=0.6)
        ax.axvline(seg.start, color="#d62728", lw=0.6, alpha=0.35)
    if not shown:
        lab.text((start + end) / 2, 0.5, "(no phones)", ha="center", va="center", fontsize=11, color="#888888")
    lab.set_xlabel("time (s)")
    lab.set_xlim(start, start + img.shape[1] * shift)

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def _tier(ax, intervals, start: float, end: float, name: str, fontsize: int, sec_per_inch: float) -> None:
    """One Praat-like interval tier: a box per labelled interval, the label centred in it (labels wider than
    their interval are drawn smaller and staggered up/down, so neighbours do not overwrite each other)."""
    ax.set_ylim(0, 1)
    ax.set_yticks([0.5])
    ax.set_yticklabels([name], fontsize=10)
    ax.tick_params(axis="y", length=0)
    for k, (label, a, b) in enumerate(intervals):
        if b <= start or a >= end:
            continue
        ax.axvspan(a, b, ymin=0.08, ymax=0.92, color="#dbe8f5" if k % 2 == 0 else "#eef4fa", lw=0)
        ax.axvline(a, color="#4a6fa5", lw=0.8)
        ax.axvline(b, color="#4a6fa5", lw=0.8)
        mid = (max(a, start) + min(b, end)) / 2
        need = len(label) * fontsize / 72 * 0.62 * sec_per_inch  # label width in seconds
        y, size = (0.5, fontsize) if b - a >= need else (0.74 if k % 2 else 0.26, fontsize * 0.8)
        ax.text(mid, y, _show(label), ha="center", va="center", fontsize=size, clip_on=True)


def plot_alignment(alignment, path: str | os.PathLike, *, start: float = 0.0, end: float | None = None,
                   max_seconds: float = 30.0, title: str | None = None) -> Path:
    """Draw an alignment (``anyphone.alignment.Alignment`` with ``posteriors``) to a PNG: the posteriorgram of
    the transcript's tokens (blank first, in blue; the others in the order they are spoken) with the phone
    boundaries over it, and a phone tier and, when words are known, a word tier under it, as in Praat.

    Alignments longer than ``max_seconds`` are drawn from ``start`` to ``start + max_seconds`` unless ``end``
    is given. Returns the PNG path.

    Raises:
        ValueError: the alignment holds no posteriors (align with keep_posteriors=True).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    post = getattr(alignment, "posteriors", None)
    if post is None or alignment.id2token is None:
        raise ValueError("plot_alignment: the alignment has no posteriors; align with keep_posteriors=True")
    id2token = list(alignment.id2token)
    token2id = {t: i for i, t in enumerate(id2token)}
    shift = float(alignment.frame_shift)
    total = max(post.shape[0] * shift, float(alignment.duration))
    if end is None:
        end = min(total, start + max_seconds)
        if total > start + max_seconds:
            log.warning("plot: %.1f s of audio, drawing %.1f-%.1f s only (pass end= for more)", total, start, end)
    f0, f1 = max(0, int(start / shift)), max(0, min(post.shape[0], int(np.ceil(end / shift))))
    window = post[f0:f1] if f1 > f0 else np.zeros((1, len(id2token)), dtype=np.float32)
    blank = int(alignment.blank_id)
    # rows: the blank, then each token of the transcript once, in the order it is first spoken
    rows = [blank]
    for p in alignment.phones:
        for ch in p.phone:
            tid = token2id.get(ch)
            if tid is not None and tid not in rows:
                rows.append(tid)
    img = window[:, rows].T  # (R, T)
    phones = [(p.phone, p.start, p.end) for p in alignment.phones]
    words = [(w.word, w.start, w.end) for w in alignment.words]
    shown = [x for x in phones if x[2] > start and x[1] < end]
    seconds = max(end - start, shift)
    width = float(np.clip(max(2.5 + seconds * 3.0, 2.5 + 0.3 * len(shown)), 8.0, 48.0))
    n_tiers = 1 + bool(words)
    height = 1.8 + 0.26 * len(rows) + 0.55 * n_tiers
    fig, axes = plt.subplots(1 + n_tiers, 1, figsize=(width, height), sharex=True,
                             gridspec_kw={"height_ratios": [max(3.0, 0.5 * len(rows))] + [1.0] * n_tiers,
                                          "hspace": 0.06})
    ax = axes[0]
    extent = (f0 * shift, f0 * shift + img.shape[1] * shift, len(rows) - 0.5, -0.5)
    im = ax.imshow(img, aspect="auto", interpolation="nearest", cmap="Greys", vmin=0.0, vmax=1.0, extent=extent)
    blank_mask = np.ones_like(img, dtype=bool)
    blank_mask[0] = False
    ax.imshow(np.ma.masked_array(img, mask=blank_mask), aspect="auto", interpolation="nearest", cmap="Blues",
              vmin=0.0, vmax=1.6, extent=extent)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([_show(id2token[i]) for i in rows], fontsize=10)
    ax.set_ylabel("token")
    for _, a, b in shown:
        ax.axvline(a, color="#d62728", lw=0.7, alpha=0.55)
        ax.axvline(b, color="#d62728", lw=0.7, alpha=0.55)
    name = Path(str(alignment.source)).name if getattr(alignment, "source", None) else "audio"
    ax.set_title(title or f"{name}: alignment of {len(alignment.phones)} phones ({alignment.duration:.2f} s)",
                 fontsize=11)
    cbar = fig.colorbar(im, ax=list(axes), fraction=0.015, pad=0.01)
    cbar.set_label("posterior")
    sec_per_inch = seconds / (0.8 * width)
    _tier(axes[1], phones, start, end, "phones", 12, sec_per_inch)
    if words:
        _tier(axes[2], words, start, end, "words", 11, sec_per_inch)
    axes[-1].set_xlabel("time (s)")
    axes[-1].set_xlim(start, end)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
