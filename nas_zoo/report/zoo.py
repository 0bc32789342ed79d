"""The zoo page (``nas-zoo report --zoo``) and the README's model tables, both from the registry.

Every registered model with its genotype, network, measured parameters (and on the page its mult-adds under
each paper's convention, ``models.flops``), the paper's reported figures with their sources, its pretrained
tags, and each genotype's cells drawn. Sizes are counted on PyTorch's meta device: the same shapes as a real
build, no memory and no arithmetic, so the counts are exact and the page takes seconds.

``python -m nas_zoo.report.zoo README.md`` rewrites the README's tables (between the ``<!-- zoo table ... -->``
comments); ``tests/test_report.py`` fails when they differ from the registry.
"""
import re
import sys
from typing import Any, Dict, List, Tuple

import torch

from ..files import write_text_atomic
from ..models.flops import count_flops
from ..registry.genotype import RecurrentGenotype, get_genotype, list_genotypes
from ..registry.summary import language_model_rows, zoo_rows
from ..registry.zoo import LM_MODELS, MODELS, NUM_CLASSES
from .draw import draw_genotype, network_of
from .page import Page, check_format, markdown_table

#: a README table: its opening comment, the table's lines (each begins with "|"), the closing comment
TABLE = re.compile(r"(<!-- zoo table: (?P<name>[a-z ]+) -->\n)(?:\|[^\n]*\n)*(<!-- end of zoo table -->)")


def _number(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}".rstrip("0").rstrip(".")


def _file(row: Dict[str, Any]) -> str:
    return f"{row['genotype']} ({row['family']}.json)"


def _weights(row: Dict[str, Any]) -> str:
    return "published" if row["published"] else "not yet published"


def model_rows(flops: bool = False) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """The image models' rows (``summary.zoo_rows``, with ``flops`` per convention when asked) and the language
    models' (``summary.language_model_rows``), counted on the meta device."""
    with torch.device("meta"):
        images, languages = zoo_rows(), language_model_rows()
        if flops:
            for row in images:
                spec = MODELS[row["model"].split(".")[0]]
                size = 224 if spec.imagenet else 32
                row["flops"] = count_flops(spec.build(num_classes=NUM_CLASSES[row["dataset"]]),
                                           (3, size, size)).conventions()
    return images, languages


def image_table(rows: List[Dict[str, Any]], page: bool = False) -> Tuple[List[str], List[List[str]]]:
    """The image models' table: the README's columns, and on the page the mult-adds and the sources too."""
    conventions = list(rows[0]["flops"]) if page else []
    header = ["model", "genotype (file)", "network C/cells", "params", *(f"mult-adds M, {c}" for c in conventions),
              "paper params M", *["paper mult-adds M"] * page, "paper error %", "search GPU-days", "weights",
              *["source"] * page]
    code = "" if page else "`"  # Markdown's code span in the README
    table = [[f"{code}{r['model']}{code}", _file(r), f"{r['network']} {r['C']}/{r['layers']}", _number(r["params"]),
              *(_number(r["flops"][c] / 1e6, 1) for c in conventions), _number(r["reported_params_M"]),
              *[_number(r["reported"].get("mult_adds_M"))] * page, _number(r["reported_error"]),
              _number(r["search_cost_gpu_days"]), _weights(r), *[r["reported"].get("source", "-")] * page]
             for r in rows]
    return header, table


def language_table(rows: List[Dict[str, Any]], page: bool = False) -> Tuple[List[str], List[List[str]]]:
    header = ["model", "genotype (file)", "units", "words", "params", "paper params M", "paper valid ppl",
              "paper test ppl", "search GPU-days", *["source"] * page]
    code = "" if page else "`"
    table = [[f"{code}{r['model']}{code}", _file(r), _number(r["nhid"]), _number(r["ntoken"]), _number(r["params"]),
              _number(r["reported_params_M"]), _number(r["reported_val_ppl"]), _number(r["reported_test_ppl"]),
              _number(r["search_cost_gpu_days"]), *[r["reported"].get("source", "-")] * page] for r in rows]
    return header, table


def readme_tables() -> Dict[str, str]:
    """The README's tables by name, as Markdown."""
    images, languages = model_rows()
    return {"image models": markdown_table(*image_table(images)),
            "language models": markdown_table(*language_table(languages))}


def sync_readme(text: str) -> str:
    """``text`` (a README) with every ``<!-- zoo table: NAME -->`` block holding the registry's table NAME."""
    tables = readme_tables()
    return TABLE.sub(lambda m: m.group(1) + tables[m.group("name")] + "\n" + m.group(3), text)


def zoo_page() -> Page:
    images, languages = model_rows(flops=True)
    page = Page("nas-zoo: the zoo")
    page.text("Every registered model and paper evaluation. Params and mult-adds are counted here, for one image at "
              "the network's input size (32x32 on CIFAR, 224x224 on ImageNet), without the auxiliary head; the "
              "paper's figures and search costs are as reported, with their sources. A tag's weights load with "
              "timm.create_model(MODEL.TAG, pretrained=True) once published.")
    page.heading("Image models")
    page.table(*image_table(images, page=True), id="image-models")
    page.heading("Language models")
    page.table(*language_table(languages, page=True), id="language-models")
    page.heading("Cells")
    for name in list_genotypes():
        genotype = get_genotype(name)
        specs = LM_MODELS if isinstance(genotype, RecurrentGenotype) else MODELS
        models = [s for s in specs.values() if s.genotype is genotype]
        paper = genotype.paper
        page.heading(name, 3)
        page.text(f"{paper.get('title')} ({paper.get('venue')}, arXiv:{paper.get('arxiv')}); models: "
                  f"{', '.join(s.name for s in models) or 'none'}; " + (genotype.note or ""))
        page.figure(name, draw_genotype(genotype, network_of(genotype, models[0] if models else None)),
                    f"{name}, from {genotype.source}")
    return page


def write_zoo(out, format: str = "html"):
    """The zoo page written to ``out`` (``Page.write``); returns the file written."""
    check_format(format)
    return zoo_page().write(out, format)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m nas_zoo.report.zoo README.md  (rewrites its zoo tables from the registry)")
    text = open(sys.argv[1]).read()
    write_text_atomic(sys.argv[1], sync_readme(text))
