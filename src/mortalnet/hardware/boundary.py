"""Checks that a learner stays on its side of the device boundary (for tests of any rule).

    from mortalnet.hardware.boundary import assert_no_hidden_state
    assert_no_hidden_state(learner)       # raises AssertionError naming the path to a hidden tensor

`reachable_tensors` walks an object graph the way a learner could reach things through its own
attributes: instance `__dict__`s and `__slots__`, lists, tuples, sets, dicts (keys and values),
and tensors; it does not follow modules, classes or functions (the private physics module is
reachable from anywhere through `import`; what matters is what the learner *holds*).
"""

from __future__ import annotations

import types
from typing import Any, Iterator

import torch

_SKIP = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.MethodType, str, bytes,
         int, float, bool, complex, type(None))


def reachable_tensors(root: Any, max_objects: int = 1_000_000) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (path, tensor) for every tensor reachable from `root` through object attributes."""
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("root", root)]
    while stack:
        path, obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _SKIP):
            continue
        seen.add(id(obj))
        if len(seen) > max_objects:
            raise RuntimeError(f"more than {max_objects} objects reachable from the root; is it a learner?")
        if isinstance(obj, torch.Tensor):
            yield path, obj
            if obj.grad is not None:
                stack.append((path + ".grad", obj.grad))
            continue
        if isinstance(obj, dict):
            for k, v in obj.items():
                stack.append((f"{path}[{k!r}]", v))
                stack.append((f"{path}.key({k!r})", k))
            continue
        if isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(obj))
            continue
        d = getattr(obj, "__dict__", None)
        if isinstance(d, dict):
            stack.extend((f"{path}.{k}", v) for k, v in d.items())
        for slot in getattr(type(obj), "__slots__", ()):
            if isinstance(slot, str) and hasattr(obj, slot):
                stack.append((f"{path}.{slot}", getattr(obj, slot)))


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


def hidden_storages() -> dict[tuple[str, int], str]:
    """Storage keys of every hidden tensor of every live device -> a description."""
    from mortalnet.hardware import _physics

    out = {}
    for token, state in list(_physics._STORE.items()):
        for li, layer in enumerate(state.layers):
            for t in layer.hidden_tensors():
                if t.numel():
                    out[_storage_key(t)] = f"{state.describe()} layer {li}"
    return out


def assert_no_hidden_state(root: Any) -> int:
    """Raise AssertionError if `root` can reach a tensor that shares storage with any device's
    hidden physical state; return the number of tensors checked."""
    hidden = hidden_storages()
    n = 0
    for path, t in reachable_tensors(root):
        n += 1
        if t.numel() and _storage_key(t) in hidden:
            raise AssertionError(f"{path} shares memory with the hidden state of {hidden[_storage_key(t)]}")
    return n
