"""Display equations as PNG images, drawn by matplotlib's mathtext (no TeX installation needed).

Only mathtext's Agg rasteriser is used, never pyplot or a backend, so MPLBACKEND is irrelevant.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from functools import lru_cache

import matplotlib.backends.backend_agg  # noqa: F401  # mathtext's rasteriser; imported at start, not mid-answer
import numpy as np
import numpy.typing as npt
from matplotlib.font_manager import FontProperties
from matplotlib.mathtext import MathTextParser
from PIL import Image  # Pillow: matplotlib's own PNG writer, without importing matplotlib.figure

log = logging.getLogger(__name__)

#: 22 pt Computer Modern at 150 dpi: about 46 px per em, crisp on high-density screens.
FONT_SIZE = 22
DPI = 150
PAD_INCHES = 0.08
#: Larger images are drawn at a lower resolution; below MIN_DPI the equation is not an image.
MAX_WIDTH_PX = 2000
MAX_HEIGHT_PX = 800
MIN_DPI = 90
#: Longer LaTeX is not an equation a reader takes in from one image.
MAX_LATEX_CHARS = 1000
#: Slack's text colour, on white: legible in light and dark themes alike.
INK = 0x1D

# mathtext keeps module-level caches and matplotlib is not thread-safe: one render at a time.
_lock = threading.Lock()
_raster = MathTextParser("agg")
_font = FontProperties(size=FONT_SIZE, math_fontfamily="cm")


async def render(latex: str) -> bytes | None:
    """The equation as PNG bytes, or None when mathtext can't draw it; runs off the event loop."""
    return await asyncio.to_thread(render_sync, latex)


async def render_all(formulas: list[str]) -> list[bytes | None]:
    """Several equations in one trip to a worker thread."""
    return await asyncio.to_thread(lambda: [render_sync(latex) for latex in formulas])


@lru_cache(maxsize=512)
def render_sync(latex: str) -> bytes | None:
    source = latex.strip()
    if not source or len(source) > MAX_LATEX_CHARS or "\n\n" in source:
        return None
    with _lock:
        try:
            return _draw(f"${source}$")
        except (ValueError, RuntimeError) as exc:  # ParseFatalException is a ValueError here
            log.info("mathtext can't draw %r: %s", source[:80], str(exc).splitlines()[0] if str(exc) else exc)
            return None


def _draw(math: str) -> bytes | None:
    """Rasterise with mathtext's Agg parser directly: a figure and a tight bbox cost 3× as much."""
    alpha = _ink(math, DPI)
    dpi = _fitting_dpi(alpha.shape[1], alpha.shape[0])
    if dpi is None:
        return None
    if dpi < DPI:
        alpha = _ink(math, dpi)
    pad = round(PAD_INCHES * dpi)
    height, width = alpha.shape
    gray = np.full((height + 2 * pad, width + 2 * pad), 255, dtype=np.uint8)
    # Ink on white: full coverage is INK, none is white, edges blend (the antialiasing).
    gray[pad : pad + height, pad : pad + width] = 255 - (alpha.astype(np.uint16) * (255 - INK) // 255)
    out = io.BytesIO()
    Image.fromarray(gray, mode="L").save(out, format="PNG")
    return out.getvalue()


def _ink(math: str, dpi: float) -> npt.NDArray[np.uint8]:
    """The equation's coverage (0–255) at `dpi`, cropped to the glyphs."""
    return np.asarray(_raster.parse(math, dpi=dpi, prop=_font).image, dtype=np.uint8)


def _fitting_dpi(width_px: int, height_px: int) -> float | None:
    """DPI, lowered so the image stays within MAX_WIDTH_PX × MAX_HEIGHT_PX; None below MIN_DPI."""
    if width_px <= 0 or height_px <= 0:
        return None
    pad = 2 * PAD_INCHES * DPI
    dpi = min(DPI, DPI * MAX_WIDTH_PX / (width_px + pad), DPI * MAX_HEIGHT_PX / (height_px + pad))
    return dpi if dpi >= MIN_DPI else None
