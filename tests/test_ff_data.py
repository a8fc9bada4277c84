"""CIFAR-10 batches read safely from generated files; the character corpus for ff-sequence."""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from mortalnet.data.cifar import CifarConfig, load_cifar10, read_batch
from mortalnet.data.mnist import DataError
from mortalnet.data.text import ALPHABET, TextConfig, TextError, decode, encode, load_corpus, normalize, windows


def write_batches(root, n=20, protocol=2, seed=0):
    """A cifar-10-batches-py directory of generated batches (the standard dict layout)."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
        }
        (d / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return d


def batches_sha256(d):
    """What data.sha256 pins for CIFAR batches: sha256 over the six files, data_batch_1..5 then test_batch."""
    h = hashlib.sha256()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        h.update((d / name).read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_batches_load_from_a_directory(tmp_path, protocol):
    d = write_batches(tmp_path, protocol=protocol)
    with pytest.raises(DataError, match="differ from the published CIFAR-10 batches.*data.sha256="):
        load_cifar10(CifarConfig(source="dir", path=str(tmp_path)))  # generated, not CIFAR-10
    pin = batches_sha256(d)
    data = load_cifar10(CifarConfig(source="dir", path=str(tmp_path), valid_size=10, sha256=pin))
    assert data.train.images.shape == (90, 3072) and data.valid.images.shape == (10, 3072)
    assert data.test.images.shape == (20, 3072) and data.train.images.dtype == np.uint8
    x, y = data.test.tensors()
    raw = pickle.loads((d / "test_batch").read_bytes())
    assert torch.equal(y, torch.tensor(raw[b"labels"]))
    assert torch.allclose(x, torch.from_numpy(raw[b"data"]).float() / 255)
    # the directory itself works too
    assert len(load_cifar10(CifarConfig(source="dir", path=str(d), valid_size=0, sha256=pin)).train) == 100
    blob = bytearray((d / "data_batch_2").read_bytes())
    blob[-40] ^= 1  # one pixel: still a well-formed batch
    (d / "data_batch_2").write_bytes(bytes(blob))
    with pytest.raises(DataError, match="tampered"):
        load_cifar10(CifarConfig(source="dir", path=str(d), sha256=pin))


def test_a_damaged_cifar_extraction_is_extracted_again(tmp_path, monkeypatch):
    import mortalnet.data.cifar as C

    d = write_batches(tmp_path / "src")
    cache = tmp_path / "cache"
    cache.mkdir()
    with tarfile.open(cache / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(d, arcname="cifar-10-batches-py")
    monkeypatch.setattr(C, "TAR_MD5", hashlib.md5((cache / "cifar-10-python.tar.gz").read_bytes()).hexdigest())
    monkeypatch.setattr(C, "BATCH_MD5", {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in d.iterdir()})
    cfg = CifarConfig(source="auto", cache_dir=str(cache), valid_size=0)
    first = load_cifar10(cfg)  # extracted from the (verified) tarball
    batch = cache / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])  # as an interrupted copy would leave it
    again = load_cifar10(cfg)
    np.testing.assert_array_equal(first.train.images, again.train.images)
    assert batch.read_bytes() == (d / "data_batch_3").read_bytes()


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_loader_refuses_code_and_bad_batches(tmp_path):
    bad = tmp_path / "evil"
    bad.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="refusing to unpickle"):
        read_batch(bad)
    shape = tmp_path / "shape"
    shape.write_bytes(pickle.dumps({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}, protocol=2))
    with pytest.raises(DataError, match="uint8"):
        read_batch(shape)
    labels = tmp_path / "labels"
    labels.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 11]}, protocol=2))
    with pytest.raises(DataError, match="0..9"):
        read_batch(labels)
    trunc = tmp_path / "trunc"
    trunc.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=2)[:500])
    with pytest.raises(DataError, match="not a readable"):
        read_batch(trunc)
    with pytest.raises(DataError, match="does not hold"):
        load_cifar10(CifarConfig(source="dir", path=str(tmp_path)))


def test_synthetic_cifar_has_the_right_shape():
    data = load_cifar10(CifarConfig(source="synthetic", train_subset=300, valid_size=100, test_subset=50))
    assert data.train.images.shape == (300, 3072) and len(data.valid) == 100 and len(data.test) == 50


def test_text_is_normalized_to_the_30_symbols_and_cut_into_strings(tmp_path):
    assert len(ALPHABET) == 30
    assert normalize('The "Wolf"\r\n said: Hi!  -- Who?') == "the wolf said; hi. who."
    assert decode(encode("a b,c;d.")) == "a b,c;d."
    with pytest.raises(TextError, match="outside"):
        encode("A")
    path = tmp_path / "t.txt"
    path.write_text("abc " * 300)  # 1200 characters -> 11 strings of 100 (the last space is stripped)
    corpus = load_corpus(TextConfig(path=str(path), train_strings=6, valid_strings=2))
    assert corpus.train.shape == (6, 100) and corpus.valid.shape == (2, 100) and corpus.test.shape == (3, 100)
    with pytest.raises(TextError, match="need 248"):
        load_corpus(TextConfig(path=str(path)))
    with pytest.raises(TextError, match="does not exist"):
        load_corpus(TextConfig(path=str(tmp_path / "missing.txt")))
    builtin = load_corpus(TextConfig(source="builtin", train_strings=20, valid_strings=4))
    assert builtin.train.shape == (20, 100) and len(builtin.test) == 6


def test_windows_are_the_previous_ten_characters_and_the_next():
    s = encode("abcdefghijklmnopqrstuvwxyz" * 4)[:100][None]
    ctx, nxt = windows(s, 10)
    assert ctx.shape == (90, 10) and nxt.shape == (90,)
    assert decode(ctx[0]) == "abcdefghij" and decode([nxt[0]]) == "k"
    assert decode(ctx[89]) == decode(s[0, 89:99]) and nxt[89] == s[0, 99]


def test_aesop_file_gives_the_papers_strings():
    path = "/work/shared/data/aesop.txt"
    if not os.path.exists(path):
        pytest.skip("aesop.txt not on this machine")
    corpus = load_corpus(TextConfig(path=path))
    assert corpus.train.shape == (248, 100) and len(corpus.valid) == 25 and len(corpus.test) > 0
