"""mortalnet: learning without backpropagation on hardware nobody can model exactly.

Public API (imported lazily, so `import mortalnet` does no work):

    run, evaluate            run a named experiment / re-evaluate a saved run (api.py)
    evaluate_snapshots       test error of a run's kept snapshots vs training seconds (api.py)
    load_learner             a saved run's trained learner, for analysis (api.py)
    load_mnist, MnistConfig  the data (data/mnist.py)
    create_rule, list_rules  learning rules (rules/)
    list_experiments         named experiments (experiments/)
    fit, TrainingConfig      the shared training loop (training.py)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "run": "mortalnet.api",
    "evaluate": "mortalnet.api",
    "evaluate_snapshots": "mortalnet.api",
    "load_learner": "mortalnet.api",
    "refit_readout": "mortalnet.api",
    "load_mnist": "mortalnet.data.mnist",
    "MnistConfig": "mortalnet.data.mnist",
    "create_rule": "mortalnet.rules",
    "list_rules": "mortalnet.rules",
    "list_experiments": "mortalnet.experiments",
    "get_experiment": "mortalnet.experiments",
    "fit": "mortalnet.training",
    "TrainingConfig": "mortalnet.training",
    "FFConfig": "mortalnet.rules.forward_forward",
    "FFLearner": "mortalnet.rules.forward_forward",
    "OptimizerConfig": "mortalnet.optim",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mortalnet' has no attribute {name!r}")
