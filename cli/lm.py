"""Language-model runs for the CLI: ``nas-zoo train/evaluate NAME --dataset ptb|wt2`` call these."""
import contextlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from rich.console import Console

from nas_zoo.checkpoint import CheckpointError, OutputError
from nas_zoo.corpus import CorpusError, load_corpus
from nas_zoo.genotype import GenotypeError
from nas_zoo.lm import LMError, LMConfig, build_model, evaluate_checkpoint, evaluate_model, resolve, train_lm

console = Console(stderr=True)


@contextlib.contextmanager
def lm_errors():
    """Bad input of any kind -> one line on stderr and exit status 2."""
    try:
        yield
    except (CorpusError, GenotypeError, CheckpointError, OutputError, LMError, KeyError, FloatingPointError) as e:
        from .output import fail

        raise fail(str(e).strip('"')) from None


def train_language_model(model: str, dataset: str, data_dir: Path, out: Path, resume: bool,
                         overrides: Dict[str, Any]) -> None:
    """Train ``model`` (zoo LM, recurrent genotype or genotype file) on ``dataset`` with the paper's recipe."""
    with lm_errors():
        name, genotype, setting = resolve(model, dataset)
        corpus = load_corpus(dataset, data_dir)
        result = train_lm(name, genotype, corpus, out, setting, overrides, resume,
                          log=lambda message: console.print(message, markup=False, highlight=False, soft_wrap=True))
    console.print(f"{name} on {dataset}: best valid ppl {result['valid_ppl']:.2f}, test ppl {result['test_ppl']:.2f} "
                  f"({out / 'best'})")


def evaluate_language_model(model: str, dataset: str, data_dir: Path, checkpoint: Optional[Path]) -> Dict[str, Any]:
    """Validation and test perplexity, params and tokens/s; without a checkpoint, of the untrained model."""
    with lm_errors():
        name, genotype, setting = resolve(model, dataset)
        corpus = load_corpus(dataset, data_dir)
        if checkpoint is None:
            net = build_model(genotype, len(corpus.words), LMConfig.create(setting, {}))
            result = evaluate_model(net, corpus, name=name)
        else:
            result = evaluate_checkpoint(checkpoint, corpus)
            if result["model"] != name:
                raise LMError(f"{checkpoint} holds a {result['model']} model, not {name}")
    result.update(checkpoint=None if checkpoint is None else str(checkpoint), threads=torch.get_num_threads())
    return result


def parse_settings(pairs: List[str]) -> Dict[str, Any]:
    """``--set FIELD=VALUE`` pairs (values as JSON numbers or booleans) to an overrides dict."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            sep = ""
        if not sep:
            from .output import fail

            raise fail(f"--set {pair!r}: expected FIELD=NUMBER, e.g. --set epochs=40")
    return overrides
