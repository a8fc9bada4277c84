"""CIFAR-10 from the standard "python version" batches, read safely (Krizhevsky 2009).

The directory `cifar-10-batches-py/` holds `data_batch_1`..`data_batch_5` and `test_batch`, each a
pickled dict {data: uint8 (10000, 3072) ndarray (red, green, blue planes of 32x32), labels: list
of 10000 ints, batch_label, filenames}. Unpickling can run arbitrary code, so the batches are read
with `safe_pickle`'s unpickler, which resolves only the numpy globals an ndarray needs (dicts,
lists, ints and bytes need none) and refuses everything else; shapes and label ranges are checked.

Sources (`CifarConfig.source`):
  dir        the batches in `path` (the directory itself or its parent);
  download   the usual tarball (cs.toronto.edu, md5-checked) into the cache, then `dir`;
  synthetic  generated 32x32x3 ten-class images of the right shape, for tests and dry runs (not CIFAR!);
  auto       `dir` if `path` holds the batches, else the cache, else `download`.
The six batches must match their published md5s (or a pinned `sha256`); a damaged extraction in
the cache is extracted again from the verified tarball. The last `valid_size` training images are
held out for validation.
"""

from __future__ import annotations

import http.client
import os
import re
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from mortalnet.config import ConfigError
from mortalnet.data.mnist import DataError, MnistData, Split, default_cache_dir, digest_problem, file_digest
from mortalnet.data.safe_pickle import UnsafePickleError, load_numpy_pickle
from mortalnet.runs import atomic_write_bytes

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
TAR_MD5 = "c58f30108f718f92721af3b95e74349a"
DIRNAME = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
BATCH_MD5 = {  # published with the data set (and used by torchvision)
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
PIXELS = 3 * 32 * 32
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class CifarConfig:
    """Where CIFAR-10 comes from and which part of it a run uses."""

    source: Literal["auto", "dir", "download", "synthetic"] = "auto"
    """auto | dir (batches in `path`) | download (the usual tarball) | synthetic (generated, for tests)."""
    path: str = ""
    """Directory holding cifar-10-batches-py/ (or that directory itself)."""
    cache_dir: str = ""
    """Where `download` puts the data; empty = $MORTALNET_CACHE or ~/.cache/mortalnet."""
    sha256: str = ""
    """sha256 of the six batch files read in the order data_batch_1..5, test_batch; empty = they must be the published CIFAR-10 batches (md5-checked). The error for other batches prints their digest."""
    valid_size: int = 5000
    """Last N training images held out for validation (0 = none)."""
    train_subset: int = 0
    """Use only the first N training images (0 = all)."""
    test_subset: int = 0
    """Evaluate on only the first N test images (0 = all 10k)."""

    def __post_init__(self) -> None:
        if self.sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", self.sha256.strip()):
            raise ConfigError(f"sha256 must be 64 hex digits (or empty), got {self.sha256!r}")
        for name in ("valid_size", "train_subset", "test_subset"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0: {'none' if name == 'valid_size' else 'all'}), "
                                  f"got {getattr(self, name)}")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One python-version batch file -> (uint8 images (N, 3072), int64 labels (N,)), validated."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CIFAR-10 batch {path} does not exist")
    try:
        obj = load_numpy_pickle(path.read_bytes())
    except UnsafePickleError as err:
        raise DataError(f"{path}: {err}") from None
    except Exception as err:  # truncated or not a pickle at all
        raise DataError(f"{path} is not a readable CIFAR-10 batch ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}")
    batch = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: a CIFAR-10 batch needs 'data' and 'labels', found {sorted(batch)}")
    data = batch["data"]
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        raise DataError(f"{path}: data must be uint8 (N, {PIXELS}), found "
                        f"{getattr(data, 'dtype', type(data))} {getattr(data, 'shape', '')}")
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"{path}: labels must be N={data.shape[0]} integers in 0..9")
    return data, labels


def batch_digest_problem(where: Path, sha256: str = "") -> str | None:
    """Why the six batches in `where` are not the expected ones (None when they are): the published
    CIFAR-10 md5s, or `sha256` over the six files when it is given (`mnist.digest_problem`)."""
    contents = {name: (where / name).read_bytes() for name in (*TRAIN_FILES, TEST_FILE)}
    return digest_problem(where, contents, BATCH_MD5, sha256, "CIFAR-10 batches")


def find_batches(path: str | Path) -> Path | None:
    """The cifar-10-batches-py directory at or inside `path`, if it holds all six batches."""
    p = Path(path)
    for cand in (p, p / DIRNAME):
        if all((cand / f).is_file() for f in (*TRAIN_FILES, TEST_FILE)):
            return cand
    return None


def download(cache_dir: Path, url: str = URL) -> Path:
    """Fetch the tarball (md5-checked) and extract the six batches into cache_dir/cifar-10-batches-py."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tar_path = cache_dir / "cifar-10-python.tar.gz"
    if not tar_path.exists() or file_digest(tar_path, "md5") != TAR_MD5:
        tmp = tar_path.with_suffix(".part")
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
        except (OSError, http.client.HTTPException) as err:  # HTTPException: e.g. a dropped transfer
            raise DataError(f"could not download CIFAR-10 from {url}: {err}; set data.source=dir and "
                            "data.path to a copy of cifar-10-batches-py") from None
        digest = file_digest(tmp, "md5")
        if digest != TAR_MD5:
            tmp.unlink(missing_ok=True)
            raise DataError(f"{url}: md5 {digest} does not match {TAR_MD5}")
        os.replace(tmp, tar_path)
    wanted = {f"{DIRNAME}/{f}" for f in (*TRAIN_FILES, TEST_FILE)}
    with tarfile.open(tar_path, "r:gz") as tar:
        for member in tar.getmembers():  # only the six expected regular files, never a path outside
            if member.name in wanted and member.isfile():
                data = tar.extractfile(member).read()
                target = cache_dir / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(target, data)  # an interrupted extraction leaves no half batch
    return cache_dir / DIRNAME


def synthetic_cifar(n_train: int = 2000, n_test: int = 500, seed: int = 0) -> tuple[Split, Split]:
    """Generated 32x32x3 ten-class images (class = a colour and a blob position, plus noise): not CIFAR."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0.2, 1.0, size=(10, 3))
    centres = rng.integers(8, 24, size=(10, 2))
    yy, xx = np.mgrid[0:32, 0:32]

    def make(n: int) -> Split:
        y = rng.integers(0, 10, size=n)
        shift = rng.integers(-3, 4, size=(n, 2))
        cy, cx = (centres[y] + shift).T
        blob = np.exp(-((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) / 30.0)
        img = colours[y][:, :, None, None] * blob[:, None] + rng.normal(0, 0.15, size=(n, 3, 32, 32))
        img = np.clip(img * 0.8 + 0.1, 0, 1)
        return Split((img.reshape(n, PIXELS) * 255).astype(np.uint8), y.astype(np.int64))

    return make(n_train), make(n_test)


def load_cifar10(config: CifarConfig = CifarConfig()) -> MnistData:
    """CIFAR-10 as train / validation / test splits (uint8 (N, 3072), channel-major 3x32x32)."""
    if config.source == "synthetic":
        train, test = synthetic_cifar(max(config.train_subset, 1000) + config.valid_size, 500)
        source = "synthetic"
    else:
        where = find_batches(config.path) if config.path and config.source in ("auto", "dir") else None
        if where is None and config.source == "dir":
            raise DataError(f"{config.path or '(data.path is empty)'} does not hold {DIRNAME}/ with "
                            f"{', '.join(TRAIN_FILES)} and {TEST_FILE}")
        cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
        from_cache = where is None
        where = find_batches(cache) if from_cache else where
        problem = batch_digest_problem(where, config.sha256) if where is not None else "not extracted yet"
        if from_cache and problem:  # none yet, or a damaged extraction: (re)extract from the tarball
            where = download(cache)
            problem = batch_digest_problem(where, config.sha256)
        if problem:
            raise DataError(problem)
        parts = [read_batch(where / f) for f in TRAIN_FILES]
        train = Split(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        test = Split(*read_batch(where / TEST_FILE))
        source = str(where)
    n_valid = min(config.valid_size, len(train) - 1)
    valid = Split(train.images[len(train) - n_valid:], train.labels[len(train) - n_valid:]) if n_valid > 0 \
        else Split(train.images[:0], train.labels[:0])
    train = Split(train.images[: len(train) - n_valid], train.labels[: len(train) - n_valid]).take(config.train_subset)
    return MnistData(train, valid, test.take(config.test_subset), source=source)
