"""The CNN's shapes, pooled and unpooled, and its messages for sizes that cannot work."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from src.errors import UserInputError
from src.models.loading import load_classifier
from src.models.networks import cnn_network
from src.train import train
from tests.conftest import compose_config, tiny_run_overrides


def feature_sides(net: nn.Sequential) -> list[int]:
    """The image side after each conv block."""
    sides, x = [], torch.zeros(2, 1, 28, 28)
    for block in net:
        x = block(x)
        if isinstance(block, nn.Sequential):
            sides.append(x.shape[-1])
    return sides


def test_pooled_blocks_halve_the_image_and_unpooled_ones_shrink_it_by_the_kernel():
    pooled = cnn_network([8, 16, 32], [5, 3, 3], 1, 32, 0.0, True)
    unpooled = cnn_network([8, 16, 24, 32, 40], 5, 1, 32, 0.0, True, pool=False)
    assert feature_sides(pooled) == [14, 7, 3]
    assert feature_sides(unpooled) == [24, 20, 16, 12, 8]  # An et al. 2020's M5: 5×5 convs, no padding
    assert not any(isinstance(layer, nn.MaxPool2d) for layer in unpooled.modules())
    assert unpooled(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    two_convs = cnn_network([8, 16], 3, 2, 32, 0.0, True, pool=False)
    assert feature_sides(two_convs) == [24, 20]  # each of the two convs per block takes 2 pixels


def test_sizes_that_cannot_work_are_named():
    with pytest.raises(UserInputError, match=r"^model\.channels=\[8, 16, 32\] makes 3 blocks, but model\.kernel_size=\[5, 3\] "
                                             r"gives 2 sizes: give one size per block, or one for all \(model\.kernel_size=3\)\.$"):
        cnn_network([8, 16, 32], [5, 3], 1, 32, 0.0, True)
    with pytest.raises(UserInputError, match=r"^model\.channels=\[8\] makes 1 block, but model\.kernel_size=\[5, 3\] gives 2"):
        cnn_network([8], [5, 3], 1, 32, 0.0, True)  # more sizes than blocks: not silently cut
    with pytest.raises(UserInputError, match=r"^model\.channels=\[\] is invalid: the CNN needs at least one block"):
        cnn_network([], 3, 1, 32, 0.0, True)
    with pytest.raises(UserInputError, match=r"to nothing \(model.pool=false\): use fewer blocks or smaller kernels\.$"):
        cnn_network([8] * 7, 5, 1, 32, 0.0, True, pool=False)
    with pytest.raises(UserInputError, match=r"model.channels=\[8, 8, 8, 8, 8\] .* \(model.pool=true\): use fewer blocks\.$"):
        cnn_network([8] * 5, 3, 1, 32, 0.0, True)  # 28 -> 14 -> 7 -> 3 -> 1 -> 0
    # Torch would fail later with its own message, or never: a layer of width 0 trains as a constant.
    sizes = "is invalid: sizes and counts must be whole numbers >= 1."
    for message, arguments in (
        (f"model.channels=[8, 0] {sizes}", ([8, 0], 3, 1, 32)),
        ("model.channels=8 is invalid: it must be a list, e.g. model.channels=[64,128].", (8, 3, 1, 32)),
        (f"model.kernel_size=0 {sizes}", ([8], 0, 1, 32)),
        ("model.kernel_size=3.0 is invalid: it must be a whole number >= 1, or a list", ([8], 3.0, 1, 32)),
        ("model.kernel_size=three is invalid: it must be a list, e.g. model.kernel_size=[5,3,3]", ([8], "three", 1, 32)),
        (f"model.kernel_size=[3, 2.5] {sizes}", ([8, 16], [3, 2.5], 1, 32)),
        (f"model.convs_per_block=0 {sizes}", ([8], 3, 0, 32)),
        (f"model.hidden_size=0 {sizes}", ([8], 3, 1, 0)),
        (f"model.hidden_size=true {sizes}", ([8], 3, 1, True)),
    ):
        with pytest.raises(UserInputError, match="^" + re.escape(message)):
            cnn_network(*arguments, 0.0, True)


def test_even_kernels_work_with_pooling():
    """A padded even kernel grows the image by one pixel: the fully connected layer must be sized for that."""
    net = cnn_network([8, 16, 32], 4, 1, 32, 0.0, True)
    assert feature_sides(net) == [14, 7, 4]  # 28+1 -> 14, 14+1 -> 7, 7+1 -> 4
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert cnn_network([8, 16], [2, 4], 2, 32, 0.0, True)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_an_unpooled_cnn_trains_from_the_command_line_settings(tmp_path, synthetic_data_dir):
    overrides = ["model=cnn", "model.pool=false", "model.channels=[4,8]", "model.kernel_size=5", "model.hidden_size=16"]
    metrics = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), *overrides]))
    assert metrics["status"] == "ok" and metrics["test/acc"] > 0.5
    model, _ = load_classifier(metrics["best_model_path"])  # the checkpoint rebuilds the unpooled network
    assert feature_sides(model.net) == [24, 20] and model.hparams.pool is False


def test_the_mlp_drops_out_as_much_as_model_dropout_says():
    from src.models.networks import mlp_network

    dropouts = [layer.p for layer in mlp_network([32, 16], 0.1, True) if isinstance(layer, nn.Dropout)]
    assert dropouts == [0.1, 0.1]


def test_conv_dropout_follows_every_block_but_the_last_and_leaves_the_weights_names_alone():
    with_dropout = cnn_network([8, 16, 32], [5, 3, 3], 1, 32, 0.3, True, conv_dropout=0.2)
    blocks = [block for block in with_dropout if isinstance(block, nn.Sequential)]
    assert [type(block[-1]) for block in blocks] == [nn.Dropout, nn.Dropout, nn.MaxPool2d]
    assert [block[-1].p for block in blocks[:2]] == [0.2, 0.2]
    without = cnn_network([8, 16, 32], [5, 3, 3], 1, 32, 0.3, True)
    assert not any(isinstance(layer, nn.Dropout) for block in without[:3] for layer in block)
    # Dropout holds no weights: checkpoints from before the setting load into either network.
    assert with_dropout.state_dict().keys() == without.state_dict().keys()
    images = torch.randn(4, 1, 28, 28)
    assert (with_dropout[:2](images) == 0).float().mean() > (without[:2](images) == 0).float().mean() + 0.1  # training
    without.load_state_dict(with_dropout.state_dict())  # the batch-norm statistics that training pass updated, too
    with_dropout.eval(), without.eval()
    assert torch.equal(with_dropout(images), without(images))  # in evaluation, dropout passes everything on


def test_conv_dropout_is_set_from_the_command_line_and_kept_in_the_checkpoint(tmp_path, synthetic_data_dir):
    from src.models.loading import load_network

    overrides = ["model=cnn", "model.channels=[4,8]", "model.kernel_size=3", "model.hidden_size=16",
                 "model.conv_dropout=0.2"]
    metrics = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), *overrides]))
    assert metrics["status"] == "ok"
    network, checkpoint = load_network(metrics["best_model_path"])  # rebuilt without Lightning, from the settings
    assert checkpoint["hyper_parameters"]["conv_dropout"] == 0.2
    assert isinstance(network[0][-1], nn.Dropout) and network[0][-1].p == 0.2
    with pytest.raises(UserInputError, match=r"model.conv_dropout=1.0 is invalid: it must be a number in \[0, 1\)"):
        train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "refused"), *overrides,
                              "model.conv_dropout=1.0"]))
