"""The runs a report reads: a search's folder (``search.json``, ``genotype.json``) or an image network's
training run (``metrics.jsonl`` and the ``checkpoint`` that names what it trained), and what follows from their
records: the epochs at which the derived genotype changed, the skip-connections per epoch, the paper's figures."""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

from ..harness.checkpoint import CheckpointError, find_checkpoint, load_state
from ..harness.evaluate import paper_figures
from ..registry.genotype import AnyGenotype, GenotypeError, load_genotype, parse_genotypes


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
        """Per epoch, the skip-connections in the normal cell derived then (the collapse DARTS is known for)."""
        return [sum(op == "skip_connect" for op, _ in e["genotype"].get("normal") or []) for e in self.epochs]


@dataclass(frozen=True)
class TrainingRun:
    path: Path
    metrics: List[Dict[str, Any]]  # metrics.jsonl, one record per epoch
    state: Dict[str, Any]  # the checkpoint's: config, genotype, network, dataset, model
    genotype: AnyGenotype

    @property
    def name(self) -> str:
        return self.state.get("model") or self.genotype.name

    def paper(self) -> Dict[str, Any]:
        """The paper's reported figures for this network on this dataset (None when the run's width or depth is
        not the paper's: ``harness.evaluate.paper_figures``)."""
        dataset = "imagenet" if self.state["dataset"] == "folder" else self.state["dataset"]
        config = self.state["config"]
        return paper_figures(self.genotype, dataset, self.state["network"], config["init_channels"], config["layers"])


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
        (genotype,) = parse_genotypes(state["genotype"], f"{checkpoint}/state.pt").values()
        return TrainingRun(path, metrics, state, genotype)
    if (path / "last").is_dir() or (path / "best").is_dir():
        raise RunError(f"{path}: a language model's training run keeps no per-epoch record to draw (its checkpoints "
                       "only); give a search folder or an image network's training run")
    what = "does not exist" if not path.exists() else "holds no search.json (nas-zoo search) or metrics.jsonl " \
                                                     "(nas-zoo train)"
    raise RunError(f"{path} {what}; give the --out folder of a search or a training run")
