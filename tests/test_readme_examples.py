"""The README's own code runs as written (a rule of your own, registered and trained by `fit`)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from conftest import needs_mnist

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(heading: str) -> str:
    """The first ```python block after `heading` in the README."""
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match, f"no python block after {heading!r}"
    return match.group(1)


@needs_mnist
def test_the_writing_a_rule_example_registers_a_rule_that_fit_trains_to_the_error_the_readme_gives(capsys):
    from mortalnet.rules import RULES

    code = readme_block("### Writing a rule")
    module = types.ModuleType("readme_example")  # dataclasses look their class's module up in sys.modules
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, "README.md (Writing a rule)", "exec"), module.__dict__)
        assert "delta" in RULES.names()
        error = module.delta.evaluate(*module.data.test.tensors())["error"]
        assert error == pytest.approx(0.081, abs=0.006)  # the README says 8.1% (seed 0, 5 epochs)
        assert "{'error': 0.08" in capsys.readouterr().out
    finally:
        RULES.unregister("delta")  # the other tests see only the library's rules
        sys.modules.pop(module.__name__, None)
