"""Text heat maps (HTML and PNG) and per-pair image overlays for CLIP explanations.

Token colours: each token's relevance divided by the largest relevance of the text (negative
values, which the generic rule does not produce, are clipped to 0), through a matplotlib colormap
(``"Reds"`` by default), so the most relevant token always gets the strongest colour. The
numbers shown (tooltip in HTML, under each token in PNG) are the notebook's normalised values:
relevance divided by the sum over the text's tokens.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from attnlens.errors import InputError
from attnlens.viz.io import save_figure, write_text_atomic

__all__ = [
    "save_text_heatmap_html",
    "save_text_heatmap_png",
    "text_heatmap_figure",
    "text_heatmap_html",
    "token_colors",
]


def _values(tokens: Sequence[str], relevance) -> np.ndarray:
    values = relevance.detach().float().cpu().numpy() if isinstance(relevance, torch.Tensor) else np.asarray(relevance, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(tokens) != values.shape[0]:
        raise InputError(f"got {len(tokens)} tokens but {values.shape[0]} relevance values")
    if not np.isfinite(values).all():
        raise InputError("text relevance contains NaN or infinite values")
    return values


def _shares(values: np.ndarray) -> np.ndarray:
    total = values.sum()
    return values / total if total != 0 else np.zeros_like(values)


def _intensity(values: np.ndarray) -> np.ndarray:
    top = values.max() if values.size else 0.0
    return np.clip(values / top, 0.0, 1.0) if top > 0 else np.zeros_like(values)


def token_colors(values: np.ndarray, colormap: str = "Reds", strength: float = 0.85) -> list[tuple[int, int, int]]:
    """RGB colour per token (see the module docstring); ``strength`` caps the darkest colour."""
    cmap = colormaps[colormap]
    return [tuple(int(round(c * 255)) for c in cmap(float(v) * strength)[:3]) for v in _intensity(values)]


def _text_color(rgb: tuple[int, int, int]) -> str:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return "#000000" if luminance > 140 else "#ffffff"


def text_heatmap_html(
    tokens: Sequence[str],
    relevance,
    *,
    title: str | None = None,
    colormap: str = "Reds",
    full_page: bool = False,
) -> str:
    """HTML with one coloured ``<span>`` per token (tooltip: normalised and raw relevance).

    ``full_page`` wraps the snippet into a complete HTML document.
    """
    values = _values(tokens, relevance)
    shares = _shares(values)
    spans = []
    for token, value, share, rgb in zip(tokens, values, shares, token_colors(values, colormap)):
        text = html.escape(token.rstrip(" ")) or "&nbsp;"
        space = " " if token.endswith(" ") else ""
        spans.append(
            f'<span class="attnlens-token" title="{share:.4f} (raw {value:.6g})" '
            f'style="background-color: rgb{rgb}; color: {_text_color(rgb)}; padding: 1px 2px; '
            f'border-radius: 3px;">{text}</span>{space}'
        )
    body = '<div class="attnlens-text-heatmap" style="font-family: sans-serif; line-height: 1.8;">'
    if title:
        body += f"<div style=\"font-weight: bold; margin-bottom: 4px;\">{html.escape(title)}</div>"
    body += "".join(spans) + "</div>"
    if not full_page:
        return body
    page_title = html.escape(title or "text relevance")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>"
        f"{page_title}</title></head><body>\n{body}\n</body></html>\n"
    )


def text_heatmap_figure(
    tokens: Sequence[str],
    relevance,
    *,
    title: str | None = None,
    colormap: str = "Reds",
    max_width: float = 10.0,
    font_size: int = 14,
    strength: float = 0.85,
) -> Figure:
    """A figure showing the tokens as coloured boxes (wrapped), the normalised value under each.

    ``strength`` in ``[0, 1]`` is the colour intensity of the most relevant token.
    """
    values = _values(tokens, relevance)
    shares = _shares(values)
    colors = token_colors(values, colormap, strength)
    char_width = font_size * 0.62 / 72.0  # inches per character (approximate)
    box_height = font_size * 2.6 / 72.0
    gap = char_width * 0.6
    lines: list[list[tuple[int, float, float]]] = [[]]
    cursor = 0.0
    for index, token in enumerate(tokens):
        width = max(len(token.strip()), 4) * char_width + gap
        if cursor > 0 and cursor + width > max_width:
            lines.append([])
            cursor = 0.0
        lines[-1].append((index, cursor, width))
        cursor += width
    height = len(lines) * box_height + (0.45 if title else 0.1)
    width_in = max(max((x + w for _, x, w in line), default=1.0) for line in lines) + 0.2
    figure = Figure(figsize=(max(width_in, 2.0), max(height, 0.6)))
    axes = figure.add_axes([0, 0, 1, 1])
    axes.set_xlim(0, max(width_in, 2.0))
    axes.set_ylim(max(height, 0.6), 0)
    axes.axis("off")
    top = 0.4 if title else 0.05
    if title:
        axes.text(0.1, 0.22, title, fontsize=font_size, fontweight="bold", va="center")
    for number, line in enumerate(lines):
        y = top + number * box_height
        for index, x, width in line:
            rgb = tuple(c / 255.0 for c in colors[index])
            axes.add_patch(
                _rectangle((0.1 + x, y), width - gap, box_height * 0.62, rgb)
            )
            axes.text(
                0.1 + x + (width - gap) / 2, y + box_height * 0.31, tokens[index].strip() or "\u2423",
                ha="center", va="center", fontsize=font_size, color=_text_color(colors[index]),
            )
            axes.text(
                0.1 + x + (width - gap) / 2, y + box_height * 0.8, f"{shares[index]:.2f}",
                ha="center", va="center", fontsize=font_size * 0.6, color="#444444",
            )
    return figure


def text_heatmap_image(tokens: Sequence[str], relevance, *, dpi: int = 100, **kwargs):
    """The text heat map figure rendered to an RGB PIL image (keywords: :func:`text_heatmap_figure`)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    text_heatmap_figure(tokens, relevance, **kwargs).savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _rectangle(origin, width, height, color):
    from matplotlib.patches import FancyBboxPatch

    return FancyBboxPatch(origin, width, height, boxstyle="round,pad=0.0,rounding_size=0.04", facecolor=color, edgecolor="none")


def save_text_heatmap_html(path: str | os.PathLike, tokens: Sequence[str], relevance, **kwargs) -> Path:
    """Write a complete HTML page with the text heat map (atomically)."""
    return write_text_atomic(path, text_heatmap_html(tokens, relevance, full_page=True, **kwargs))


def save_text_heatmap_png(path: str | os.PathLike, tokens: Sequence[str], relevance, *, dpi: int = 120, **kwargs) -> Path:
    """Write the text heat map figure as PNG (atomically)."""
    return save_figure(text_heatmap_figure(tokens, relevance, **kwargs), path, dpi=dpi)
