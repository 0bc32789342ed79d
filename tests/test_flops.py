import pytest
from torch import nn

import nas_zoo
from nas_zoo.models.flops import count_flops


def test_counts_a_known_network_exactly():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    count = count_flops(model, (3, 8, 8))
    assert count.macs == 8 * 8 * 8 * 3 * 9 + 128 * 10
    assert (count.batch_norm_elements, count.relu_elements) == (512, 512)
    assert list(count.conventions().values()) == [count.macs, count.macs + 2 * 512 + 512]


def test_counting_leaves_the_model_as_it_was():
    model = nas_zoo.create_model("darts_v2", C=8, layers=5)
    model.train()
    count_flops(model, (3, 32, 32))
    assert model.training
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("name", ["gdas_v1_imagenet", "gdas_f1_imagenet", "pdarts_imagenet",
                                  "pc_darts_cifar_imagenet", "pc_darts_image"])
def test_reproduces_the_papers_imagenet_mult_adds(name):
    """Each paper's ImageNet figure is met, to the million, by one of the conventions."""
    spec = nas_zoo.get_model_spec(name)
    reported = spec.evaluation("imagenet")["reported"]["mult_adds_M"]
    totals = count_flops(spec.build(), (3, 224, 224)).conventions().values()
    assert min(abs(t / 1e6 - reported) for t in totals) < 0.5, (list(totals), reported)
