"""Learning rules, registered by name: `list_rules()`, `create_rule(name, ...)`.

Each registered entry is a `Learner` subclass with a `Config` dataclass; constructing it with
`(config, hidden, input_dim, num_classes, seed, device)` gives a trainable network.
"""

from __future__ import annotations

from typing import Any

from mortalnet.registry import Registry

RULES: Registry[type] = Registry(
    "learning rule",
    modules=(
        "mortalnet.rules.forward_forward",
        "mortalnet.rules.backprop",
        "mortalnet.rules.ff_device",
        "mortalnet.rules.weight_perturbation",
        "mortalnet.rules.activity_perturbation",
        "mortalnet.rules.local_losses",
        "mortalnet.transfer.student",
        "mortalnet.transfer.device_student",
        "mortalnet.rules.ff_layerwise",
        "mortalnet.rules.ff_unsupervised",
        "mortalnet.rules.ff_recurrent",
    ),
)
register_rule = RULES.register


def list_rules() -> list[str]:
    """Names of all registered learning rules."""
    return RULES.names()


def create_rule(name: str, config: Any = None, **kwargs: Any):
    """Build the learner of rule `name` (default config unless given); kwargs go to its constructor."""
    cls = RULES.get(name)
    return cls(config if config is not None else cls.Config(), **kwargs)
