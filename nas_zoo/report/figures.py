"""What every picture shares: matplotlib without pyplot (no display, no global state), one look, and a figure's
bytes as SVG or PNG, marked as nas-zoo's (``files.MARK``) so that a later run may replace them."""
import functools
import io

import matplotlib
from matplotlib.figure import Figure

from ..files import MARK

FORMATS = ("svg", "png")
STYLE = {
    # the DARTS authors' drawings use Times (cnn/visualize.py); STIX is its match that matplotlib ships
    "font.family": "serif", "font.serif": ["STIXGeneral", "DejaVu Serif"], "mathtext.fontset": "stix",
    "font.size": 10, "axes.titlesize": 11, "axes.spines.top": False, "axes.spines.right": False,
    "svg.fonttype": "none",  # labels stay text in an SVG: searchable, and a program can read them back
    "svg.hashsalt": "nas-zoo",  # the same picture, the same file
}
DPI = 150


def styled(function):
    """Run ``function`` (which makes or renders figures) in ``STYLE``, leaving matplotlib's settings as they were."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return function(*args, **kwargs)
    return wrapper


@styled
def figure_bytes(figure: Figure, format: str) -> bytes:
    """``figure`` as an SVG or PNG file's bytes, with ``MARK`` in its metadata (the SVG's creator, the PNG's
    Software), near the start of the file."""
    if format not in FORMATS:
        raise ValueError(f"cannot write a picture as {format!r}; use one of: {', '.join(FORMATS)}")
    metadata = {"Creator": MARK, "Date": None} if format == "svg" else {"Software": MARK}
    buffer = io.BytesIO()
    figure.savefig(buffer, format=format, dpi=DPI, metadata=metadata, bbox_inches="tight", pad_inches=0.05)
    return buffer.getvalue()
