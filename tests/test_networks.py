import pytest
import torch

import nas_zoo
from nas_zoo.models.cells import Cell, FixedReductionCell
from nas_zoo.models.ops import FactorizedReduce


def test_reduction_cells_sit_at_one_and_two_thirds():
    model = nas_zoo.build_network("DARTS_V2", "cifar", C=8, layers=8)
    assert [i for i, cell in enumerate(model.cells) if cell.reduction] == [2, 5]
    assert isinstance(model.cells[3].preprocess0, FactorizedReduce)  # the cell after a reduction


def test_missing_reduce_cell_means_gdas_fixed_reduction_cell():
    model = nas_zoo.build_network("GDAS_F1", "imagenet", C=16, layers=14)
    kinds = [type(cell) for cell in model.cells]
    assert [i for i, k in enumerate(kinds) if k is FixedReductionCell] == [4, 9]
    assert all(k is Cell for i, k in enumerate(kinds) if i not in (4, 9))


def test_broad_network_needs_a_reduce_cell():
    with pytest.raises(ValueError, match="GDAS_F1: the broad network needs a reduce cell"):
        nas_zoo.build_network("GDAS_F1", "bcnn")


def test_enhancement_layers_are_an_option_of_the_broad_network_only():
    model = nas_zoo.build_network("BNASv2_CLR_v1", "bcnn", C=4, layers=4, enhancement_layers=3)
    assert len(model.enhancement_cells) == len(model.enhancement_outputs) == 3
    assert len(nas_zoo.build_network("BNASv2_CLR_v1", "bcnn", C=4, layers=4).enhancement_cells) == 2  # BNASv2's default
    timm_model = nas_zoo.create_model("b_darts_v1", C=4, layers=4, enhancement_layers=1)
    assert len(timm_model.enhancement_cells) == 1
    with pytest.raises(ValueError, match="enhancement_layers applies to the broad networks .*, not cifar"):
        nas_zoo.build_network("DARTS_V2", "cifar", C=4, layers=5, enhancement_layers=3)


def test_unknown_network_is_named():
    with pytest.raises(ValueError, match="unknown network 'mobile'; expected one of cifar, imagenet"):
        nas_zoo.build_network("DARTS_V2", "mobile")


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    model = nas_zoo.build_network("DARTS_V2", "cifar", C=8, layers=5, drop_path_rate=0.5)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.drop_path_prob = 0.0  # what a schedule sets at epoch 0
    torch.testing.assert_close(model(x), model(x))


def test_auxiliary_head_width_and_training_api():
    model = nas_zoo.build_network("PDARTS", "imagenet", C=8, layers=5, num_classes=4, auxiliary=True)
    assert model.auxiliary_head.features[6].num_features == 768  # P-DARTS keeps the BN after the 2x2 conv
    darts = nas_zoo.build_network("DARTS_V2", "imagenet", C=8, layers=5, num_classes=4, auxiliary=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and m.num_features == 768 for m in darts.auxiliary_head.modules())
    logits, auxiliary = model.forward_train(torch.randn(2, 3, 224, 224))
    assert logits.shape == auxiliary.shape == (2, 4)
    model.reset_classifier(9)
    assert model.auxiliary_head.classifier.out_features == 9


def test_gdas_pools_carry_a_parameter_free_batch_norm():
    gdas = nas_zoo.build_network("DARTS_V2", "cifar", C=8, layers=5, pool_bn=True)
    plain = nas_zoo.build_network("DARTS_V2", "cifar", C=8, layers=5)
    assert sum(p.numel() for p in gdas.parameters()) == sum(p.numel() for p in plain.parameters())
    assert len(gdas.state_dict()) > len(plain.state_dict())  # running statistics


def test_accepts_odd_resolutions():
    model = nas_zoo.build_network("GDAS_V1", "cifar", C=8, layers=5).eval()
    assert model(torch.randn(1, 3, 30, 30)).shape == (1, 10)
