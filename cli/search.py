"""``nas-zoo search ALGORITHM``: one command per entry of ``nas_zoo.search.ALGORITHMS``.

Each command's flags are the shared loop's settings, with that algorithm's paper defaults shown, and the
options the algorithm declares; nothing here names an algorithm.
"""
import inspect
from pathlib import Path
from typing import Any, Dict, Optional, Type

import typer
from typer.core import TyperCommand, TyperGroup

from nas_zoo.search import ALGORITHMS, Option, SearchAlgorithm, SearchConfig, new_search
from nas_zoo.search.algorithm import LOOP_DEFAULTS, PTB_DEFAULTS
from nas_zoo.threads import AUTO, set_threads

from .output import THREADS_HELP, console, fail, library_errors

#: click's UsageError, as the click that typer runs on defines it (typer >= 0.20 carries its own copy)
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class _Algorithms(TyperGroup):
    """Unknown algorithms get one line naming the known ones."""

    def resolve_command(self, ctx, args):
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            raise fail(f"unknown algorithm {args[0]!r}; choose one of {', '.join(ALGORITHMS)}")
        return super().resolve_command(ctx, args)


class _AlgorithmCommand(TyperCommand):
    """A flag the algorithm does not have, or a bad value, is one line that says where to look."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except UsageError as e:
            raise fail(f"{e.format_message()} (see nas-zoo search {info_name} --help)") from None


search_app = typer.Typer(cls=_Algorithms, no_args_is_help=True, rich_markup_mode=None,
                         help="Search a cell pair: writes OUT/genotype.json (for nas-zoo train/info), "
                              "OUT/search.json (the record) and OUT/checkpoint (for --resume).")


def _option(name: str, default: Any, help: str, kind: type, paper: Optional[str] = None) -> inspect.Parameter:
    """A keyword parameter typer reads as ``--name``; a ``paper`` default is passed as None and shown."""
    flag = "--" + name.replace("_", "-")
    decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
    if paper is not None:
        help = f"{help}  [default: {paper}]"  # as click shows a default, without its parentheses
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],
                             default=typer.Option(default, *decls, help=help, show_default=paper is None))


def _text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _paper_default(algorithm: Type[SearchAlgorithm], key: str, default: Any) -> str:
    """The paper's value of ``key`` as --help shows it, with the ImageNet search's where it differs."""
    cifar = {**LOOP_DEFAULTS, **algorithm.defaults}.get(key, default)
    imagenet = (algorithm.imagenet or {}).get(key, cifar)
    return _text(cifar) + (f"; imagenet: {_text(imagenet)}" if imagenet != cifar else "")


def _loop_options(algorithm: Type[SearchAlgorithm], stages: bool) -> list:
    per_stage = " of each stage" if stages else ""

    def paper(name: str, help: str) -> inspect.Parameter:
        return _option(name, None, help, int, _paper_default(algorithm, name, None))

    datasets = ["cifar10, cifar100 (the standard python layout)"]
    datasets += ["imagenet (class folders DATA_DIR/train/CLASS/*)"] if algorithm.imagenet else []
    datasets += ["ptb (a recurrent cell on Penn Treebank, ptb.{train,valid,test}.txt; loop defaults then "
                 "rnn/train_search.py's: batch 256, lr 20, clip 0.25, arch-lr 3e-3)"] if algorithm.ptb is not None else []
    text = [
        _option("nhid", None, "ptb: embedding and hidden size", int, _text(PTB_DEFAULTS["nhid"])),
        _option("bptt", None, "ptb: BPTT window", int, _text(PTB_DEFAULTS["bptt"])),
        _option("dropouts", None, "ptb: output, hidden, input, embedding-output and embedding-word dropouts", str,
                _text(PTB_DEFAULTS["dropouts"])),
        _option("max_batches", 0, "ptb: windows per epoch (0: the whole training split)", int),
    ] if algorithm.ptb is not None else []
    return [
        _option("dataset", "cifar10", " or ".join(datasets), str),
        _option("data_dir", Path("data"), "folder holding cifar-10-batches-py / cifar-100-python"
                                          + (" / train (imagenet)" if algorithm.imagenet else "")
                                          + (" / the ptb files" if algorithm.ptb is not None else ""), Path),
        paper("epochs", f"search epochs{per_stage}"),
        paper("batch_size", "batch size of the weights' and alpha's steps; under torchrun the global batch, split "
                            "over the processes"),
        paper("init_channels", "supernet width C"),
        paper("layers", "supernet cells (reductions at 1/3 and 2/3)"),
        _option("seed", 2, "random seed", int),
        paper("arch_warmup", f"epochs{per_stage} before alpha is updated"),
        _option("num_workers", 2, "data-loading worker processes", int),
        _option("channels_last", True, "activations in NHWC (same math; faster on CPU)", bool),
        _option("sync_bn", False, "under torchrun: batch norm over the whole batch, not each process's share", bool),
        _option("device", None, "cpu, cuda, cuda:1 ... (default: cuda when available)", Optional[str]),
        *text,
        _option("resume", False, "continue from OUT/checkpoint", bool),
        _option("out", Path("search-out"), "output folder", Path),
        _option("threads", AUTO, THREADS_HELP, int),
    ]


def _command(name: str, algorithm: Type[SearchAlgorithm]):
    stages = algorithm().stages > 1
    own = [_option(o.name, None, o.help, str if isinstance(o.default, tuple) else type(o.default),
                   _paper_default(algorithm, o.name, o.default)) for o in algorithm.options]

    def command(**values) -> None:
        _search(name, algorithm, values)

    command.__signature__ = inspect.Signature(_loop_options(algorithm, stages) + own)
    command.__doc__ = inspect.getmodule(algorithm).__doc__.split("\n\n")[0]
    return command


def _search(name: str, algorithm: Type[SearchAlgorithm], values: Dict[str, Any]) -> None:
    given = {o.name: values.pop(o.name) for o in algorithm.options}
    resume, out = values.pop("resume"), values.pop("out")
    set_threads(values.pop("threads"))
    with library_errors(out):
        settings = {o.name: o.parse(given[o.name]) if isinstance(o.default, tuple) else given[o.name]
                    for o in algorithm.options if given[o.name] is not None}
        method = algorithm(**settings)  # options left unset follow the paper on the dataset searched
        if values.get("dropouts") is not None:
            values["dropouts"] = Option("dropouts", (0.0,), "").parse(values["dropouts"])
        config = SearchConfig(**{k: str(v) if k == "data_dir" else v for k, v in values.items() if v is not None})
        search = new_search(method, config, out)
        record = search.run(resume)
    epochs = f"{record['epochs_done']} epoch{'' if record['epochs_done'] == 1 else 's'}"
    console.print(f"{record['algorithm']}: {epochs}, {search.outcome(record)}; wrote {out / 'genotype.json'} and "
                  f"{out / 'search.json'}", highlight=False)


for _name, _algorithm in ALGORITHMS.items():
    search_app.command(_name, cls=_AlgorithmCommand)(_command(_name, _algorithm))
