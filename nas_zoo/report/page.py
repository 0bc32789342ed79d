"""A page of headings, text, tables and figures, written as one self-contained HTML file (the images inline, as
data URIs) or as a folder of Markdown and PNG files; either carries ``files.MARK`` so a later run may replace it."""
import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from matplotlib.figure import Figure

from .. import __version__
from ..files import MARK, ours_directory, write_ours
from .figures import figure_bytes

FORMATS = ("html", "md")
STYLE = """body{font-family:Georgia,serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.2em .5em}
th{background:#f3f3f3;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}img{max-width:100%}figcaption{font-size:.9em;color:#555}.scroll{overflow-x:auto}"""


@dataclass
class Page:
    title: str
    blocks: List[Tuple[str, Any]] = field(default_factory=list)
    images: Dict[str, bytes] = field(default_factory=dict)  # file name -> PNG

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], id: Optional[str] = None) -> None:
        """A table; ``id`` names it in the HTML (``<table id=...>``) so a program can find it."""
        self.blocks.append(("table", (list(header), [[_cell(v) for v in row] for row in rows], id)))

    def figure(self, name: str, figure: Figure, caption: str) -> None:
        """``figure`` as a PNG named after ``name`` (made unique on the page)."""
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "figure"
        file, n = f"{stem}.png", 1
        while file in self.images:
            n += 1
            file = f"{stem}-{n}.png"
        self.images[file] = figure_bytes(figure, "png")
        self.blocks.append(("figure", (file, caption)))

    def html(self) -> bytes:
        parts = [f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                 f'<meta name="generator" content="{MARK} {__version__}"><title>{html.escape(self.title)}</title>'
                 f"<style>{STYLE}</style></head><body>\n<h1>{html.escape(self.title)}</h1>"]
        for kind, content in self.blocks:
            if kind == "heading":
                parts.append(f"<h{content[0]}>{html.escape(content[1])}</h{content[0]}>")
            elif kind == "text":
                parts.append(f"<p>{html.escape(content)}</p>")
            elif kind == "table":
                header, rows, id = content
                head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
                body = "".join("<tr>" + "".join(f'<td{" class=n" if _numeric(v) else ""}>{html.escape(v)}</td>'
                                                for v in row) + "</tr>\n" for row in rows)
                ident = f' id="{html.escape(id)}"' if id else ""
                parts.append(f'<div class="scroll"><table{ident}><tr>{head}</tr>\n{body}</table></div>')
            else:
                file, caption = content
                data = base64.b64encode(self.images[file]).decode()
                parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                             f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        return ("\n".join(parts) + "\n</body></html>\n").encode()

    def markdown(self) -> str:
        parts = [f"<!-- {MARK} {__version__} -->", f"# {self.title}"]
        for kind, content in self.blocks:
            if kind == "heading":
                parts.append(f"{'#' * content[0]} {content[1]}")
            elif kind == "text":
                parts.append(content)
            elif kind == "table":
                parts.append(markdown_table(*content[:2]))
            else:
                file, caption = content
                parts.append(f"![{caption}]({file})\n\n*{caption}*")
        return "\n\n".join(parts) + "\n"

    def write(self, out, format: str = "html") -> Path:
        """``out``: an HTML file, or for ``md`` a folder (``report.md`` and the PNGs), replaced whole; either must
        be new or an earlier output of nas-zoo (``files.write_ours``, ``files.ours_directory``)."""
        check_format(format)
        if format == "html":
            write_ours(out, self.html())
            return Path(out)
        with ours_directory(out) as tmp:
            (tmp / "report.md").write_text(self.markdown())
            for file, data in self.images.items():
                (tmp / file).write_bytes(data)
        return Path(out) / "report.md"


def check_format(format: str) -> None:
    if format not in FORMATS:
        raise ValueError(f"--format {format!r}: use one of {', '.join(FORMATS)}")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
    return "\n".join([line(header), "|" + "---|" * len(header)] + [line(row) for row in rows])


def _cell(value: Any) -> str:
    """A table cell: a number to 6 significant digits (the records round most to 4 decimals), nothing as a dash."""
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
