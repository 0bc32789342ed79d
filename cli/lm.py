"""Language-model runs for the CLI: ``nas-zoo train/evaluate NAME --dataset ptb|wt2`` call these."""
import contextlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer
from rich.console import Console

from nas_zoo.checkpoint import CheckpointError
from nas_zoo.corpus import CorpusError, load_corpus
from nas_zoo.genotype import GenotypeError
from nas_zoo.lm import LMError, TrainConfig, build_model, evaluate_checkpoint, evaluate_model, resolve, train

console = Console(stderr=True)


@contextlib.contextmanager
def _user_errors():
    """Bad input of any kind -> one line on stderr and exit status 2."""
    try:
        yield
    except (CorpusError, GenotypeError, CheckpointError, LMError, KeyError) as e:
        from .app import fail

        raise fail(str(e).strip('"')) from None


def train_language_model(model: str, dataset: str, data_dir: Path, out: Path, resume: bool,
                         overrides: Dict[str, Any]) -> None:
    """Train ``model`` (zoo LM, recurrent genotype or genotype file) on ``dataset`` with the paper's recipe."""
    with _user_errors():
        name, genotype, setting = resolve(model, dataset)
        corpus = load_corpus(dataset, data_dir)
        result = train(name, genotype, corpus, out, setting, overrides, resume, log=console.print)
    console.print(f"{name} on {dataset}: best valid ppl {result['valid_ppl']:.2f}, test ppl {result['test_ppl']:.2f} "
                  f"({out / 'best'})")


def evaluate_language_model(model: str, dataset: str, data_dir: Path, checkpoint: Optional[Path]) -> Dict[str, Any]:
    """Validation and test perplexity, params and tokens/s; without a checkpoint, of the untrained model."""
    with _user_errors():
        name, genotype, setting = resolve(model, dataset)
        corpus = load_corpus(dataset, data_dir)
        if checkpoint is None:
            net = build_model(genotype, len(corpus.words), TrainConfig.create(setting, {}))
            result = evaluate_model(net, corpus, name=name)
        else:
            result = evaluate_checkpoint(checkpoint, corpus)
            if result["model"] != name:
                raise LMError(f"{checkpoint} holds a {result['model']} model, not {name}")
    result["checkpoint"] = None if checkpoint is None else str(checkpoint)
    return result


def _overrides(pairs: List[str]) -> Dict[str, Any]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            sep = ""
        if not sep:
            from .app import fail

            raise fail(f"--set {pair!r}: expected FIELD=NUMBER, e.g. --set epochs=40")
    return overrides


def train_command(
    name: str = typer.Argument(..., help="language model (darts_v2_ptb), recurrent genotype or genotype file"),
    dataset: str = typer.Option("ptb", help="ptb or wt2"),
    data_dir: Path = typer.Option(..., help="directory with the corpus files"),
    out: Path = typer.Option(..., help="run directory (checkpoints last/ and best/)"),
    resume: bool = typer.Option(False, help="continue the run in --out from its last checkpoint"),
    settings: List[str] = typer.Option([], "--set", help="FIELD=VALUE over the paper's recipe (rnn/train.py names)"),
) -> None:
    """Train a language model with the paper's recipe (SGD, then ASGD); checkpoints every epoch."""
    train_language_model(name, dataset, data_dir, out, resume, _overrides(settings))


def evaluate_command(
    name: str = typer.Argument(..., help="language model, recurrent genotype or genotype file"),
    dataset: str = typer.Option("ptb", help="ptb or wt2"),
    data_dir: Path = typer.Option(..., help="directory with the corpus files"),
    checkpoint: Optional[Path] = typer.Option(None, help="run directory or checkpoint (default: untrained)"),
) -> None:
    """Validation and test perplexity, parameters and tokens/s of a language model."""
    result = evaluate_language_model(name, dataset, data_dir, checkpoint)
    json.dump(result, typer.get_text_stream("stdout"), indent=2)
    typer.echo()
