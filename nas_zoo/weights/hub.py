"""Pretrained weights: nas-zoo's published form, the model card and the upload (the download: ``download``).

Published weights are a folder, on disk or as a Hugging Face Hub model repository, in timm's Hub layout:

* ``model.safetensors``: the network's ``state_dict`` in nas-zoo's layout, without the auxiliary head (a
  training device that an inference model does not build);
* ``config.json``: what timm reads (``architecture``, ``num_classes``, ``num_features``, ``global_pool``,
  ``model_args``, ``pretrained_cfg``) plus the genotype record (``genotype``);
* ``README.md``: the model card (metrics, provenance, the paper).

After ``import nas_zoo``, ``timm.create_model("hf-hub:ORG/REPO", pretrained=True)`` and
``timm.create_model("local-dir:DIR", pretrained=True)`` read it. A zoo model's tag with published weights
(``timm.create_model("gdas_v1.cifar10", pretrained=True)``) downloads them from the repository its genotype
file names and checks them against the sha256 recorded there; ``hf-hub:`` downloads are checked against the
sha256 the Hub reports for the file (its LFS etag). A file that fails the check is removed from the cache.
"""
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..harness.checkpoint import CheckpointError, load_fitting

from ..files import OutputError, atomic_directory, locked_output
from ..language.lm import language_model_weights
from ..registry.genotype import Genotype, is_flat
from ..registry.zoo import DATASET_TAGS, GENOTYPE_MODEL, MODELS, NUM_CLASSES, ModelSpec, _pretrained_cfg
from ..resolver import resolve
from .convert import LAYOUTS, CheckpointFormatError, convert_state_dict, read_checkpoint
from .download import WEIGHTS_NAME, sha256_of



def inference_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``state_dict`` without the auxiliary head (the papers' training-time classifier on cell 2L/3)."""
    return {k: v for k, v in state_dict.items() if not k.startswith("auxiliary_head.")}


def hub_config(model: nn.Module, architecture: str, genotype: Mapping[str, Any], model_args: Mapping[str, Any],
               pretrained_cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """``config.json`` for ``model``: timm's Hub fields and the genotype record.

    ``model_args`` are what ``timm.create_model(architecture, **model_args)`` needs beyond the registered
    defaults (a reduced ``C``/``layers``; the genotype itself for ``nas_genotype``).
    """
    keep = ("input_size", "pool_size", "crop_pct", "interpolation", "mean", "std", "first_conv", "classifier",
            "paper_ids", "paper_name", "origin_url", "notes", "license")
    cfg = {k: pretrained_cfg[k] for k in keep if pretrained_cfg.get(k) is not None}
    cfg["num_classes"] = model.num_classes
    config = {"architecture": architecture, "num_classes": model.num_classes, "num_features": model.num_features,
              "global_pool": "avg"}
    if model_args:
        config["model_args"] = dict(model_args)
    return {**config, "genotype": dict(genotype), "pretrained_cfg": json.loads(json.dumps(cfg))}


def _figure(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def evaluation_problem(evaluation: Any) -> Optional[str]:
    """What keeps ``evaluation`` from being ``nas-zoo evaluate --json`` output that ``model_card`` can show."""
    if not isinstance(evaluation, Mapping):
        return "expected a JSON object, as `nas-zoo evaluate --json` writes"
    flops, reported = evaluation.get("flops") or {}, evaluation.get("reported") or {}
    checks = {key: evaluation.get(key) is None or _number(evaluation.get(key))
              for key in ("top1_error", "top5_error", "params", "latency_ms_batch1")}
    checks.update(flops=isinstance(flops, Mapping) and all(map(_number, flops.values())), reported=is_flat(reported),
                  dataset=isinstance(evaluation.get("dataset", ""), str),
                  device=isinstance(evaluation.get("device", ""), str))
    bad = [key for key, ok in checks.items() if not ok]
    return f"field {bad[0]!r} is not what `nas-zoo evaluate --json` writes there" if bad else None


def model_card(config: Mapping[str, Any], dataset: str, load_as: str, evaluation: Optional[Mapping[str, Any]] = None,
               source: Optional[str] = None) -> str:
    """The repository's README.md: what the weights are, how to load them (``load_as``: ``hf-hub:ORG/REPO``),
    their metrics (from ``nas-zoo evaluate --json`` when given, beside the paper's), where they come from and
    the paper."""
    genotype = config["genotype"]
    paper = genotype.get("paper", {})
    size = ", ".join(f"{k}={v}" for k, v in config.get("model_args", {}).items() if k != "genotype")
    title = f"{config['architecture']} ({size})" if size else config["architecture"]
    of_paper = f" of {paper['title']}" if "title" in paper else ""
    lines = ["---", "library_name: timm", "tags: [image-classification, timm, nas-zoo, neural-architecture-search]",
             "license: apache-2.0", "---", "", f"# {title}: {genotype['name']} trained on {dataset}", "",
             f"The {genotype['name']} cell{of_paper}, built by nas-zoo as a timm model. Load it with:", "",
             "```python", "import timm, nas_zoo", "", f'model = timm.create_model("{load_as}", pretrained=True)',
             "```", ""]
    if evaluation:
        reported = evaluation.get("reported") or {}
        params = evaluation.get("params")
        rows = [("top-1 error %", evaluation.get("top1_error"), reported.get("test_error", reported.get("top1_error")), 2),
                ("top-5 error %", evaluation.get("top5_error"), reported.get("top5_error"), 2),
                ("params (M)", params / 1e6 if params is not None else None, reported.get("params_M"), 3)]
        rows += [(f"mult-adds, {convention} (M)", value / 1e6, None, 1)
                 for convention, value in (evaluation.get("flops") or {}).items()]
        rows.append(("latency, batch 1 (ms)", evaluation.get("latency_ms_batch1"), None, 2))
        device = f" ({evaluation['device']})" if evaluation.get("device") else ""
        lines += ["## Metrics", "", f"Measured by `nas-zoo evaluate` on {evaluation.get('dataset', dataset)}{device}, "
                  "beside the paper's figures.", "", "| | measured | paper |", "|---|---|---|"]
        lines += [f"| {label} | {_figure(measured, digits)} | {_figure(paper_value, digits)} |"
                  for label, measured, paper_value, digits in rows if measured is not None or paper_value is not None]
        lines.append("")
    lines += ["## Provenance", ""]
    if source:
        lines.append(f"* weights: {source}")
    provenance = genotype.get("provenance", {})
    if provenance:
        lines.append("* genotype: " + ", ".join(f"{k} {v}" for k, v in provenance.items()))
    lines += ["* the genotype record is `config.json`'s `genotype`; the auxiliary head is not included", ""]
    if paper:
        arxiv = f" [arXiv:{paper['arxiv']}](https://arxiv.org/abs/{paper['arxiv']})" if "arxiv" in paper else ""
        code = f" Code: {paper['code']}" if "code" in paper else ""
        lines += ["## Paper", "", f"{paper.get('authors', '')}. *{paper.get('title', '')}*. "
                  f"{paper.get('venue', '')}.{arxiv}{code}", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class WeightsTarget:
    """What a weights folder holds: a zoo model (or any genotype, as ``nas_genotype``) at a size, trained on
    a dataset."""

    spec: ModelSpec
    dataset: str
    enhancement_layers: Optional[int] = None  # the broad network's enhancement cells, if not its default (2)

    @classmethod
    def of(cls, spec: ModelSpec, dataset: Optional[str] = None, num_classes: Optional[int] = None,
           C: Optional[int] = None, layers: Optional[int] = None,
           enhancement_layers: Optional[int] = None) -> "WeightsTarget":
        """``spec`` at ``C``/``layers``/``enhancement_layers`` (its paper size by default), on ``dataset`` (else
        the dataset with ``num_classes`` classes among the model's, else its first)."""
        datasets = spec.datasets or list(NUM_CLASSES)
        if dataset is None:
            dataset = next((d for d in datasets if NUM_CLASSES[d] == num_classes), datasets[0])
        return cls(ModelSpec(spec.name, spec.genotype, spec.network, C or spec.C, layers or spec.layers,
                             spec.evaluations), dataset, enhancement_layers)

    @property
    def tag(self) -> str:
        return DATASET_TAGS[self.dataset]

    @property
    def in_zoo(self) -> bool:
        return self.spec.name in MODELS

    def model_args(self) -> Dict[str, Any]:
        """What ``timm.create_model`` needs beyond the registered model's defaults."""
        spec = self.spec
        broad = {"enhancement_layers": self.enhancement_layers} if self.enhancement_layers is not None else {}
        if not self.in_zoo:
            return {"genotype": spec.genotype.to_dict(), "network": spec.network, "C": spec.C, "layers": spec.layers,
                    **broad}
        paper = MODELS[spec.name]
        return {**{k: v for k, v in (("C", spec.C), ("layers", spec.layers)) if v != getattr(paper, k)}, **broad}

    def create(self, **kwargs) -> nn.Module:
        import timm

        name = f"{self.spec.name}.{self.tag}" if self.in_zoo else GENOTYPE_MODEL
        return timm.create_model(name, **self.model_args(), **kwargs)


def save_pretrained(directory, target: WeightsTarget, state_dict: Mapping[str, torch.Tensor], load_as: str,
                    evaluation: Optional[Mapping[str, Any]] = None, source: Optional[str] = None) -> Path:
    """Publish-ready folder for ``state_dict`` (nas-zoo's layout) as ``target``: checked to fit it exactly,
    the auxiliary head left out. ``load_as`` is the ``timm.create_model`` name the card shows."""
    if "classifier.weight" not in state_dict:
        raise CheckpointError(f"{source or 'the checkpoint'}: no classifier.weight; not a classification network's weights")
    auxiliary = any(k.startswith("auxiliary_head.") for k in state_dict)
    model = target.create(num_classes=state_dict["classifier.weight"].shape[0], auxiliary=auxiliary)
    load_fitting(dict(state_dict), model, source or "the checkpoint")
    if auxiliary:
        model = target.create(num_classes=model.num_classes)
        model.load_state_dict(inference_state_dict(state_dict))
    pretrained_cfg = _pretrained_cfg(target.spec, {"dataset": target.dataset})
    config = hub_config(model, target.spec.name, target.spec.genotype.to_dict(), target.model_args(), pretrained_cfg)
    card = model_card(config, target.dataset, load_as, evaluation, source)
    return write_pretrained(directory, model, config, card)


def write_pretrained(directory, model: nn.Module, config: Mapping[str, Any], card: str) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` into ``directory``, atomically.

    The folder is replaced whole, so it must be new, empty or such a folder already: never anything else.
    """
    with locked_output(directory), atomic_directory(directory) as tmp:
        if not _replaceable(Path(directory)):
            raise OutputError(f"{directory} exists and is not a weights folder written by nas-zoo; it is left as it "
                              "is: choose a new folder")
        weights = {k: v.detach().contiguous().cpu() for k, v in inference_state_dict(model.state_dict()).items()}
        save_file(weights, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "README.md").write_text(card)
    return Path(directory)


def _replaceable(directory: Path) -> bool:
    """Absent, empty, or an earlier ``write_pretrained`` folder (only its three files, its config.json: an image
    network's, with ``pretrained_cfg``, or a language model's, with its corpus and ``model_args``)."""
    if not directory.exists():
        return True
    if not directory.is_dir():
        return False
    names = {p.name for p in directory.iterdir()}
    if not names:
        return True
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return names <= {WEIGHTS_NAME, "config.json", "README.md"} and isinstance(config, dict) and \
        {"architecture", "genotype"} <= set(config) and \
        ("pretrained_cfg" in config or {"dataset", "model_args"} <= set(config))


def push_folder(directory, repo_id: str, private: bool = False) -> str:
    """Create ``repo_id`` on the Hub (if new) and upload ``directory``; the token comes from ``HF_TOKEN`` or
    ``hf auth login``. Returns the commit's URL."""
    from huggingface_hub import HfApi

    api = HfApi(library_name="nas-zoo")
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(directory), commit_message="Upload nas-zoo weights")
    return commit.commit_url


class HubError(ValueError):
    """Weights that cannot be converted or pushed as asked; the message says what to pass instead."""


def weights_target(name: str, num_classes: int, dataset: Optional[str] = None, network: Optional[str] = None,
                   C: Optional[int] = None, layers: Optional[int] = None,
                   en_layers: Optional[int] = None) -> WeightsTarget:
    """What weights with ``num_classes`` classes are as ``name`` (``nas_zoo.resolve``: a zoo model, its tag, a
    genotype, or a genotype file, built as ``nas_genotype`` on ``network``), at ``C``/``layers``/``en_layers``
    when not the paper's."""
    resolved = resolve(name, dataset)
    if not isinstance(resolved.genotype, Genotype):
        raise HubError(f"{resolved.genotype.name} is a recurrent cell; these are an image network's weights")
    if resolved.kind == "file":
        setting = next(iter(resolved.genotype.evaluations), {})
        spec = ModelSpec(GENOTYPE_MODEL, resolved.genotype, network or setting.get("network", "cifar"),
                         setting.get("C", 36), setting.get("layers", 20), ())
    elif resolved.model is None:
        raise HubError(f"{resolved.genotype.name} has no {resolved.dataset} network in its paper; name a genotype "
                       "file (and its network) to build one")
    elif network is not None:
        raise HubError(f"network: for a genotype file; {resolved.model.name} is the zoo's {resolved.model.network} "
                       "network")
    else:
        spec = resolved.model
    if en_layers is not None and not spec.network.startswith("bcnn"):
        raise HubError(f"en_layers: for the broad networks (bcnn, bcnn_imagenet); {spec.name} is {spec.network}")
    return WeightsTarget.of(spec, resolved.dataset, num_classes, C, layers, en_layers)


def _num_classes(state_dict: Mapping[str, torch.Tensor], source) -> int:
    if "classifier.weight" not in state_dict:
        raise CheckpointError(f"{source}: no classifier.weight; not a classification network's weights")
    return state_dict["classifier.weight"].shape[0]


def _save(out, target: WeightsTarget, state_dict, load_as: str, evaluation, source: str) -> Path:
    """``save_pretrained``, its errors saying which size was tried."""
    size = f"{target.spec.name} at C={target.spec.C}, layers={target.spec.layers}"
    try:
        return save_pretrained(out, target, state_dict, load_as, evaluation, source)
    except ValueError as e:
        raise HubError(f"cannot build {size}: {e}") from None
    except CheckpointError as e:  # the weights do not fit (an OutputError is no CheckpointError: it passes)
        raise CheckpointError(f"{e}; pass C and layers (--C, --layers) if it was trained at another size than "
                              f"{size}") from None


@dataclass(frozen=True)
class Written:
    """A weights folder ``convert`` wrote: what it holds and the Python that loads it."""

    folder: Path
    holds: str  # model, dataset and size
    load: str


def convert(path, layout: str, model: str, out, dataset: Optional[str] = None, network: Optional[str] = None,
            C: Optional[int] = None, layers: Optional[int] = None, en_layers: Optional[int] = None) -> Written:
    """An authors' checkpoint (``path``, in ``layout``'s key names: a key of ``convert.LAYOUTS``) as nas-zoo's
    weights folder ``out``, as ``model`` (see ``weights_target``). GDAS's checkpoints name their dataset, width,
    depth and genotype: they are taken (and checked) from there. A DARTS language model's size comes from it."""
    if layout not in LAYOUTS:
        raise HubError(f"layout {layout!r} is not one of: {', '.join(LAYOUTS)}")
    path, out = Path(path), Path(out)
    state_dict, extra = read_checkpoint(path)
    if "rnns.0._W0" in state_dict:  # the DARTS language model (rnn/model.py), e.g. a whole pickled model.pt
        given = [k for k, v in dict(network=network, C=C, layers=layers, en_layers=en_layers).items() if v is not None]
        if given:
            raise HubError(f"{', '.join(given)}: not for a language model (its size comes from the checkpoint)")
        name, lm, config = language_model_weights(state_dict, model, dataset, str(path))
        card = (f"# {name}\n\nThe DARTS language model with the {config['genotype']['name']} cell on "
                f"{config['dataset']}, converted by nas-zoo from {path.name}.\n")
        folder = write_pretrained(out, lm, config, card)
        return Written(folder, name, f"nas_zoo.harness.checkpoint.load_weights('{folder}', nas_zoo.create_model('{name}', "
                                     "**config['model_args']))")
    args = extra.get("args", {})  # NAS-Projects (GDAS) records the network it trained
    if args.get("dataset") in NUM_CLASSES:
        dataset = dataset or args["dataset"]
    classes = _num_classes(state_dict, path)
    target = weights_target(model, classes, dataset, network, C or args.get("init_channels"),
                            layers or args.get("layers"), en_layers)
    spec = target.spec
    if args.get("arch") and args["arch"].lower() != spec.genotype.name.lower():
        raise HubError(f"{path} was trained as {args['arch']} (its args.arch), not {spec.genotype.name}")
    auxiliary = any(k.startswith("auxiliary_head.") for k in state_dict)
    try:
        converted = convert_state_dict(state_dict, layout, target.create(num_classes=classes, auxiliary=auxiliary))
    except ValueError as e:
        raise HubError(f"cannot build {spec.name} at C={spec.C}, layers={spec.layers}: {e}") from None
    except KeyError as e:
        raise CheckpointFormatError(f"{path}: {e.args[0]}; is it a {layout} checkpoint of {spec.genotype.name} at "
                                    f"C={spec.C}, layers={spec.layers}?") from None
    folder = _save(out, target, converted, f"local-dir:{out}", None,
                   f"{path.name}, converted from the {layout} code's layout by `nas-zoo convert`")
    return Written(folder, f"{spec.name}, {target.dataset}, C={spec.C}, layers={spec.layers}",
                   f"timm.create_model('local-dir:{folder}', pretrained=True) after import nas_zoo")


@dataclass(frozen=True)
class Pushed:
    """Weights ``push`` uploaded: what they are, where, and their file's sha256."""

    target: WeightsTarget
    url: str
    sha256: str


def push(name: str, checkpoint, repo_id: str, evaluation: Union[None, str, os.PathLike, Mapping[str, Any]] = None,
         dataset: Optional[str] = None, network: Optional[str] = None, C: Optional[int] = None,
         layers: Optional[int] = None, en_layers: Optional[int] = None, private: bool = False) -> Pushed:
    """Upload nas-zoo weights (``checkpoint``: a ``.safetensors`` file, a run's checkpoint folder or a converted
    folder) as ``name`` (see ``weights_target``) to the Hub repository ``repo_id``, with a model card that shows
    ``evaluation`` (``evaluate_named``'s result, or the JSON file ``nas-zoo evaluate --json`` wrote)."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise HubError(f"repo id {repo_id!r} is not ORG/REPO")
    checkpoint = Path(checkpoint)
    file = checkpoint / WEIGHTS_NAME if checkpoint.is_dir() else checkpoint
    try:
        state_dict = load_file(str(file))
    except Exception as e:  # noqa: BLE001 - missing, truncated or not safetensors: one message
        raise CheckpointFormatError(f"{file}: not a readable safetensors file ({e})") from None
    metrics, where = evaluation, "the evaluation"
    if isinstance(evaluation, (str, os.PathLike)):
        where = str(evaluation)
        try:
            metrics = json.loads(Path(evaluation).read_text())
        except (OSError, ValueError, RecursionError) as e:  # ValueError: not JSON, or not UTF-8
            raise HubError(f"{evaluation}: not a readable evaluation JSON ({e})") from None
    if metrics is not None:
        problem = evaluation_problem(metrics)
        if problem:
            raise HubError(f"{where}: {problem}")
        dataset = dataset or metrics.get("dataset")
    target = weights_target(name, _num_classes(state_dict, file), dataset, network, C, layers, en_layers)
    if metrics is not None and metrics.get("dataset", target.dataset) != target.dataset:
        raise HubError(f"{where} evaluates on {metrics['dataset']}, the weights are for {target.dataset}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = _save(Path(tmp) / "repo", target, state_dict, f"hf-hub:{repo_id}", metrics,
                       f"{file.name}, pushed by `nas-zoo push`")
        digest = sha256_of(folder / WEIGHTS_NAME)
        try:
            url = push_folder(folder, repo_id, private)
        except Exception as e:  # noqa: BLE001 - auth, network, permission: the Hub's message says which
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise HubError(f"pushing to {repo_id} failed: {first_line} (token: HF_TOKEN or `hf auth login`)") from None
    return Pushed(target, url, digest)
