"""The ImageNet search of PC-DARTS and B-PC-DARTS: the per-class sample, the paper's settings, the
warm-up and the clipped alpha gradient, run end to end from the CLI on a tiny class-folder dataset."""
import json
import math

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from nas_zoo import build_network
from nas_zoo.cli.app import app
from nas_zoo.harness.data import DatasetError
from nas_zoo.registry.genotype import load_genotype
from nas_zoo.search import PcDarts, SearchAlgorithm, SearchConfig, SearchNetwork, with_defaults
from nas_zoo.search.bilevel import BiLevel
from nas_zoo.search.data import imagenet_sample

from .conftest import TINY_IMAGENET_CLASSES as CLASSES

runner = CliRunner()
weights_lr = SearchAlgorithm().weights_lr  # the default schedule


def test_the_sample_is_ten_and_two_and_a_half_percent_of_every_class(tiny_imagenet, tmp_path):
    data = imagenet_sample(with_defaults(PcDarts(), SearchConfig(dataset="imagenet", data_dir=str(tiny_imagenet), seed=2)))
    weights, arch = data.sample["weights"], data.sample["arch"]
    assert data.num_classes == CLASSES and (len(weights), len(arch)) == (4 * CLASSES, 1 * CLASSES)
    assert not set(weights) & set(arch)  # drawn without replacement: the two parts are disjoint
    targets = data.train.dataset.targets
    assert [sum(targets[i] == c for i in weights) for c in range(CLASSES)] == [4] * CLASSES
    assert [sum(targets[i] == c for i in arch) for c in range(CLASSES)] == [1] * CLASSES
    again = imagenet_sample(with_defaults(PcDarts(), SearchConfig(dataset="imagenet", data_dir=str(tiny_imagenet), seed=2)))
    other = imagenet_sample(with_defaults(PcDarts(), SearchConfig(dataset="imagenet", data_dir=str(tiny_imagenet), seed=3)))
    assert again.sample["weights"] == weights and other.sample["weights"] != weights
    assert data.train[0][0].shape == (3, 224, 224)

    (tmp_path / "train" / "one").mkdir(parents=True)
    Image.fromarray(torch.zeros(8, 8, 3, dtype=torch.uint8).numpy()).save(tmp_path / "train" / "one" / "a.png")
    with pytest.raises(DatasetError, match="'one' has 1 image"):
        imagenet_sample(with_defaults(PcDarts(), SearchConfig(dataset="imagenet", data_dir=str(tmp_path))))
    with pytest.raises(DatasetError, match="not found"):
        imagenet_sample(with_defaults(PcDarts(), SearchConfig(dataset="imagenet", data_dir=str(tmp_path / "nowhere"))))


def test_imagenet_takes_the_papers_imagenet_settings_unless_given():
    config = with_defaults(PcDarts(), SearchConfig(dataset="imagenet"))
    assert (config.layers, config.batch_size, config.lr, config.lr_warmup, config.arch_lr, config.arch_warmup,
            config.arch_grad_clip) == (8, 1024, 0.5, 5, 6e-3, 35, 5.0)
    cifar = with_defaults(PcDarts(), SearchConfig(dataset="cifar10", batch_size=32))
    assert (cifar.layers, cifar.batch_size, cifar.lr, cifar.lr_warmup, cifar.arch_grad_clip) == (8, 32, 0.1, 0, 0.0)
    chosen, paper = PcDarts(k=4), PcDarts()
    chosen.for_dataset("imagenet")
    paper.for_dataset("imagenet")
    assert (chosen.k, paper.k) == (4, 2)


def test_the_learning_rate_warms_up_then_follows_the_cosine():
    config = SearchConfig(epochs=10, lr=0.5, lr_min=0.0, lr_warmup=5)
    assert [weights_lr(config, e) for e in range(5)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert weights_lr(config, 5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 10)) / 2)
    # without a warm-up: torch's CosineAnnealingLR, epoch by epoch
    plain = SearchConfig(epochs=7, lr=0.025, lr_min=0.001, lr_warmup=0)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.025)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 7, eta_min=0.001)
    expected = []
    for _ in range(7):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert [weights_lr(plain, e) for e in range(7)] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("clip", [0.0, 5.0])
def test_alpha_gradient_is_clipped_where_the_paper_clips_it(clip):
    config = with_defaults(PcDarts(), SearchConfig(arch_grad_clip=clip, device="cpu"))
    search = BiLevel(PcDarts(), SearchNetwork(4, 10, 3), config)
    gradient = [torch.full_like(p, 10.0) for p in search.alphas]
    search.arch_step(gradient)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in search.alphas]))
    unclipped = math.sqrt(sum(p.numel() for p in search.alphas)) * 10
    assert norm.item() == pytest.approx(clip if clip else unclipped, rel=1e-5)


@pytest.mark.parametrize("algorithm, layers, lr, evaluation", [
    ("pc-darts", 3, 0.5, dict(network="imagenet", C=48, layers=14)),
    ("b-pc-darts", 2, 0.2, dict(network="bcnn_imagenet", C=44, layers=6, enhancement_layers=2)),
])
def test_imagenet_search_from_the_cli(tiny_imagenet, tmp_path, algorithm, layers, lr, evaluation):
    out = tmp_path / "out"
    result = runner.invoke(app, ["search", algorithm, "--dataset", "imagenet", "--data-dir", str(tiny_imagenet),
                                 "--epochs", "2", "--batch-size", "8", "--init-channels", "8", "--layers",
                                 str(layers), "--arch-warmup", "1", "--num-workers", "0", "--device", "cpu",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "search.json").read_text())
    config = record["config"]
    assert (config["batch_size"], config["lr"], config["lr_warmup"], config["arch_grad_clip"]) == (8, lr, 5, 5.0)
    assert record["options"]["k"] == 2
    assert [e["lr"] for e in record["epochs"]] == pytest.approx([lr / 5, 2 * lr / 5])
    assert record["data"]["classes"] == CLASSES and len(record["data"]["weights"]) == 4 * CLASSES
    genotype = load_genotype(out / "genotype.json")
    setting = genotype.evaluation("imagenet")
    assert {k: setting[k] for k in evaluation} == evaluation
    # the derived cells build the evaluation network the record names (at a small size)
    extra = {"enhancement_layers": 2} if "enhancement_layers" in evaluation else {}
    net = build_network(genotype, network=evaluation["network"], C=8, layers=6, num_classes=CLASSES, **extra)
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, CLASSES)


def test_a_method_without_an_imagenet_search_refuses_it(tiny_imagenet, tmp_path):
    result = runner.invoke(app, ["search", "darts", "--dataset", "imagenet", "--data-dir", str(tiny_imagenet),
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no ImageNet search" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
