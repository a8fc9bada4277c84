"""Smoke tests: every experiment of the rest of the FF paper runs its `fast` preset end to end and
beats chance (10% accuracy for digits) by a clear margin."""

from __future__ import annotations

import json

import pytest
from conftest import needs_mnist

from mortalnet.api import run


def _run(name, tmp_path, overrides=()):
    out = tmp_path / name
    summary = run(name, "fast", seed=0, overrides=list(overrides), out=out, progress=False)
    stored = json.loads((out / "summary.json").read_text())
    assert stored["test_error"] == summary["test_error"]
    for plot in stored.get("plots", []):
        assert (out / "plots" / plot).is_file()
    return stored


@needs_mnist
@pytest.mark.parametrize("name, bound", [
    ("ff-jitter", 0.4),
    ("ff-unsupervised", 0.25),
    ("ff-local-rf", 0.25),
    ("ff-recurrent", 0.25),
])
def test_fast_preset_on_real_mnist_beats_chance(name, bound, tmp_path):
    s = _run(name, tmp_path)
    assert s["test_error"] < bound, s["test_error"]
