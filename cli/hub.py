"""``nas-zoo convert`` (the authors' checkpoints into nas-zoo's weights folder) and ``nas-zoo push`` (to the Hub)."""
import json
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from safetensors.torch import load_file

from nas_zoo.checkpoint import CheckpointError, OutputError
from nas_zoo.convert import LAYOUTS, CheckpointFormatError, convert_state_dict, read_checkpoint
from nas_zoo.download import WEIGHTS_NAME, sha256_of
from nas_zoo.genotype import DATASETS, GenotypeError, load_genotype
from nas_zoo.hub import WeightsTarget, evaluation_problem, push_folder, save_pretrained
from nas_zoo.lm import convert_language_model
from nas_zoo.threads import set_threads
from nas_zoo.zoo import DATASET_TAGS, GENOTYPE_MODEL, ModelSpec, find_model

from .lm import lm_errors
from .output import fail, threads_option

TAG_DATASETS = {tag: dataset for dataset, tag in DATASET_TAGS.items()}


def _target(name: str, num_classes: int, dataset: Optional[str], network: Optional[str], C: Optional[int],
            layers: Optional[int], en_layers: Optional[int] = None) -> WeightsTarget:
    """A zoo model (``gdas_v1``, ``gdas_v1.cifar10``), a zoo genotype, or a genotype file (``FILE[:NAME]``)."""
    is_file = name.endswith(".json") or ":" in name or Path(name).exists()
    base, _, tag = ("", "", "") if is_file else name.partition(".")
    if tag:
        if tag not in TAG_DATASETS:
            raise fail(f"{name}: unknown tag {tag!r}; tags are {', '.join(TAG_DATASETS)}")
        dataset = dataset or TAG_DATASETS[tag]
    if dataset is not None and dataset not in DATASETS:
        raise fail(f"--dataset {dataset!r} is not one of: {', '.join(DATASETS)}")
    try:
        if is_file:
            path, _, entry = name.partition(":") if not Path(name).exists() else (name, "", "")
            genotype = load_genotype(path, entry or None)
            setting = next(iter(genotype.evaluations), {})
            spec = ModelSpec(GENOTYPE_MODEL, genotype, network or setting.get("network", "cifar"),
                             setting.get("C", 36), setting.get("layers", 20), ())
        else:
            spec = find_model(base, dataset)
    except (GenotypeError, KeyError) as e:
        raise fail(str(e).strip('"')) from None
    if en_layers is not None and not spec.network.startswith("bcnn"):
        raise fail(f"--en-layers applies to the broad networks (bcnn, bcnn_imagenet); {spec.name} is {spec.network}")
    return WeightsTarget.of(spec, dataset, num_classes, C, layers, en_layers)


def _classes(state_dict) -> int:
    if "classifier.weight" not in state_dict:
        raise fail("the checkpoint has no classifier.weight: not a classification network's weights")
    return state_dict["classifier.weight"].shape[0]


def _save(out: Path, target: WeightsTarget, state_dict, load_as: str, evaluation, source: str) -> Path:
    try:
        return save_pretrained(out, target, state_dict, load_as, evaluation, source)
    except OutputError as e:
        raise fail(str(e)) from None
    except ValueError as e:  # the network cannot be built at that size
        raise fail(f"cannot build {target.spec.name} at C={target.spec.C}, layers={target.spec.layers}: {e}") from None
    except CheckpointError as e:
        raise fail(f"{e}; pass --C/--layers if it was trained at another size than "
                   f"C={target.spec.C}, layers={target.spec.layers}") from None
    except OSError as e:
        raise fail(f"{out}: cannot write the weights folder ({e.strerror})") from None


def convert_command(
    family: str = typer.Option(..., "--from", help=f"the code the checkpoint comes from: {', '.join(LAYOUTS)}"),
    path: Path = typer.Argument(..., help="the authors' checkpoint (.pt/.pth/.pth.tar, or .safetensors)"),
    model: str = typer.Option(..., help="zoo model (gdas_v1, gdas_v1.cifar10), genotype, or genotype file"),
    out: Path = typer.Option(..., help="the weights folder to write (model.safetensors, config.json, README.md)"),
    dataset: Optional[str] = typer.Option(None, help="what it was trained on",
                                           show_default="from the tag or classes"),
    network: Optional[str] = typer.Option(None, help="for a genotype file: cifar, imagenet, bcnn, bcnn_imagenet",
                                           show_default="its first evaluation's"),
    C: Optional[int] = typer.Option(None, "--C", help="initial channels", show_default="the paper's"),
    layers: Optional[int] = typer.Option(None, help="cells", show_default="the paper's"),
    en_layers: Optional[int] = typer.Option(None, help="the broad network's enhancement cells",
                                            show_default="the paper's 2"),
    threads: int = threads_option(),
) -> None:
    """Convert an authors' released checkpoint into nas-zoo's weights folder (loadable with local-dir:OUT)."""
    set_threads(threads)
    if family not in LAYOUTS:
        raise fail(f"--from {family!r} is not one of: {', '.join(LAYOUTS)}")
    try:
        state_dict, extra = read_checkpoint(path)
    except CheckpointFormatError as e:
        raise fail(str(e)) from None
    if "rnns.0._W0" in state_dict:  # the DARTS language model (rnn/model.py), e.g. a whole pickled model.pt
        _convert_language_model(state_dict, path, model, out, dataset, dict(network=network, C=C, layers=layers,
                                                                            en_layers=en_layers))
        return
    args = extra.get("args", {})  # NAS-Projects (GDAS) records the network it trained
    if args.get("dataset") in DATASETS:
        dataset = dataset or args["dataset"]
    target = _target(model, _classes(state_dict), dataset, network, C or args.get("init_channels"),
                     layers or args.get("layers"), en_layers)
    if args.get("arch") and args["arch"].lower() != target.spec.genotype.name.lower():
        raise fail(f"{path} was trained as {args['arch']} (its args.arch), not {target.spec.genotype.name}")
    auxiliary = any(k.startswith("auxiliary_head.") for k in state_dict)
    try:
        converted = convert_state_dict(state_dict, family, target.create(num_classes=_classes(state_dict),
                                                                          auxiliary=auxiliary))
    except ValueError as e:
        raise fail(f"cannot build {target.spec.name} at C={target.spec.C}, layers={target.spec.layers}: {e}") from None
    except KeyError as e:
        raise fail(f"{path}: {e.args[0]}; is it a {family} checkpoint of {target.spec.genotype.name} at "
                   f"C={target.spec.C}, layers={target.spec.layers}?") from None
    folder = _save(out, target, converted, f"local-dir:{out}", None, f"{path.name}, converted from the {family} "
                   "code's layout by `nas-zoo convert`")
    Console().print(f"wrote {folder} ({target.spec.name}, {target.dataset}, C={target.spec.C}, "
                    f"layers={target.spec.layers}); load it with timm.create_model('local-dir:{folder}', "
                    "pretrained=True) after import nas_zoo", highlight=False, markup=False, soft_wrap=True)


def _convert_language_model(state_dict, path: Path, model: str, out: Path, dataset: Optional[str], cnn_flags) -> None:
    given = [f"--{k.replace('_', '-')}" for k, v in cnn_flags.items() if v is not None]
    if given:
        raise fail(f"{', '.join(given)}: not for a language model (its size comes from the checkpoint)")
    with lm_errors():
        name, folder = convert_language_model(state_dict, model, out, dataset, str(path))
    Console().print(f"wrote {folder} ({name}); load it with nas_zoo.checkpoint.load_weights('{folder}', "
                    f"nas_zoo.create_model('{name}', **config['model_args']))", highlight=False, soft_wrap=True)


def push_command(
    name: str = typer.Argument(..., help="zoo model (gdas_v1.cifar10), genotype, or genotype file"),
    checkpoint: Path = typer.Option(..., help="nas-zoo weights: a .safetensors file, a run's checkpoint directory "
                                              "or a converted folder"),
    repo_id: str = typer.Option(..., help="the Hub repository, ORG/REPO"),
    evaluation: Optional[Path] = typer.Option(None, "--eval", help="`nas-zoo evaluate --json` output for the card",
                                             show_default="none"),
    dataset: Optional[str] = typer.Option(None, help="what it was trained on",
                                           show_default="from the tag or classes"),
    network: Optional[str] = typer.Option(None, help="for a genotype file: cifar, imagenet, bcnn, bcnn_imagenet",
                                           show_default="its first evaluation's"),
    C: Optional[int] = typer.Option(None, "--C", help="initial channels", show_default="the paper's"),
    layers: Optional[int] = typer.Option(None, help="cells", show_default="the paper's"),
    en_layers: Optional[int] = typer.Option(None, help="the broad network's enhancement cells",
                                            show_default="the paper's 2"),
    private: bool = typer.Option(False, help="create the repository private"),
    threads: int = threads_option(),
) -> None:
    """Upload weights to the Hub as model.safetensors + config.json + README.md (token: HF_TOKEN or login)."""
    set_threads(threads)
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise fail(f"--repo-id {repo_id!r} is not ORG/REPO")
    file = checkpoint / WEIGHTS_NAME if checkpoint.is_dir() else checkpoint
    try:
        state_dict = load_file(str(file))
    except Exception as e:  # noqa: BLE001 - missing, truncated or not safetensors: one message
        raise fail(f"{file}: not a readable safetensors file ({e})") from None
    metrics = None
    if evaluation is not None:
        try:
            metrics = json.loads(evaluation.read_text())
        except (OSError, ValueError, RecursionError) as e:  # ValueError: not JSON, or not UTF-8
            raise fail(f"{evaluation}: not a readable evaluation JSON ({e})") from None
        problem = evaluation_problem(metrics)
        if problem:
            raise fail(f"{evaluation}: {problem}")
        dataset = dataset or metrics.get("dataset")
    target = _target(name, _classes(state_dict), dataset, network, C, layers, en_layers)
    if metrics is not None and metrics.get("dataset", target.dataset) != target.dataset:
        raise fail(f"{evaluation} evaluates on {metrics['dataset']}, the weights are for {target.dataset}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = _save(Path(tmp) / "repo", target, state_dict, f"hf-hub:{repo_id}", metrics,
                       f"{file.name}, pushed by `nas-zoo push`")
        digest = sha256_of(folder / WEIGHTS_NAME)
        try:
            url = push_folder(folder, repo_id, private)
        except Exception as e:  # noqa: BLE001 - auth, network, permission: the Hub's message says which
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise fail(f"pushing to {repo_id} failed: {first_line} (token: HF_TOKEN or `hf auth login`)") from None
    weights = json.dumps({"hf_hub_id": repo_id, "sha256": digest, "published": True})
    Console().print(f"pushed {target.spec.name} ({target.dataset}) to {url}\nsha256 of {WEIGHTS_NAME}: {digest}\n"
                    f"to publish it as {target.spec.name}.{target.tag}, add to its evaluation in the genotype file: "
                    f"\"weights\": {weights}", highlight=False, markup=False, soft_wrap=True)
