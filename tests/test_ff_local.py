"""Locally connected layers: equal to a masked dense layer, for every tiling."""

from __future__ import annotations

import pytest
import torch

from mortalnet.nets.local import LocallyConnected2d, default_tile


def receptive_field_mask(c_in: int, c_out: int, side: int, k: int) -> torch.Tensor:
    """(c_in*side*side, c_out*side*side): input (ci, y', x') feeds unit (co, y, x) iff |y-y'|, |x-x'| <= k//2."""
    p = k // 2
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    y, x = yy.flatten(), xx.flatten()
    near = ((y[:, None] - y[None, :]).abs() <= p) & ((x[:, None] - x[None, :]).abs() <= p)  # (in pos, out pos)
    return near[None, :, None, :].expand(c_in, -1, c_out, -1).reshape(c_in * side * side, c_out * side * side).float()


@pytest.mark.parametrize("tile", [(1, 1), (2, 7), (4, 4), (14, 14), (28, 28)])
def test_locally_connected_equals_a_masked_dense_layer(tile):
    g = torch.Generator().manual_seed(0)
    c_in, c_out, k = 2, 3, 5
    layer = LocallyConnected2d((c_in, 28, 28), c_out, k, tile=tile, generator=g)
    mask = receptive_field_mask(c_in, c_out, 28, k)
    dense = torch.randn(mask.shape, generator=g) * mask
    with torch.no_grad():
        layer.weight.copy_(layer.from_dense(dense))
        layer.bias.copy_(torch.randn(layer.fan_out, generator=g))
    torch.testing.assert_close(layer.dense_weight(), dense)
    h = torch.randn(6, c_in * 784, generator=g)
    torch.testing.assert_close(layer.total_input(h), h @ dense + layer.bias, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer(h), torch.relu(h @ dense + layer.bias), rtol=1e-4, atol=1e-4)
    signal = torch.randn(6, layer.fan_out, generator=g)
    gw, gb = layer.local_grads(h, signal)
    torch.testing.assert_close(layer.to_dense(gw), (h.T @ signal) * mask, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gb, signal.sum(0))


def test_units_see_only_their_receptive_field_and_init_scale():
    layer = LocallyConnected2d((1, 28, 28), 3, 11, generator=torch.Generator().manual_seed(1))
    w = layer.dense_weight()
    mask = receptive_field_mask(1, 3, 28, 11)
    assert (w[mask == 0] == 0).all()
    assert (w[mask == 1] != 0).float().mean() > 0.99
    assert (w != 0).sum(0).max() == 121 and layer.fan_in == 121 and layer.fan_out == 2352
    assert abs(w[mask == 1].std().item() - 121**-0.5) < 0.01
    assert layer.macs_per_example() == int(mask.sum()) < 2352 * 121  # in-bounds connections only


def test_masked_weights_stay_zero_under_training_updates():
    from mortalnet.optim import OptimizerConfig, make_optimizer

    layer = LocallyConnected2d((1, 28, 28), 2, 7, tile=(4, 4), generator=torch.Generator().manual_seed(2))
    opt = make_optimizer(OptimizerConfig(weight_decay=0.001), [layer.weight], [layer.bias])
    zero = layer.weight == 0
    for _ in range(3):
        h = torch.rand(8, 784)
        gw, gb = layer.local_grads(h, torch.randn(8, layer.fan_out))
        layer.weight.grad, layer.bias.grad = gw, gb
        opt.step()
    assert (layer.weight[zero] == 0).all()


def test_bad_shapes_are_refused_and_default_tiles_divide_the_map():
    with pytest.raises(ValueError, match="odd"):
        LocallyConnected2d((1, 28, 28), 3, 4)
    with pytest.raises(ValueError, match="must divide"):
        LocallyConnected2d((1, 28, 28), 3, 5, tile=(5, 5))
    for side in (28, 32):
        th, tw = default_tile(side, side, 11, 3)
        assert side % th == 0 and side % tw == 0
