"""Display equations as PNG images, drawn by matplotlib's mathtext (no TeX installation needed).

Only the Agg canvas is used, never pyplot, so MPLBACKEND and any GUI backend are irrelevant.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from functools import lru_cache

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.mathtext import MathTextParser

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

# mathtext keeps module-level caches and matplotlib is not thread-safe: one render at a time.
_lock = threading.Lock()
_measure = MathTextParser("path")
_font = FontProperties(size=FONT_SIZE, math_fontfamily="cm")


async def render(latex: str) -> bytes | None:
    """The equation as PNG bytes, or None when mathtext can't draw it; runs off the event loop."""
    return await asyncio.to_thread(render_sync, latex)


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
    width, height, depth, *_ = _measure.parse(math, dpi=72, prop=_font)
    dpi = _fitting_dpi(width + 2 * 72 * PAD_INCHES, height + 2 * 72 * PAD_INCHES)
    if dpi is None:
        return None
    figure = Figure(figsize=(width / 72, height / 72), facecolor="white")
    FigureCanvasAgg(figure)
    figure.text(0, depth / height, math, fontproperties=_font, color="#1d1c1d")
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=dpi, bbox_inches="tight", pad_inches=PAD_INCHES, facecolor="white")
    return out.getvalue()


def _fitting_dpi(width_pt: float, height_pt: float) -> float | None:
    """DPI, lowered so the image stays within MAX_WIDTH_PX × MAX_HEIGHT_PX; None below MIN_DPI."""
    if width_pt <= 0 or height_pt <= 0:
        return None
    dpi = min(DPI, MAX_WIDTH_PX * 72 / width_pt, MAX_HEIGHT_PX * 72 / height_pt)
    return dpi if dpi >= MIN_DPI else None
