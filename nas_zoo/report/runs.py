"""The runs a report reads: a search's folder (``search.json``, ``genotype.json``) or a training run's
(``metrics.jsonl`` and the ``checkpoint`` that names what it trained), and what follows from their records: the
epochs at which the derived genotype changed, the skip-connections per epoch, the paper's figures."""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ..harness.checkpoint import CheckpointError, find_checkpoint, load_state
from ..harness.evaluate import paper_figures
from ..models.rnn import paper_setting
from ..registry.genotype import AnyGenotype, GenotypeError, load_genotype, parse_genotypes
from ..registry.summary import reported_error


class RunError(ValueError):
    """A folder that holds no run, or a record that cannot be read; the message says which and what to give."""


@dataclass(frozen=True)
class SearchRun:
    path: Path
    record: Dict[str, Any]  # search.json
    genotype: AnyGenotype  # genotype.json: the search's result

    @property
    def epochs(self) -> List[Dict[str, Any]]:
        return self.record["epochs"]

    @property
    def language(self) -> bool:
        """A recurrent cell's search: its measure is perplexity, not accuracy."""
        return bool(self.epochs) and "valid_ppl" in self.epochs[0]

    def changes(self) -> List[Tuple[int, List[str]]]:
        """(epoch index, the cells whose derived genotype differs from the epoch before's) within each stage."""
        found = []
        for i, (before, now) in enumerate(zip(self.epochs, self.epochs[1:]), 1):
            cells = [c for c in now["genotype"] if now["stage"] == before["stage"]
                     and now["genotype"][c] != before["genotype"].get(c)]
            if cells:
                found.append((i, cells))
        return found

    def skip_connections(self) -> List[int]:
        """Per epoch, the skip-connections in the normal cell derived then (the collapse DARTS is known for): the
        collapse monitor's ``skip_connections`` where the record has them, else counted in the epoch's genotype."""
        return [e.get("skip_connections", sum(op == "skip_connect" for op, _ in e["genotype"].get("normal") or []))
                for e in self.epochs]


@dataclass(frozen=True)
class TrainingRun:
    """``nas-zoo train --out``: an image network's run or a language model's (its checkpoint's ``info``)."""

    path: Path
    metrics: List[Dict[str, Any]]  # metrics.jsonl, one record per epoch
    state: Dict[str, Any]  # the checkpoint's: what was trained, on what, with which settings
    genotype: AnyGenotype

    @property
    def language(self) -> bool:
        return "info" in self.state

    @property
    def about(self) -> Dict[str, Any]:
        """model, dataset and config (and an image network's ``network``)."""
        return self.state["info"] if self.language else self.state

    @property
    def name(self) -> str:
        return self.about.get("model") or self.genotype.name

    def paper(self) -> Tuple[Optional[float], str]:
        """The paper's figure to draw beside the curves (an image network's test or top-1 error, a language
        model's validation perplexity) and a sentence saying what it is, or why there is none: a network of
        another size than the paper's gets none (``harness.evaluate.paper_figures``; a language model's width)."""
        config, dataset = self.about["config"], self.about["dataset"]
        if self.language:
            evaluation = self.genotype.evaluation(dataset) or {}
            reported, size = evaluation.get("reported"), paper_setting(self.genotype, dataset)["nhid"]
            sized, ours, theirs = config["nhid"] == size, f"{config['nhid']} units", f"{size} units"
            value, what = (reported or {}).get("val_ppl"), "validation perplexity"
        else:
            dataset = "imagenet" if dataset == "folder" else dataset
            figures = paper_figures(self.genotype, dataset, self.state["network"], config["init_channels"],
                                    config["layers"])
            reported, paper = figures["reported"], figures["paper_network"]
            sized = reported is not None or paper is None
            ours = f"C={config['init_channels']}, {config['layers']} cells"
            theirs = paper and f"C={paper['C']}, {paper['layers']} cells"
            value, what = reported_error(reported), "test error (%)"
            reported = reported or (self.genotype.evaluation(dataset) or {}).get("reported")
        if not reported:
            return None, f"The paper reports no figure for {self.genotype.name} on {self.about['dataset']}."
        if not sized:
            return None, f"This network ({ours}) is not the paper's size ({theirs}): the paper's figures are left out."
        if value is None:
            return None, f"The paper reports no {what} for this network."
        return value, f"The paper reports {value} {what} for this network ({reported.get('source', 'no source')})."


Run = Union[SearchRun, TrainingRun]


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{path}: cannot be read as JSON ({e}); is the run still writing it?") from None


def read_run(path) -> Run:
    """The run in folder ``path``: a search (``nas-zoo search --out``) or an image training run (``nas-zoo train
    --out``)."""
    path = Path(path)
    if (path / "search.json").is_file():
        record = _json(path / "search.json")
        if not isinstance(record, dict) or not isinstance(record.get("epochs"), list) or not record["epochs"]:
            raise RunError(f"{path / 'search.json'}: not a search record with epochs; give the --out folder of a "
                           "nas-zoo search that ran at least one epoch")
        try:
            genotype = load_genotype(path / "genotype.json")
        except GenotypeError as e:
            raise RunError(str(e)) from None
        return SearchRun(path, record, genotype)
    if (path / "metrics.jsonl").is_file():
        try:
            metrics = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RunError(f"{path / 'metrics.jsonl'}: cannot be read ({e})") from None
        checkpoint = find_checkpoint(path / "checkpoint")
        if checkpoint is None or not metrics:
            raise RunError(f"{path}: a training run needs its metrics.jsonl and checkpoint/; one is missing or empty")
        try:
            state = load_state(checkpoint)
        except CheckpointError as e:
            raise RunError(str(e)) from None
        record = state["info"]["genotype"] if "info" in state else state["genotype"]
        (genotype,) = parse_genotypes(record, f"{checkpoint}/state.pt").values()
        return TrainingRun(path, metrics, state, genotype)
    what = "does not exist" if not path.exists() else "holds no search.json (nas-zoo search) or metrics.jsonl " \
                                                     "(nas-zoo train)"
    raise RunError(f"{path} {what}; give the --out folder of a search or a training run")
