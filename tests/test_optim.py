"""The shared optimizers and schedules."""

from __future__ import annotations

import pytest
import torch

from mortalnet.optim import SmoothedSGD, schedule_factor


def test_smoothed_sgd_is_ffnew_update():
    torch.manual_seed(0)
    w0 = torch.randn(5, 3)
    p = torch.nn.Parameter(w0.clone())
    opt = SmoothedSGD([{"params": [p], "weight_cost": 0.001}], lr=0.01, smoothing=0.9)
    smoothed = torch.zeros_like(w0)
    w = w0.clone()
    for _ in range(4):
        grad_ascent = torch.randn(5, 3)  # ffnew.m's dC/dw (ascent)
        p.grad = -grad_ascent
        opt.step()
        smoothed = 0.9 * smoothed + 0.1 * grad_ascent
        w = w + 0.01 * (smoothed - 0.001 * w)
    torch.testing.assert_close(p.data, w)


@pytest.mark.parametrize("settings, message", [({"lr": -0.01}, "learning rate must be >= 0"),
                                               ({"lr": float("nan")}, "learning rate must be >= 0"),
                                               ({"lr": 0.01, "weight_cost": -1e-3}, "weight cost must be >= 0"),
                                               ({"lr": 0.01, "smoothing": 1.0}, r"smoothing must be in \[0, 1\)")])
def test_smoothed_sgd_refuses_settings_that_would_climb_the_loss(settings, message):
    p = torch.nn.Parameter(torch.zeros(2))
    weight_cost = settings.pop("weight_cost", 0.0)
    with pytest.raises(ValueError, match=message):
        SmoothedSGD([{"params": [p], "weight_cost": weight_cost}], **settings)
    if weight_cost:  # the default weight cost of every group is checked too
        with pytest.raises(ValueError, match=message):
            SmoothedSGD([p], weight_cost=weight_cost, **settings)


def test_half_then_linear_matches_ffnew():
    E = 10
    assert [schedule_factor("half-then-linear", e, E) for e in range(1, 6)] == [1.0] * 5
    assert schedule_factor("half-then-linear", 6, E) == pytest.approx((1 + 2 * 4) / 10)
    assert schedule_factor("half-then-linear", 10, E) == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["constant", "half-then-linear", "linear", "cosine"])
def test_schedules_start_at_one_and_never_increase(name):
    vals = [schedule_factor(name, e, 20) for e in range(1, 21)]
    assert vals[0] == 1.0
    assert all(b <= a + 1e-12 for a, b in zip(vals, vals[1:]))
    assert vals[-1] > 0
