"""The one resolver: what a name or file given to any command (or the Python API) stands for.

It takes a zoo model (``gdas_v1``, ``darts_v2_ptb``), a genotype (``GDAS_V1``, case-insensitive), a model with
a pretrained tag (``gdas_v1.cifar10``, ``gdas_v1_imagenet.in1k``), a genotype file (``my_cell.json``) or one
entry of a file (``cells.json:MINE``). The rules:

* a string is a file only when it says so: a ``.json`` suffix, a path separator, or ``FILE:ENTRY``; anything
  else is a name, whatever lies in the working directory (a folder ``pdarts`` does not hide the zoo's pdarts);
* a tag fixes the dataset (``in1k`` is ImageNet) and must be one of the model's;
* given a dataset, a zoo model or genotype stands for its genotype's zoo model there (``gdas_v1`` on imagenet
  is ``gdas_v1_imagenet``, ``DARTS_V2_RNN`` on wt2 is ``darts_v2_wt2``), or for none when its paper did not
  evaluate it there; a genotype file has no zoo model;
* image datasets take CNN genotypes, the corpora (ptb, wt2) recurrent cells;
* every failure is one line: a ``ResolveError`` naming the closest known names (a malformed file: the file's
  ``GenotypeError``).
"""
import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .registry.genotype import (DATASETS, TEXT_DATASETS, AnyGenotype, Genotype, RecurrentGenotype, UnknownNameError, closest,
                       get_genotype, list_genotypes, load_genotype)
from .registry.zoo import LM_MODELS, MODELS, AnySpec

_SPECS: Dict[str, AnySpec] = {**MODELS, **LM_MODELS}
_TAGGED: Dict[str, Tuple[AnySpec, str]] = {f"{s.name}.{tag}": (s, d) for s in _SPECS.values()
                                           for tag, d in zip(s.tags, s.datasets)}


class ResolveError(ValueError):
    """A name or file that names nothing usable here; the message lists the closest known names."""


@dataclass(frozen=True)
class Resolved:
    """What a name or file stands for."""

    genotype: AnyGenotype
    model: Optional[AnySpec]  # the zoo model: the one named, else its genotype's (on ``dataset``, when given)
    dataset: Optional[str]  # the tag's, else the one asked for
    kind: str  # what the string was: "model", "genotype" or "file" (the path: ``genotype.source``)


def is_file(name: str) -> bool:
    """Whether ``name`` says it is a path: a ``.json`` suffix, a path separator, or ``FILE:ENTRY``."""
    return name.endswith(".json") or ":" in name or any(sep and sep in name for sep in (os.sep, os.altsep))


def resolve(name: str, dataset: Optional[str] = None) -> Resolved:
    """What ``name`` stands for (on ``dataset``, when given): see the module's rules."""
    if dataset is not None and dataset not in DATASETS:
        raise ResolveError(f"unknown dataset {dataset!r}; {closest(dataset, list(DATASETS))}")
    if is_file(name):
        path, _, entry = name.rpartition(":") if not name.endswith(".json") and ":" in name else (name, "", "")
        try:
            genotype = load_genotype(path, entry or None)
        except UnknownNameError as e:
            raise ResolveError(str(e)) from None
        resolved = Resolved(genotype, None, dataset, "file")
    elif "." in name:
        if name not in _TAGGED:
            raise ResolveError(f"unknown tagged model {name!r}; {closest(name, list(_TAGGED))}")
        spec, tagged = _TAGGED[name]
        if dataset not in (None, tagged):
            raise ResolveError(f"{name} is tagged for {tagged}, not {dataset}: drop the tag or the dataset")
        resolved = Resolved(spec.genotype, spec, tagged, "model")
    elif name in _SPECS:
        resolved = Resolved(_SPECS[name].genotype, _SPECS[name], dataset, "model")
    else:
        try:
            genotype = get_genotype(name)
        except UnknownNameError:
            hint = f"; for the file, write ./{name}" if os.path.exists(name) else ""
            raise ResolveError(f"unknown model or genotype {name!r}; "
                               f"{closest(name, [*_SPECS, *list_genotypes()])}{hint}") from None
        resolved = Resolved(genotype, _zoo_model(genotype, None), dataset, "genotype")
    if resolved.dataset is None:
        return resolved
    _check_task(resolved.genotype, resolved.dataset)
    model = resolved.model
    if resolved.kind != "file" and (model is None or resolved.dataset not in model.datasets):
        model = _zoo_model(resolved.genotype, resolved.dataset)
    return Resolved(resolved.genotype, model, resolved.dataset, resolved.kind)


def _zoo_model(genotype: AnyGenotype, dataset: Optional[str]) -> Optional[AnySpec]:
    """The genotype's first zoo model (evaluated on ``dataset``, when given)."""
    return next((s for s in _SPECS.values() if s.genotype is genotype and (dataset is None or dataset in s.datasets)),
                None)


def _check_task(genotype: AnyGenotype, dataset: str) -> None:
    if dataset in TEXT_DATASETS and isinstance(genotype, Genotype):
        cells = [*LM_MODELS, *(g for g in list_genotypes() if isinstance(get_genotype(g), RecurrentGenotype))]
        raise ResolveError(f"{genotype.name} is a CNN genotype; language models ({dataset}) need a recurrent cell: "
                           f"{', '.join(cells)}")
    if dataset not in TEXT_DATASETS and isinstance(genotype, RecurrentGenotype):
        raise ResolveError(f"{genotype.name} is a recurrent cell (a language model); {dataset} needs a CNN genotype")
