"""Named experiments, registered: `list_experiments()`, `get_experiment(name)`, `run(...)`."""

from __future__ import annotations

from mortalnet.registry import Registry

EXPERIMENTS: Registry[type] = Registry(
    "experiment",
    modules=(
        "mortalnet.experiments.ff_supervised",
        "mortalnet.experiments.backprop_mlp",
        "mortalnet.experiments.ff_pipeline",
        "mortalnet.experiments.ff_device",
        "mortalnet.experiments.mortality",
        "mortalnet.experiments.perturbation_variance",
        "mortalnet.experiments.perturbation_mnist",
        "mortalnet.experiments.small_lr_equivalence",
        "mortalnet.experiments.distill_mnist",
        "mortalnet.experiments.community",
        "mortalnet.experiments.mortal_transfer",
        "mortalnet.experiments.ff_jitter",
        "mortalnet.experiments.ff_unsupervised",
        "mortalnet.experiments.ff_recurrent",
        "mortalnet.experiments.ff_sequence",
        "mortalnet.experiments.blackbox",
        "mortalnet.experiments.ff_cifar10",
        "mortalnet.experiments.compression",
        "mortalnet.experiments.label_noise",
        "mortalnet.experiments.fast_weights",
    ),
)
register_experiment = EXPERIMENTS.register


def list_experiments() -> list[str]:
    """Names of all registered experiments."""
    return EXPERIMENTS.names()


def get_experiment(name: str):
    """An instance of experiment `name`."""
    return EXPERIMENTS.get(name)()
