r"""Animations of a rollout: the truth, the ensemble mean and a few members, side by side.

One GIF frame per state of the rollout (context states included, labelled with their lead
time), written with Pillow; panels share one colour scale per animation (the truth's 1st and
99th percentiles over the whole rollout), so a drifting or blurring member is visible as such.
2-D fields only (a 3-D field is shown through its middle slice along the last axis).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

__all__ = ["animation_html", "rollout_frames", "write_rollout_animation"]

#: Pixels per panel side at least (small grids are enlarged by an integer factor).
MIN_PANEL_PIXELS = 96
#: Height of the label strip above each panel, in pixels.
LABEL_PIXELS = 14


def _two_dimensional(states: np.ndarray) -> np.ndarray:
    """``(T, H, W[, Z])`` → ``(T, H, W)`` (the middle slice of a 3-D field)."""
    states = np.asarray(states, dtype=np.float32)
    if states.ndim == 4:
        return states[..., states.shape[-1] // 2]
    if states.ndim != 3:
        raise ValueError(f"an animated field needs shape (T, H, W[, Z]), got {states.shape}")
    return states


def rollout_frames(
    panels: Mapping[str, np.ndarray],
    *,
    leads: Sequence[int] | None = None,
    colormap: str = "viridis",
) -> list:
    """The frames of the animation: one ``PIL.Image`` per state.

    :param panels: title → ``(T, H, W[, Z])`` states of one field, the same ``T`` for all
        (e.g. ``{"truth": ..., "ensemble mean": ..., "member 0": ...}``); the first panel
        sets the colour scale.
    :param leads: ``(T,)`` lead times shown in the labels (default: the state index).
    :returns: ``T`` RGB images, panels left to right.
    """
    if not panels:
        raise ValueError("an animation needs at least one panel")
    fields = {name: _two_dimensional(states) for name, states in panels.items()}
    lengths = {f.shape for f in fields.values()}
    if len(lengths) != 1:
        raise ValueError(f"the panels have different shapes: {sorted(lengths)}")
    reference = next(iter(fields.values()))
    count, height, width = reference.shape
    leads = list(range(count)) if leads is None else [int(v) for v in leads]
    if len(leads) != count:
        raise ValueError(f"{len(leads)} lead times for {count} states")
    finite = reference[np.isfinite(reference)]
    low, high = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    span = float(high - low) or 1.0
    scale = max(1, -(-MIN_PANEL_PIXELS // min(height, width)))
    cmap = colormaps[colormap]

    frames = []
    for t in range(count):
        canvas = Image.new("RGB", (len(fields) * width * scale, height * scale + LABEL_PIXELS), "white")
        draw = ImageDraw.Draw(canvas)
        for p, (name, states) in enumerate(fields.items()):
            # Rows are the first spatial axis, drawn top to bottom (as imshow does).
            unit = np.clip((np.nan_to_num(states[t], nan=low) - low) / span, 0.0, 1.0)
            rgb = (cmap(unit)[..., :3] * 255).astype(np.uint8)
            panel = Image.fromarray(rgb).resize((width * scale, height * scale), Image.NEAREST)
            canvas.paste(panel, (p * width * scale, LABEL_PIXELS))
            draw.text((p * width * scale + 2, 1), f"{name}  lead {leads[t]}", fill="black")
        frames.append(canvas)
    return frames


def write_rollout_animation(
    path: str | Path,
    panels: Mapping[str, np.ndarray],
    *,
    leads: Sequence[int] | None = None,
    frame_ms: int = 200,
) -> Path:
    """Write the animation of :func:`rollout_frames` as a looping GIF at ``path``.

    :param frame_ms: display time of each frame in milliseconds.
    :returns: ``path``.
    """
    frames = rollout_frames(panels, leads=leads)
    path = Path(path)
    # disposal=1 and optimize=False: every state stays its own frame, even when two
    # consecutive states are identical (a GIF writer may otherwise merge them).
    frames[0].save(
        path, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0, optimize=False, disposal=1
    )
    return path


def animation_html(gif: str | Path | bytes, *, caption: str | None = None) -> str:
    """An ``<img>`` holding the GIF (a path or its bytes) inline, base64-encoded, so an HTML
    report shows it offline."""
    blob = gif if isinstance(gif, bytes) else Path(gif).read_bytes()
    data = base64.b64encode(blob).decode("ascii")
    figure = f'<figure><img alt="rollout animation" src="data:image/gif;base64,{data}">'
    if caption:
        figure += f"<figcaption>{escape(caption)}</figcaption>"
    return figure + "</figure>"
