"""timm's model contract, run for every registered zoo model (as timm's tests/test_models.py)."""
import pytest
import timm
import torch

import nas_zoo

MODELS = nas_zoo.list_models()
# Small inputs keep the suite fast; ImageNet networks pool adaptively, so 64x64 works.
SMALL = dict(C=8, layers=5)


def _input(spec, batch=2):
    size = 64 if spec.imagenet else 32
    return torch.randn(batch, 3, size, size)


def test_every_zoo_model_is_registered_with_timm():
    assert set(MODELS) <= set(timm.list_models())
    assert timm.list_models("*gdas*") == sorted(m for m in MODELS if "gdas" in m)
    assert len({nas_zoo.get_model_spec(m).genotype.name for m in MODELS}) == 16


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward(name):
    spec = nas_zoo.get_model_spec(name)
    model = timm.create_model(name, num_classes=7, drop_rate=0.1, drop_path_rate=0.2, **SMALL)
    x = _input(spec)
    out = model(x)
    assert out.shape == (2, 7)
    out.mean().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, f"parameters without gradient: {unused[:5]}"


@pytest.mark.parametrize("name", MODELS)
def test_cfg_and_head(name):
    spec = nas_zoo.get_model_spec(name)
    model = timm.create_model(name, **SMALL).eval()
    cfg = model.pretrained_cfg
    for key in ("input_size", "mean", "std", "crop_pct", "interpolation", "first_conv", "classifier",
                "hf_hub_id", "paper_ids", "num_classes"):
        assert cfg.get(key) is not None, key
    assert cfg["hf_hub_id"] == f"nas-zoo/{name}.{cfg['tag']}"
    assert model.get_submodule(cfg["first_conv"]).in_channels == 3
    assert model.get_classifier() is model.get_submodule(cfg["classifier"])
    assert model.num_classes == cfg["num_classes"]

    x = _input(spec)
    features = model.forward_features(x)
    assert features.shape[1] == model.num_features
    pre_logits = model.forward_head(features, pre_logits=True)
    assert pre_logits.shape == (2, model.num_features)
    torch.testing.assert_close(model.forward_head(features), model(x))

    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    model.reset_classifier(5, global_pool="max")
    assert model(x).shape == (2, 5)


@pytest.mark.parametrize("name", MODELS)
def test_in_chans(name):
    spec = nas_zoo.get_model_spec(name)
    model = timm.create_model(name, in_chans=1, **SMALL)
    assert model(_input(spec)[:, :1]).shape[0] == 2


@pytest.mark.parametrize("name", MODELS)
def test_features_only(name):
    spec = nas_zoo.get_model_spec(name)
    model = timm.create_model(name, features_only=True, **SMALL).eval()
    size = _input(spec).shape[-1]
    features = model(_input(spec))
    info = model.feature_info
    assert len(features) == len(info.channels()) >= 3
    reductions = info.reduction()
    assert reductions == sorted(set(reductions)), "one feature map per resolution"
    for f, channels, reduction in zip(features, info.channels(), reductions):
        assert f.shape[1:] == (channels, size // reduction, size // reduction)
    picked = timm.create_model(name, features_only=True, out_indices=(-1,), **SMALL).eval()
    assert picked(_input(spec))[0].shape == features[-1].shape


@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates_stop_early_norm_and_prune(name):
    """timm's contract (as resnet.py): ``stop_early`` runs nothing past the last index asked for, ``norm`` is
    accepted, ``prune_intermediate_layers`` drops what follows it and the head and returns the indices."""
    spec = nas_zoo.get_model_spec(name)
    torch.manual_seed(0)
    model = timm.create_model(name, **SMALL).eval()
    x = _input(spec)
    with torch.no_grad():
        final, everything = model.forward_intermediates(x, norm=True)
        torch.testing.assert_close(final, model.forward_features(x))
        assert [f.shape[1] for f in everything] == [info["num_chs"] for info in model.feature_info]
        ran = []
        model.cells[-1].register_forward_hook(lambda *args: ran.append(True))
        first = model.forward_intermediates(x, indices=[0], stop_early=True)[1]
        torch.testing.assert_close(first[0], everything[0])
        assert not ran  # the last cell did not run
        last = model.forward_intermediates(x, indices=1, intermediates_only=True)
        torch.testing.assert_close(last[0], everything[-1])
        assert ran
        params = sum(p.numel() for p in model.parameters())
        assert model.prune_intermediate_layers([0, -2]) == [0, len(everything) - 2]
        assert sum(p.numel() for p in model.parameters()) < params
        kept = model.forward_intermediates(x, indices=[0, len(everything) - 2], intermediates_only=True)
        for got, expected in zip(kept, (everything[0], everything[-2])):
            torch.testing.assert_close(got, expected)
        assert model.num_features == model.feature_info[-2]["num_chs"]
        torch.testing.assert_close(model(x), everything[-2])  # no pooling, no classifier left
    features = timm.create_model(name, features_only=True, out_indices=(1,), **SMALL).eval()
    assert features.feature_info.channels() == [model.feature_info[1]["num_chs"]]


@pytest.mark.parametrize("name", MODELS)
def test_forward_train_auxiliary(name):
    spec = nas_zoo.get_model_spec(name)
    model = timm.create_model(name, num_classes=3, auxiliary=True, **SMALL)
    size = 224 if spec.imagenet else 32  # the auxiliary head's pooling needs the paper's resolution
    x = torch.randn(2, 3, size, size)
    logits, auxiliary = model.forward_train(x)
    assert logits.shape == (2, 3)
    if spec.network.startswith("bcnn"):
        assert auxiliary is None  # BNASv2 builds no auxiliary head
    else:
        assert auxiliary.shape == (2, 3)
        assert model(x).shape == (2, 3)  # forward never returns the auxiliary logits


def _compiled_outputs_match(name: str, backend: str) -> None:
    spec = nas_zoo.get_model_spec(name)
    model = timm.create_model(name, C=8, layers=3 if not spec.network.startswith("bcnn") else 2).eval()
    torch._dynamo.reset()  # each model is a new set of guards on the same forward code
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = _input(spec)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_torch_compile_captures_one_graph(name):
    """Every model is captured as one graph (``fullgraph=True``: no graph break) and the captured graph, run
    by the ``eager`` backend, gives the model's outputs. TorchScript is deprecated and not supported."""
    _compiled_outputs_match(name, "eager")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["darts_v2", "gdas_f1_imagenet", "b_pc_darts_image"])
def test_torch_compile_inductor(name):
    """One model per kind of network (CIFAR, ImageNet with GDAS's fixed reduction cell, broad) compiled by the
    default backend, inductor (generated C++ on CPU; about a minute each), gives the model's outputs."""
    _compiled_outputs_match(name, "inductor")
