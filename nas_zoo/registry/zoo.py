"""The zoo's models: one timm entry point per published (genotype, evaluation network) pair.

Every genotype file lists the paper's evaluations; each names the model it runs (``"model": "gdas_v1"``).
Evaluations of one model on several datasets become its pretrained tags, as in timm
(``gdas_v1.cifar10``, ``gdas_v1.cifar100``, ``gdas_v1_imagenet.in1k``). ``import nas_zoo`` registers them
all, so ``timm.create_model("gdas_v1")`` and ``timm.list_models("*gdas*")`` work.

Recurrent cells are language models, one per corpus (``darts_v2_ptb``, ``darts_v2_wt2``): they live in
``LM_MODELS`` beside ``MODELS`` and are built by ``nas_zoo.create_model``, not registered with timm.
"""
import fnmatch
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from torch import nn

from ..models.networks import build_network
from ..models.rnn import MODEL_FIELDS, RNNModel, paper_setting
from ..weights.convert import layout_of
from ..weights.download import WeightsError, download_weights
from .genotype import (Genotype, GenotypeError, RecurrentGenotype, get_genotype, list_genotypes, parse_genotypes,
                       unknown_name)

HUB_ORG = "nas-zoo"
DATASET_TAGS = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "in1k"}
# Normalisation used by the authors' training scripts.
DATASET_STATS = {
    "cifar10": ((0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: a genotype built as one evaluation network, with the paper settings it was run in."""

    name: str
    genotype: Genotype
    network: str
    C: int
    layers: int
    evaluations: Tuple[Mapping[str, Any], ...]

    @property
    def tags(self) -> List[str]:
        return [DATASET_TAGS[e["dataset"]] for e in self.evaluations]

    @property
    def datasets(self) -> List[str]:
        return [e["dataset"] for e in self.evaluations]

    @property
    def imagenet(self) -> bool:
        return self.network.endswith("imagenet")

    def evaluation(self, dataset: str) -> Mapping[str, Any]:
        for e in self.evaluations:
            if e["dataset"] == dataset:
                return e
        raise KeyError(f"{self.name} was not evaluated on {dataset} in its paper; it was on {', '.join(self.datasets)}")

    def build(self, C: Optional[int] = None, layers: Optional[int] = None, **kwargs) -> nn.Module:
        """The network at the paper's width and depth unless ``C``/``layers`` say otherwise.

        Other ``kwargs`` go to ``build_network`` (``num_classes``, ``auxiliary``, ``drop_path_rate``...).
        """
        return build_network(self.genotype, self.network, C or self.C, layers or self.layers, **kwargs)


def _collect_specs() -> Dict[str, ModelSpec]:
    grouped: Dict[str, List[Mapping[str, Any]]] = {}
    owner: Dict[str, Genotype] = {}
    for genotype_name in list_genotypes():
        genotype = get_genotype(genotype_name)
        if isinstance(genotype, RecurrentGenotype):
            continue
        for evaluation in genotype.evaluations:
            if "model" not in evaluation:
                continue
            name = evaluation["model"]
            if owner.setdefault(name, genotype) is not genotype:
                raise GenotypeError(f"{genotype.source}: model {name!r} is also named by genotype {owner[name].name}")
            grouped.setdefault(name, []).append(evaluation)
    specs = {}
    for name, evaluations in grouped.items():
        first = evaluations[0]
        for e in evaluations[1:]:
            if any(e[k] != first[k] for k in ("network", "C", "layers")):
                raise GenotypeError(f"{owner[name].source}: model {name!r} is given two different networks")
        specs[name] = ModelSpec(name, owner[name], first["network"], first["C"], first["layers"], tuple(evaluations))
    return specs


MODELS: Dict[str, ModelSpec] = _collect_specs()


def data_config(network: str, dataset: str) -> Dict[str, Any]:
    """Input size, normalisation and evaluation crop of ``network`` on ``dataset`` (timm's data config keys)."""
    imagenet = network.endswith("imagenet")
    mean, std = DATASET_STATS.get(dataset, DATASET_STATS["imagenet"])
    size = 224 if imagenet else 32
    return dict(input_size=(3, size, size), mean=mean, std=std, crop_pct=0.875 if imagenet else 1.0,
                interpolation="bilinear")


def _pretrained_cfg(spec: ModelSpec, evaluation: Mapping[str, Any]) -> Dict[str, Any]:
    dataset = evaluation["dataset"]
    paper = spec.genotype.paper
    final = 7 if spec.imagenet else 8
    return dict(
        hf_hub_id=f"{HUB_ORG}/{spec.name}.{DATASET_TAGS[dataset]}", num_classes=NUM_CLASSES[dataset],
        pool_size=(final, final), first_conv="stem.stem0.0" if spec.imagenet else "stem.0", classifier="classifier",
        paper_ids=f"arXiv:{paper['arxiv']}" if "arxiv" in paper else None, paper_name=paper.get("title"),
        origin_url=paper.get("code"), notes=(f"genotype {spec.genotype.name}",),
        **data_config(spec.network, dataset),
    )


@dataclass(frozen=True)
class Weights:
    """A pretrained tag's weights (an evaluation's ``"weights"`` in its genotype file): the Hub repository
    that holds them, their sha256 and whether they are published. Unlisted tags are unpublished."""

    hf_hub_id: str
    sha256: Optional[str] = None
    published: bool = False


def _tag(spec: ModelSpec, evaluation: Mapping[str, Any]) -> str:
    return f"{spec.name}.{DATASET_TAGS[evaluation['dataset']]}"


WEIGHTS: Dict[str, Weights] = {
    _tag(spec, e): Weights(**{"hf_hub_id": f"{HUB_ORG}/{_tag(spec, e)}", **e.get("weights", {})})
    for spec in MODELS.values() for e in spec.evaluations
}
# A genotype outside the zoo, built from its record: what a pushed user genotype's config.json names.
GENOTYPE_MODEL = "nas_genotype"

default_cfgs = generate_default_cfgs({
    **{_tag(spec, e): {**_pretrained_cfg(spec, e), "hf_hub_id": WEIGHTS[_tag(spec, e)].hf_hub_id}
       for spec in MODELS.values() for e in spec.evaluations},
    GENOTYPE_MODEL: dict(num_classes=10, first_conv="stem.0", classifier="classifier", **data_config("cifar", "cifar10")),
})


def unpublished_message(name: str, tag: Optional[str]) -> str:
    """Why ``pretrained=True`` cannot load ``name.tag``, the tags that can, and how to get the weights."""
    published = [t for t, w in WEIGHTS.items() if w.published]
    lines = [f"no published weights for {name}.{tag}; "
             + (f"tags with weights: {', '.join(published)}" if published else "nas-zoo has published none yet")]
    if name in MODELS:
        spec = MODELS[name]
        lines.append(f"convert the authors' released checkpoint ({spec.genotype.paper.get('code', 'see the paper')}):"
                     f" nas-zoo convert --from {layout_of(spec.genotype)} CHECKPOINT --model {name}.{tag} --out DIR,"
                     " then timm.create_model('local-dir:DIR', pretrained=True)")
    lines.append("or pass your own: pretrained_cfg_overlay=dict(file='model.safetensors')")
    return "; ".join(lines)


def _checked_weights(name: str, kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """The ``pretrained_cfg_overlay`` that makes timm load checked weights for ``pretrained=True``.

    The caller's own weights (``file``, ``state_dict``, ``local-dir:``) load as given. Hub weights (the tag's
    published repository, or ``hf-hub:ORG/REPO``) are downloaded here and their sha256 checked first; an
    unpublished tag fails before any network access.
    """
    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
    cfg = resolve_pretrained_cfg(name, kwargs.get("pretrained_cfg"), overlay).to_dict()
    if cfg.get("state_dict") is not None or cfg.get("file") or cfg.get("source") == "local-dir":
        return overlay
    if cfg.get("source") == "hf-hub":
        hub_id, sha256 = cfg["hf_hub_id"], None
    else:
        weights = WEIGHTS.get(f"{name}.{cfg.get('tag')}")
        if weights is None or not weights.published:
            raise WeightsError(unpublished_message(name, cfg.get("tag")))
        hub_id, sha256 = weights.hf_hub_id, weights.sha256
    return {**overlay, "file": str(download_weights(hub_id, sha256, kwargs.get("cache_dir"))), "source": None}


def _create(spec: ModelSpec, pretrained: bool = False, **kwargs) -> nn.Module:
    def build(**model_kwargs) -> nn.Module:
        return spec.build(**model_kwargs)

    if pretrained:
        kwargs["pretrained_cfg_overlay"] = _checked_weights(spec.name, kwargs)
    with torch.device("meta"):
        num_features = len(spec.build(num_classes=0, layers=kwargs.get("layers")).feature_info)
    return build_model_with_cfg(build, spec.name, pretrained,
                                feature_cfg=dict(feature_cls="getter", out_indices=tuple(range(num_features))),
                                **kwargs)


def _register(spec: ModelSpec) -> None:
    def entry_point(pretrained: bool = False, **kwargs) -> nn.Module:
        return _create(spec, pretrained, **kwargs)

    entry_point.__name__ = entry_point.__qualname__ = spec.name
    entry_point.__module__ = __name__
    entry_point.__doc__ = (f"{spec.genotype.name} ({spec.genotype.paper.get('title', 'user genotype')}) as the "
                           f"{spec.network} network, C={spec.C}, {spec.layers} cells.")
    register_model(entry_point)


for _spec in MODELS.values():
    _register(_spec)


@register_model
def nas_genotype(pretrained: bool = False, genotype: Union[Genotype, Mapping[str, Any], None] = None,
                 network: str = "cifar", C: int = 36, layers: int = 20, **kwargs) -> nn.Module:
    """Any genotype (a ``Genotype``, or a record in the format of a genotype file) as a timm model.

    This is the architecture a pushed genotype that is not in the zoo names in its ``config.json``, with the
    record, network, ``C`` and ``layers`` as ``model_args``, so ``timm.create_model("hf-hub:ORG/REPO")`` builds it.
    """
    if genotype is None:
        raise TypeError(f"{GENOTYPE_MODEL} needs genotype=<a Genotype or a genotype record, as in a genotype file>")
    if not isinstance(genotype, Genotype):
        (genotype,) = parse_genotypes(dict(genotype), "config.json model_args.genotype").values()
    return _create(ModelSpec(GENOTYPE_MODEL, genotype, network, C, layers, ()), pretrained, **kwargs)


@dataclass(frozen=True)
class LanguageModelSpec:
    """A recurrent cell built as the DARTS language model of one corpus, at its paper's setting."""

    name: str
    genotype: RecurrentGenotype
    dataset: str
    setting: Mapping[str, Any]  # rnn.paper_setting: ntoken, nhid, dropouts, wdecay, epochs

    @property
    def tags(self) -> List[str]:
        return [self.dataset]

    @property
    def datasets(self) -> List[str]:
        return [self.dataset]

    @property
    def evaluations(self) -> Tuple[Mapping[str, Any], ...]:
        return (self.genotype.evaluation(self.dataset),)

    def build(self, **kwargs) -> RNNModel:
        """The language model at the paper's setting; ``kwargs`` override it (``ntoken``, ``nhid``, dropouts)."""
        return RNNModel(self.genotype, **{**{k: self.setting[k] for k in MODEL_FIELDS}, **kwargs})

    def pretrained_cfg(self) -> Dict[str, Any]:
        paper = self.genotype.paper
        return dict(
            architecture=self.name, tag=self.dataset, hf_hub_id=f"{HUB_ORG}/{self.name}.{self.dataset}",
            dataset=self.dataset, vocab_size=self.setting["ntoken"], nhid=self.setting["nhid"],
            paper_ids=f"arXiv:{paper['arxiv']}" if "arxiv" in paper else None, paper_name=paper.get("title"),
            origin_url=paper.get("code"), notes=(f"genotype {self.genotype.name}",))


def _collect_language_models() -> Dict[str, LanguageModelSpec]:
    specs = {}
    for genotype in map(get_genotype, list_genotypes()):
        if isinstance(genotype, RecurrentGenotype):
            for evaluation in genotype.evaluations:
                name = evaluation["model"]
                if name in specs or name in MODELS:
                    raise GenotypeError(f"{genotype.source}: model {name!r} is named twice in the zoo")
                specs[name] = LanguageModelSpec(name, genotype, evaluation["dataset"],
                                                paper_setting(genotype, evaluation["dataset"]))
    return specs


LM_MODELS: Dict[str, LanguageModelSpec] = _collect_language_models()
AnySpec = Union[ModelSpec, LanguageModelSpec]


def _create_language_model(spec: LanguageModelSpec, pretrained: bool = False, **kwargs) -> RNNModel:
    model = spec.build(**kwargs)
    model.pretrained_cfg = model.default_cfg = spec.pretrained_cfg()
    if pretrained:
        from huggingface_hub import hf_hub_download

        from ..harness.checkpoint import load_weights

        hub_id = model.pretrained_cfg["hf_hub_id"]
        try:
            path = hf_hub_download(hub_id, "model.safetensors")
        except Exception as e:  # noqa: BLE001 - offline, missing repo, missing file: one message
            raise RuntimeError(f"no pretrained weights for {spec.name}: {hub_id} could not be fetched "
                               f"({type(e).__name__}); use pretrained=False or load a checkpoint") from None
        load_weights(path, model)
    return model


def list_models(pattern: str = "*", task: Optional[str] = "cnn") -> List[str]:
    """Zoo model names matching a shell-style ``pattern``: the timm models (``task="cnn"``), the language
    models (``"rnn"``) or both (``None``)."""
    names = {"cnn": list(MODELS), "rnn": list(LM_MODELS), None: [*MODELS, *LM_MODELS]}[task]
    return [name for name in names if fnmatch.fnmatch(name, pattern)]


def get_model_spec(name: str) -> AnySpec:
    """The spec of a zoo model (``"gdas_v1"``, ``"darts_v2_ptb"``; a ``.tag`` suffix is ignored)."""
    base = name.split(".", 1)[0]
    if base in LM_MODELS:
        return LM_MODELS[base]
    if base not in MODELS:
        raise unknown_name("model", name, [*MODELS, *LM_MODELS])
    return MODELS[base]


def create_model(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """timm.create_model for zoo names, with nearest-name suggestions for unknown ones.

    Language models (``"darts_v2_ptb"``) are built here, with the same ``pretrained_cfg`` and Hub id scheme.
    """
    import timm

    spec = get_model_spec(name)
    if isinstance(spec, LanguageModelSpec):
        return _create_language_model(spec, pretrained, **kwargs)
    return timm.create_model(name, pretrained=pretrained, **kwargs)
