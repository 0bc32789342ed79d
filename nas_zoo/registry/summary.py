"""Measured figures (parameters, FLOPs) of zoo models next to the papers' reported ones."""
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..models.flops import count_flops
from ..models.networks import NETWORK_DEFAULTS, build_network
from ..models.rnn import MODEL_FIELDS, RNNModel, paper_setting
from .genotype import TEXT_DATASETS, AnyGenotype, RecurrentGenotype, thaw
from .zoo import DATASET_TAGS, LM_MODELS, MODELS, NUM_CLASSES, WEIGHTS

TEST_ERROR_KEYS = ("test_error", "top1_error")
FAMILIES = ("darts", "gdas", "pdarts", "pc_darts", "ednas", "bnasv2")  # the paper files (genotypes/*.json)
SEARCH_COST_KEYS = ("search_cost_gpu_days", "search_cost_gpu_days_first_order")  # B-DARTS reports both orders


def family(genotype: AnyGenotype) -> str:
    """The paper family of a zoo genotype (its file's name), or "user" for a genotype file of one's own."""
    return Path(genotype.source).stem if genotype.source.startswith("genotypes/") else "user"


def count_params(model) -> int:
    """Parameters as every paper reports them: the auxiliary head left out."""
    return sum(p.numel() for name, p in model.named_parameters() if "auxiliary" not in name)


def reported_error(reported) -> Optional[float]:
    """The reported test (CIFAR) or top-1 (ImageNet) error, if the paper gives one."""
    return next((reported[k] for k in TEST_ERROR_KEYS if k in (reported or {})), None)


def search_cost(reported) -> Optional[float]:
    """The reported search cost in GPU days (first order where a paper gives both)."""
    return next((reported[k] for k in SEARCH_COST_KEYS if k in reported), None)


def zoo_rows(family_name: Optional[str] = None, dataset: Optional[str] = None) -> List[Dict[str, Any]]:
    """One row per zoo model and paper evaluation: measured params beside the reported figures."""
    rows = []
    for spec in MODELS.values():
        evaluations = [e for e in spec.evaluations if dataset in (None, e["dataset"])]
        if family_name not in (None, family(spec.genotype)) or not evaluations:
            continue
        model = spec.build(num_classes=0)
        for evaluation in evaluations:
            model.reset_classifier(NUM_CLASSES[evaluation["dataset"]])
            reported = evaluation.get("reported", {})
            rows.append(dict(
                model=f"{spec.name}.{DATASET_TAGS[evaluation['dataset']]}", genotype=spec.genotype.name,
                family=family(spec.genotype), paper=spec.genotype.paper.get("title"), task="cnn",
                dataset=evaluation["dataset"], network=spec.network, C=spec.C, layers=spec.layers,
                params=count_params(model), reported_params_M=reported.get("params_M"),
                reported_error=reported_error(reported), search_cost_gpu_days=search_cost(reported),
                search_gpu=reported.get("search_gpu"), reported=thaw(reported),
                published=WEIGHTS[f"{spec.name}.{DATASET_TAGS[evaluation['dataset']]}"].published))
    return rows


def _language_model_row(name: Optional[str], genotype: RecurrentGenotype, dataset: str) -> Dict[str, Any]:
    setting = paper_setting(genotype, dataset)
    with torch.device("meta"):
        model = RNNModel(genotype, **{k: setting[k] for k in MODEL_FIELDS})
    reported = (genotype.evaluation(dataset) or {}).get("reported", {})
    return dict(
        model=name and f"{name}.{dataset}", genotype=genotype.name, family=family(genotype),
        paper=genotype.paper.get("title"), task="rnn", dataset=dataset, network="rnn", nhid=setting["nhid"],
        ntoken=setting["ntoken"], params=sum(p.numel() for p in model.parameters()),
        reported_params_M=reported.get("params_M"), reported_val_ppl=reported.get("val_ppl"),
        reported_test_ppl=reported.get("test_ppl"), search_cost_gpu_days=search_cost(reported),
        setting={k: v for k, v in setting.items() if k != "dataset"}, reported=thaw(reported))


def language_model_rows(family_name: Optional[str] = None, dataset: Optional[str] = None) -> List[Dict[str, Any]]:
    """One row per zoo language model: measured params beside the reported perplexities."""
    return [_language_model_row(spec.name, spec.genotype, spec.dataset) for spec in LM_MODELS.values()
            if family_name in (None, family(spec.genotype)) and dataset in (None, spec.dataset)]


def _network_info(model, name: Optional[str], network: str, C: int, layers: int,
                  evaluations) -> Dict[str, Any]:
    """Params and FLOPs of ``model`` with the classifier of each evaluation's dataset (or the default one)."""
    size = 224 if network.endswith("imagenet") else 32
    datasets = []
    for evaluation in evaluations or [None]:
        if evaluation is not None:
            model.reset_classifier(NUM_CLASSES[evaluation["dataset"]])
        datasets.append(dict(
            dataset=evaluation and evaluation["dataset"], num_classes=model.num_classes, params=count_params(model),
            flops=count_flops(model, (3, size, size)).conventions(),
            setting=evaluation and {k: v for k, v in evaluation.items() if k not in ("reported", "model")},
            reported=(evaluation or {}).get("reported", {})))
    return dict(model=name, network=network, C=C, layers=layers, input_size=[3, size, size], datasets=datasets)


def genotype_info(genotype: AnyGenotype) -> Dict[str, Any]:
    """Everything ``nas-zoo info`` shows: the genotype, its provenance and, per network, params and FLOPs.

    Zoo genotypes are shown in their registered models; a genotype file in the networks its evaluations
    name, or else in the default CIFAR and ImageNet networks. A recurrent cell is shown as the language
    model of each corpus it was evaluated on (else of both), params and the reported perplexities.
    """
    if isinstance(genotype, RecurrentGenotype):
        names = {spec.dataset: spec.name for spec in LM_MODELS.values() if spec.genotype is genotype}
        datasets = [e["dataset"] for e in genotype.evaluations] or list(TEXT_DATASETS)
        return dict(genotype=genotype.to_dict(), family=family(genotype), source=genotype.source,
                    networks=thaw([_language_model_row(names.get(d), genotype, d) for d in datasets]))
    groups = [(s.name, s.network, s.C, s.layers, s.evaluations) for s in MODELS.values() if s.genotype is genotype]
    if not groups:
        settings: Dict[tuple, list] = {}
        for evaluation in genotype.evaluations:
            settings.setdefault((evaluation["network"], evaluation["C"], evaluation["layers"]), []).append(evaluation)
        if not settings:
            settings = {(network, NETWORK_DEFAULTS[network][2], NETWORK_DEFAULTS[network][3]): []
                        for network in ("cifar", "imagenet")}
        groups = [(None, network, C, layers, evaluations) for (network, C, layers), evaluations in settings.items()]
    networks = [_network_info(build_network(genotype, network, C, layers), name, network, C, layers, evaluations)
                for name, network, C, layers, evaluations in groups]
    return dict(genotype=genotype.to_dict(), family=family(genotype), source=genotype.source, networks=thaw(networks))
