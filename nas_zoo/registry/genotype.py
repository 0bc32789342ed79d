"""Genotypes: immutable, validated cell descriptions with their provenance and the paper's figures.

A genotype file is JSON. A *paper file* (``genotypes/*.json``) holds several genotypes::

    {"paper": {...}, "network_options": {...}, "evaluation_defaults": {"cifar10": {...}, ...},
     "genotypes": {"DARTS_V2": {"normal": [["sep_conv_3x3", 0], ...], "normal_concat": [2, 3, 4, 5],
                                "reduce": [...], "reduce_concat": [2, 3, 4, 5],
                                "provenance": {...}, "evaluations": [{"dataset": "cifar10", ...}]}}}

A *genotype file* (what users write and ``nas-zoo search`` emits) is one genotype record with a ``name``.
Edges are ``[operation, input]`` pairs, two per intermediate node: input 0 and 1 are the cell's inputs
(cells k-2 and k-1), input j >= 2 is node j-2. ``"reduce": null`` selects GDAS's fixed reduction cell.

A record with a ``"recurrent"`` key is a recurrent cell (DARTS Sec. 2.1): ``[activation, predecessor]``
steps, where state 0 is computed from x_t and h_{t-1} and step i (0-based) makes state i+1 from any earlier
state; the cell's output is the mean of the states in ``concat``.
"""
import difflib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from ..files import write_text_atomic
from ..models.ops import OPS

Edge = Tuple[str, int]

IMAGE_DATASETS = ("cifar10", "cifar100", "imagenet")
TEXT_DATASETS = ("ptb", "wt2")  # word-level Penn Treebank, WikiText-2
DATASETS = IMAGE_DATASETS + TEXT_DATASETS
ACTIVATIONS = ("tanh", "relu", "sigmoid", "identity")
NETWORKS = ("cifar", "imagenet", "bcnn", "bcnn_imagenet")
NETWORK_OPTIONS = {"pool_bn": bool, "auxiliary_last_bn": bool}
# Upper bounds on a network's width and depth: 7x and 3x the papers' largest, far below what would not fit.
MAX_C, MAX_LAYERS = 256, 64
# What an evaluation setting may hold, with the check each value must pass.
SETTING_FIELDS = {
    "model": (str, "a model name"),
    "dataset": (str, f"one of {', '.join(DATASETS)}"),
    "network": (str, f"one of {', '.join(NETWORKS)}"),
    "C": (int, f"a positive even integer up to {MAX_C}"),
    "layers": (int, f"a positive integer up to {MAX_LAYERS}"),
    "enhancement_layers": (int, f"a positive integer up to {MAX_LAYERS}"),  # the broad network's (BCNN)
    "auxiliary_weight": (float, "a number >= 0"),
    "drop_path": (float, "a probability in [0, 1)"),
    "reported": (dict, "an object of figures (numbers and strings)"),
    # Recurrent cells: the language model's width and the paper's training recipe where it departs from
    # the DARTS defaults (nas_zoo.language.lm.LMConfig).
    "nhid": (int, "a positive integer"),
    "epochs": (int, "a positive integer"),
    "wdecay": (float, "a number >= 0"),
    **{key: (float, "a probability in [0, 1)") for key in ("dropout", "dropouth", "dropoutx", "dropouti", "dropoute")},
    "weights": (dict, 'an object {"hf_hub_id": "ORG/REPO", "sha256": "<64 hex digits>", "published": true|false}; '
                      "published weights need their sha256"),
}
RECORD_FIELDS = {"name", "normal", "normal_concat", "reduce", "reduce_concat", "provenance", "evaluations",
                 "note", "paper", "network_options", "search"}
RECURRENT_FIELDS = {"name", "recurrent", "concat", "provenance", "evaluations", "note", "paper", "search"}


class GenotypeError(ValueError):
    """A malformed genotype: the message names the file, the entry, the field and the reason."""


AnyGenotype = Union["Genotype", "RecurrentGenotype"]


class UnknownNameError(KeyError):
    """An unknown genotype or model name; the message lists the closest known names."""

    def __str__(self) -> str:
        return str(self.args[0])


def closest(name: str, known: List[str]) -> str:
    """``closest: a, b`` (difflib, case-insensitive), or every known name when none is close."""
    by_lower: Dict[str, List[str]] = {}
    for k in known:
        by_lower.setdefault(k.lower(), []).append(k)
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=5, cutoff=0.4)
    names = [k for c in close for k in by_lower[c]][:5]
    return f"closest: {', '.join(names)}" if names else f"known: {', '.join(sorted(known))}"


def unknown_name(kind: str, name: str, known: List[str]) -> UnknownNameError:
    return UnknownNameError(f"unknown {kind} {name!r}; {closest(name, known)}")


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Plain dicts and lists again (JSON-ready)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class Genotype:
    """A CNN cell pair. Equality and hashing look at the architecture alone, not at the metadata."""

    name: str
    normal: Tuple[Edge, ...]
    normal_concat: Tuple[int, ...]
    reduce: Optional[Tuple[Edge, ...]]  # None: GDAS's fixed reduction cell
    reduce_concat: Tuple[int, ...]
    paper: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    provenance: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    evaluations: Tuple[Mapping[str, Any], ...] = field(default=(), compare=False, repr=False)
    network_options: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    note: str = field(default="", compare=False, repr=False)
    source: str = field(default="", compare=False, repr=False)

    def __deepcopy__(self, memo) -> "Genotype":
        return self  # an immutable value: copies of a model share it

    @property
    def fixed_reduction(self) -> bool:
        return self.reduce is None

    def evaluation(self, dataset: str, network: Optional[str] = None) -> Optional[Mapping[str, Any]]:
        """The paper's first evaluation setting on ``dataset`` (and ``network``), if any."""
        for setting in self.evaluations:
            if setting["dataset"] == dataset and network in (None, setting["network"]):
                return setting
        return None

    def to_dict(self) -> Dict[str, Any]:
        """A genotype-file record (JSON-ready); ``load_genotype`` reads it back to an equal genotype."""
        record = {"name": self.name, "normal": [list(e) for e in self.normal],
                  "normal_concat": list(self.normal_concat),
                  "reduce": None if self.reduce is None else [list(e) for e in self.reduce],
                  "reduce_concat": list(self.reduce_concat)}
        return _with_metadata(self, record)


def _with_metadata(genotype: AnyGenotype, record: Dict[str, Any]) -> Dict[str, Any]:
    for key in ("paper", "provenance", "network_options"):
        if getattr(genotype, key, None):
            record[key] = thaw(getattr(genotype, key))
    if genotype.evaluations:
        record["evaluations"] = thaw(genotype.evaluations)
    if genotype.note:
        record["note"] = genotype.note
    return record


@dataclass(frozen=True)
class RecurrentGenotype:
    """A recurrent cell (DARTS Sec. 2.1): ``(activation, predecessor)`` steps and the states averaged.

    Equality and hashing look at the architecture alone, not at the metadata.
    """

    name: str
    recurrent: Tuple[Edge, ...]
    concat: Tuple[int, ...]
    paper: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    provenance: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    evaluations: Tuple[Mapping[str, Any], ...] = field(default=(), compare=False, repr=False)
    note: str = field(default="", compare=False, repr=False)
    source: str = field(default="", compare=False, repr=False)

    def evaluation(self, dataset: str) -> Optional[Mapping[str, Any]]:
        """The paper's first evaluation setting on ``dataset`` (``"ptb"``, ``"wt2"``), if any."""
        return next((setting for setting in self.evaluations if setting["dataset"] == dataset), None)

    def to_dict(self) -> Dict[str, Any]:
        """A genotype-file record (JSON-ready); ``load_genotype`` reads it back to an equal genotype."""
        record = {"name": self.name, "recurrent": [list(e) for e in self.recurrent], "concat": list(self.concat)}
        return _with_metadata(self, record)


def _is_pair(item: Any) -> bool:
    """A ``[name, index]`` pair: a string and a (non-boolean) integer."""
    return (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], int)
            and not isinstance(item[1], bool))


def is_flat(value: Any) -> bool:
    """An object of plain values (strings, numbers, booleans, null), as papers, provenances and figures are."""
    return isinstance(value, Mapping) and all(v is None or isinstance(v, (str, int, float)) for v in value.values())


def _valid_weights(weights: Mapping) -> bool:
    """Where an evaluation's trained weights live: a Hub repository, their sha256 and whether they are out."""
    sha256 = weights.get("sha256")
    return (set(weights) <= {"hf_hub_id", "sha256", "published"}
            and isinstance(weights.get("hf_hub_id", "a/b"), str) and weights.get("hf_hub_id", "a/b").count("/") == 1
            and isinstance(weights.get("published", False), bool)
            and (sha256 is None or isinstance(sha256, str) and len(sha256) == 64
                 and all(c in "0123456789abcdef" for c in sha256))
            and (sha256 is not None or not weights.get("published", False)))


class _Checker:
    """Raises GenotypeError with the file, the entry and the field in front of the reason."""

    def __init__(self, source: str, entry: str):
        self.source, self.entry = source, entry

    def fail(self, where: str, reason: str) -> GenotypeError:
        return GenotypeError(f"{self.source}: genotype {self.entry!r}, field {where!r}: {reason}")

    def pairs(self, items: List[Any], key: str, shape: str):
        """(position, field name, pair) for each item, which must be a [name, index] pair."""
        for k, item in enumerate(items):
            if not _is_pair(item):
                raise self.fail(f"{key}[{k}]", f"expected {shape}, got {json.dumps(item)}")
            yield k, f"{key}[{k}]", item

    def edges(self, record: Mapping, key: str) -> Tuple[Edge, ...]:
        edges = record.get(key)
        if not isinstance(edges, list) or not edges or len(edges) % 2:
            raise self.fail(key, "expected a non-empty list with two [operation, input] pairs per node")
        checked = []
        for k, where, (op, index) in self.pairs(edges, key, "[operation, input]"):
            if op not in OPS or op == "none":
                close = difflib.get_close_matches(op, OPS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.fail(where, f"unknown operation {op!r}{hint}; known: {', '.join(o for o in OPS if o != 'none')}")
            node = k // 2
            if not 0 <= index < node + 2:
                raise self.fail(where, f"input {index} does not exist yet for node {node} (allowed 0..{node + 1})")
            checked.append((op, index))
        return tuple(checked)

    def steps(self, record: Mapping) -> Tuple[Edge, ...]:
        steps = record.get("recurrent")
        if not isinstance(steps, list) or not steps:
            raise self.fail("recurrent", "expected a non-empty list of [activation, predecessor] steps")
        checked = []
        for i, where, (activation, pred) in self.pairs(steps, "recurrent", "[activation, predecessor]"):
            if activation not in ACTIVATIONS:
                raise self.fail(where, f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
            if not 0 <= pred <= i:
                raise self.fail(where, f"predecessor {pred} does not exist yet for step {i} (allowed 0..{i})")
            checked.append((activation, pred))
        return tuple(checked)

    def concat(self, record: Mapping, key: str, num_nodes: int, first: int = 2) -> Tuple[int, ...]:
        concat = record.get(key, list(range(first, num_nodes + first)))
        if not (isinstance(concat, list) and concat and all(isinstance(i, int) and not isinstance(i, bool)
                                                            for i in concat)):
            raise self.fail(key, "expected a non-empty list of state indices")
        bad = [i for i in concat if not 0 <= i < num_nodes + first]
        if bad:
            nodes = "nodes" if first == 2 else "steps"
            raise self.fail(key, f"state {bad[0]} does not exist (a cell with {num_nodes} {nodes} has states "
                                 f"0..{num_nodes + first - 1})")
        return tuple(concat)

    def flat(self, value: Any, where: str) -> Any:
        if not is_flat(value):
            raise self.fail(where, "expected an object of strings and numbers")
        return value

    def kind(self, value: Any, kind: type, where: str, expected: str) -> Any:
        if not isinstance(value, kind):
            raise self.fail(where, f"expected {expected}, got {json.dumps(value)[:60]}")
        return value

    def setting(self, setting: Any, where: str) -> Dict[str, Any]:
        if not isinstance(setting, Mapping):
            raise self.fail(where, "expected an object")
        for key, value in setting.items():
            if key not in SETTING_FIELDS:
                raise self.fail(f"{where}.{key}", f"unknown field; expected one of {', '.join(SETTING_FIELDS)}")
            kind, expected = SETTING_FIELDS[key]
            ok = isinstance(value, kind) and not isinstance(value, bool)
            if kind is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = ok and {
                "dataset": lambda v: v in DATASETS, "network": lambda v: v in NETWORKS,
                "C": lambda v: 0 < v <= MAX_C and v % 2 == 0, "layers": lambda v: 0 < v <= MAX_LAYERS,
                "enhancement_layers": lambda v: 0 < v <= MAX_LAYERS, "reported": is_flat,
                "auxiliary_weight": lambda v: v >= 0, "drop_path": lambda v: 0 <= v < 1, "weights": _valid_weights,
                "nhid": lambda v: v > 0, "epochs": lambda v: v > 0, "wdecay": lambda v: v >= 0,
            }.get(key, (lambda v: 0 <= v < 1) if key.startswith("dropout") else (lambda v: True))(value)
            if not ok:
                raise self.fail(f"{where}.{key}", f"expected {expected}, got {json.dumps(value)}")
        return dict(setting)


def _evaluations(check: _Checker, record: Mapping, defaults: Mapping[str, Mapping], datasets: Tuple[str, ...],
                 required: Tuple[str, ...]) -> List[Dict[str, Any]]:
    """The record's evaluation settings over the file's ``evaluation_defaults``, validated."""
    evaluations = []
    for k, setting in enumerate(check.kind(record.get("evaluations", []), list, "evaluations", "a list of settings")):
        where = f"evaluations[{k}]"
        setting = check.setting(setting, where)
        if setting.get("dataset") not in datasets:
            problem = "missing" if "dataset" not in setting else f"{setting['dataset']!r} is not for this kind of cell"
            raise check.fail(f"{where}.dataset", f"{problem}; expected one of {', '.join(datasets)}")
        merged = {**defaults.get(setting["dataset"], {}), **setting}
        missing = [key for key in required if key not in merged]
        if missing:
            raise check.fail(f"{where}.{missing[0]}", "missing, and no evaluation default gives it")
        evaluations.append(merged)
    return evaluations


def _parse_recurrent(name: str, record: Mapping, source: str, paper: Mapping,
                     defaults: Mapping[str, Mapping]) -> RecurrentGenotype:
    check = _Checker(source, name)
    unknown = set(record) - RECURRENT_FIELDS
    if unknown:
        raise check.fail(sorted(unknown)[0], f"unknown field for a recurrent cell; expected some of "
                                             f"{', '.join(sorted(RECURRENT_FIELDS))}")
    steps = check.steps(record)
    return RecurrentGenotype(
        name=name, recurrent=steps, concat=check.concat(record, "concat", len(steps), first=1),
        paper=_freeze(check.flat(record.get("paper", paper), "paper")),
        provenance=_freeze(check.flat(record.get("provenance", {}), "provenance")),
        evaluations=_freeze(_evaluations(check, record, defaults, TEXT_DATASETS, ())),
        note=check.kind(record.get("note", ""), str, "note", "a string"), source=source)


def _parse_record(name: str, record: Any, source: str, paper: Mapping, network_options: Mapping,
                  defaults: Mapping[str, Mapping]) -> AnyGenotype:
    check = _Checker(source, name)
    if not isinstance(record, Mapping):
        raise check.fail("", "expected an object")
    if "recurrent" in record:
        return _parse_recurrent(name, record, source, paper, defaults)
    unknown = set(record) - RECORD_FIELDS
    if unknown:
        raise check.fail(sorted(unknown)[0], f"unknown field; expected some of {', '.join(sorted(RECORD_FIELDS))}")
    normal = check.edges(record, "normal")
    reduce = None if record.get("reduce", "missing") is None else check.edges(record, "reduce")
    options = {**network_options, **check.kind(record.get("network_options", {}), Mapping, "network_options",
                                                 "an object")}
    for key, value in options.items():
        if key not in NETWORK_OPTIONS or not isinstance(value, NETWORK_OPTIONS[key]):
            raise check.fail(f"network_options.{key}", f"expected one of {', '.join(NETWORK_OPTIONS)} (booleans)")
    evaluations = _evaluations(check, record, defaults, IMAGE_DATASETS, ("network", "C", "layers"))
    reduce_concat = check.concat(record, "reduce_concat", len(reduce or normal) // 2)
    if min(reduce_concat) < 2:  # they are at the input's resolution, which the reduction cell halves
        raise check.fail("reduce_concat", "a reduction cell's output can only join its nodes (2 and up), not its "
                                          "inputs 0 and 1")
    return Genotype(
        name=name, normal=normal, normal_concat=check.concat(record, "normal_concat", len(normal) // 2),
        reduce=reduce, reduce_concat=reduce_concat,
        paper=_freeze(check.flat(record.get("paper", paper), "paper")),
        provenance=_freeze(check.flat(record.get("provenance", {}), "provenance")),
        evaluations=_freeze(evaluations), network_options=_freeze(options),
        note=check.kind(record.get("note", ""), str, "note", "a string"), source=source)


def parse_genotypes(data: Any, source: str) -> Dict[str, AnyGenotype]:
    """Every genotype in a decoded genotype file (a paper file or a single record)."""
    if not isinstance(data, Mapping):
        raise GenotypeError(f"{source}: expected a JSON object at the top level")
    if "genotypes" not in data:
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise GenotypeError(f"{source}: field 'name': a genotype file needs a non-empty \"name\" "
                                "(or a \"genotypes\" object of named records)")
        return {name: _parse_record(name, data, source, {}, {}, {})}
    check = _Checker(source, "*")
    defaults = {}
    for dataset, setting in check.kind(data.get("evaluation_defaults", {}), Mapping, "evaluation_defaults",
                                       "an object of settings per dataset").items():
        defaults[dataset] = check.setting(setting, f"evaluation_defaults.{dataset}")
    genotypes = data["genotypes"]
    if not isinstance(genotypes, Mapping) or not genotypes:
        raise GenotypeError(f"{source}: field 'genotypes': expected a non-empty object of named records")
    paper = check.flat(data.get("paper", {}), "paper")
    options = check.kind(data.get("network_options", {}), Mapping, "network_options", "an object")
    return {name: _parse_record(name, record, source, paper, options, defaults) for name, record in genotypes.items()}


def _read_json(path: Union[str, os.PathLike], text: Optional[str] = None) -> Any:
    try:
        return json.loads(Path(path).read_text() if text is None else text)
    except FileNotFoundError:
        raise GenotypeError(f"{path}: no such genotype file") from None
    except json.JSONDecodeError as e:
        raise GenotypeError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise GenotypeError(f"{path}: not a text file; a genotype file is JSON in UTF-8") from None
    except RecursionError:
        raise GenotypeError(f"{path}: JSON nested too deeply for a genotype file") from None
    except OSError as e:
        raise GenotypeError(f"{path}: cannot be read ({e.strerror})") from None


def load_genotypes(path: Union[str, os.PathLike]) -> Dict[str, AnyGenotype]:
    """Every genotype in the file at ``path``, validated."""
    return parse_genotypes(_read_json(path), str(path))


def load_genotype(path: Union[str, os.PathLike], name: Optional[str] = None) -> AnyGenotype:
    """The genotype in the file at ``path`` (``name`` picks one when the file holds several)."""
    genotypes = load_genotypes(path)
    if name is None:
        if len(genotypes) > 1:
            raise GenotypeError(f"{path}: holds {len(genotypes)} genotypes ({', '.join(genotypes)}); pick one by name")
        return next(iter(genotypes.values()))
    if name not in genotypes:
        raise unknown_name(f"genotype in {path}", name, list(genotypes))
    return genotypes[name]


def save_genotype(genotype: AnyGenotype, path: Union[str, os.PathLike], search: Optional[Mapping] = None) -> None:
    """Write ``genotype`` as a genotype file, atomically (a temp file renamed over the target).

    ``search`` (JSON-ready) is stored in the record's ``search`` field: how ``nas-zoo search`` found it.
    """
    record = genotype.to_dict() if search is None else {**genotype.to_dict(), "search": dict(search)}
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")


_REGISTRY: Dict[str, AnyGenotype] = {}


def _registry() -> Dict[str, AnyGenotype]:
    if not _REGISTRY:
        for entry in sorted(resources.files("nas_zoo.genotypes").iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".json"):
                source = f"genotypes/{entry.name}"
                for name, genotype in parse_genotypes(_read_json(source, entry.read_text()), source).items():
                    if name in _REGISTRY:
                        raise GenotypeError(f"{source}: genotype {name!r} is also defined in {_REGISTRY[name].source}")
                    _REGISTRY[name] = genotype
    return _REGISTRY


def list_genotypes() -> List[str]:
    """Names of the published genotypes in the zoo."""
    return list(_registry())


def get_genotype(name: str) -> AnyGenotype:
    """A published genotype by name (case-insensitive), e.g. ``"GDAS_V1"`` or ``"DARTS_V2_RNN"``."""
    registry = _registry()
    by_lower = {k.lower(): k for k in registry}
    if name.lower() not in by_lower:
        raise unknown_name("genotype", name, list(registry))
    return registry[by_lower[name.lower()]]
