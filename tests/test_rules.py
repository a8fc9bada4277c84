"""Every registered learning rule: shapes, finite values, determinism, and it learns a toy problem."""

from __future__ import annotations

import pytest
import torch

from mortalnet.rules import create_rule, list_rules
from mortalnet.training import TrainingConfig, fit

RULES = list_rules()


def make(name, seed=0):
    from mortalnet.rules import RULES

    config = RULES.get(name).quick_config()
    return create_rule(name, config, hidden=(48, 48), input_dim=784, num_classes=10, seed=seed)


def test_registry_lists_the_core_rules():
    assert {"forward-forward", "backprop"} <= set(RULES)


@pytest.mark.parametrize("name", RULES)
def test_rule_learns_the_toy_problem_deterministically(name, tiny_data):
    cfg = TrainingConfig(epochs=3, batch_size=50, progress=False, tensorboard=False, schedule="constant")
    train, valid = tiny_data.train.tensors(), tiny_data.valid.tensors()
    a, b = make(name), make(name)
    before = a.evaluate(*valid)
    assert a.primary_metric in before and all(0.0 <= v <= 1.0 for v in before.values())
    initial = {k: v.detach().clone() for k, v in a.named_parameters() if v.dim() == 2 and v.numel()}
    assert initial, f"{name}: no weight matrix in its state"
    result = fit(a, train, None, cfg, seed=0)
    fit(b, train, None, cfg, seed=0)
    after = a.evaluate(*valid)
    assert after[a.primary_metric] < 0.5 * before[a.primary_metric], (before, after)
    assert after[a.primary_metric] < 0.4
    # the toy problem is nearly linearly separable, so the error bound alone would pass a rule whose
    # lower layers never learn (checked: activity perturbation with layer 1 frozen reaches 0.18)
    now = dict(a.named_parameters())
    for k, w0 in initial.items():
        moved = ((now[k] - w0).norm() / w0.norm().clamp_min(1e-12)).item()
        assert moved > 1e-3, f"{name}: {k} did not learn (relative change {moved:.1e})"
    for row in result.history:  # finite metrics
        assert all(v == v and abs(v) != float("inf") for v in row.values() if isinstance(v, float))
    for (k, va), vb in zip(a.state_tensors().items(), b.state_tensors().values()):
        assert torch.equal(va, vb), f"{name}: {k} differs between two runs with the same seed"


@pytest.mark.parametrize("name", RULES)
def test_different_seeds_give_different_networks(name):
    a, b = make(name, 0), make(name, 1)
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values())
               if x.is_floating_point() and x.abs().sum() > 0)


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("hidden", [(16, 0), (16, -3), (16, 2.5), (16, True)])
def test_a_hidden_width_below_one_is_refused_when_the_learner_is_built(name, hidden):
    from mortalnet.config import ConfigError
    from mortalnet.rules import RULES as REGISTRY

    with pytest.raises(ConfigError, match=r"hidden widths must be positive integers"):
        create_rule(name, REGISTRY.get(name).quick_config(), hidden=hidden, input_dim=784, num_classes=10)


@pytest.mark.parametrize("name", RULES)
def test_hidden_widths_may_be_numpy_integers(name):
    import numpy as np
    from mortalnet.rules import RULES as REGISTRY

    learner = create_rule(name, REGISTRY.get(name).quick_config(), hidden=(np.int64(16), np.int32(16)), input_dim=784,
                          num_classes=10)
    assert learner.evaluate(torch.rand(4, 784), torch.arange(4))[learner.primary_metric] <= 1.0
