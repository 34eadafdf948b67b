"""Tests of ownmark.data: loaders, registry and downloads, on tiny data made in tmp_path."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import pickle
import re
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from ownmark.data import (
    DATASET_DESCRIPTIONS,
    DataSplits,
    list_datasets,
    load_dataset,
)
from ownmark.data.cifar import RestrictedUnpickler, load_cifar10, load_cifar100
from ownmark.data.download import DOWNLOADS, RemoteDataset, RemoteFile, download_dataset
from ownmark.data.embedded import load_builtin_digits
from ownmark.data.folder import load_image_folder
from ownmark.data.mnist import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, load_mnist
from ownmark.errors import ConfigError, DataError

# ---------------------------------------------------------------------------------------------
# MNIST / IDX


def write_idx(path: Path, magic: int, array: np.ndarray, gz: bool) -> Path:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def make_mnist(root: Path, gz: bool, n_train: int = 12, n_test: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    write_idx(root / "train-images-idx3-ubyte", IDX_IMAGES_MAGIC, arrays["train_x"], gz)
    write_idx(root / "train-labels-idx1-ubyte", IDX_LABELS_MAGIC, arrays["train_y"], gz)
    write_idx(root / "t10k-images-idx3-ubyte", IDX_IMAGES_MAGIC, arrays["test_x"], gz)
    write_idx(root / "t10k-labels-idx1-ubyte", IDX_LABELS_MAGIC, arrays["test_y"], gz)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_round_trip(tmp_path: Path, gz: bool) -> None:
    arrays = make_mnist(tmp_path, gz)
    splits = load_mnist(tmp_path)
    assert splits.train.images.shape == (12, 1, 28, 28)
    assert splits.test.images.shape == (6, 1, 28, 28)
    assert splits.train.images.dtype == torch.uint8
    assert splits.train.labels.dtype == torch.int64
    assert np.array_equal(splits.train.images[:, 0].numpy(), arrays["train_x"])
    assert np.array_equal(splits.train.labels.numpy(), arrays["train_y"])
    assert np.array_equal(splits.test.images[:, 0].numpy(), arrays["test_x"])
    assert np.array_equal(splits.test.labels.numpy(), arrays["test_y"])
    assert splits.train.classes == tuple("0123456789")


def test_mnist_missing_file_names_it(tmp_path: Path) -> None:
    make_mnist(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\(\.gz\)") as info:
        load_mnist(tmp_path)
    assert "ownmark data download mnist" in str(info.value)
    assert "\n" not in str(info.value)


def test_mnist_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="MNIST folder not found"):
        load_mnist(tmp_path / "nope")


def test_mnist_path_to_a_file_points_to_a_folder(tmp_path: Path) -> None:
    """A tarball (present or not) is CIFAR's format: no download 'into' the archive's name."""
    tarball = tmp_path / "X.tar.gz"
    tarball.write_bytes(b"")
    for path in (tarball, tmp_path / "missing.tar.gz"):
        with pytest.raises(DataError, match="CIFAR's format") as info:
            load_mnist(path)
        message = str(info.value)
        assert f"--to {tmp_path / 'mnist'}" in message, message
        assert f"--to {path}" not in message
        assert "\n" not in message
    make_mnist(tmp_path, gz=True)
    with pytest.raises(DataError, match="one of its IDX files") as info:
        load_mnist(tmp_path / "t10k-images-idx3-ubyte.gz")
    assert f"--data-path {tmp_path}" in str(info.value)


def test_mnist_wrong_magic(tmp_path: Path) -> None:
    make_mnist(tmp_path, gz=False)
    # A label file where an image file should be: magic 0x801 instead of 0x803.
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, IDX_LABELS_MAGIC, np.zeros(12, np.uint8), gz=False)
    with pytest.raises(DataError, match=r"corrupt: .*train-images-idx3-ubyte .*magic"):
        load_mnist(tmp_path)


def test_mnist_truncated_raw(tmp_path: Path) -> None:
    make_mnist(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"corrupt: .*t10k-images-idx3-ubyte"):
        load_mnist(tmp_path)


def test_mnist_truncated_gzip(tmp_path: Path) -> None:
    make_mnist(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match=r"corrupt.*train-images-idx3-ubyte\.gz"):
        load_mnist(tmp_path)


def test_mnist_not_gzip(tmp_path: Path) -> None:
    make_mnist(tmp_path, gz=True)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match=r"corrupt.*train-labels-idx1-ubyte\.gz"):
        load_mnist(tmp_path)


def test_mnist_count_mismatch(tmp_path: Path) -> None:
    make_mnist(tmp_path, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte", IDX_LABELS_MAGIC, np.zeros(11, np.uint8), True)
    with pytest.raises(DataError, match=r"12 images but .* 11 labels"):
        load_mnist(tmp_path)


def test_mnist_prefers_existing_variant(tmp_path: Path) -> None:
    # Raw train files, gz test files: each is found where it is.
    arrays = make_mnist(tmp_path, gz=False)
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        raw = tmp_path / stem
        (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(raw.read_bytes()))
        raw.unlink()
    splits = load_mnist(tmp_path)
    assert np.array_equal(splits.test.labels.numpy(), arrays["test_y"])


# ---------------------------------------------------------------------------------------------
# CIFAR


def _key(name: str, bytes_keys: bool) -> str | bytes:
    return name.encode() if bytes_keys else name


def _batch(
    n: int, label_key: str, num_classes: int, seed: int, bytes_keys: bool, filenames: bool
) -> tuple[dict[Any, Any], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n)
    batch: dict[Any, Any] = {
        _key("batch_label", bytes_keys): b"testing batch",
        _key("data", bytes_keys): data,
        _key(label_key, bytes_keys): [int(v) for v in labels],
    }
    if filenames:
        batch[_key("filenames", bytes_keys)] = [f"img_{i}.png".encode() for i in range(n)]
    return batch, data, labels


def make_cifar10(
    parent: Path, bytes_keys: bool = True, filenames: bool = True
) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship"]
    names.append("truck")
    meta = {
        _key("label_names", bytes_keys): [n.encode() if bytes_keys else n for n in names],
        _key("num_vis", bytes_keys): 3072,
    }
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    train_x, train_y = [], []
    for i in range(1, 6):
        batch, x, y = _batch(3, "labels", 10, i, bytes_keys, filenames)
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
        train_x.append(x)
        train_y.append(y)
    batch, test_x, test_y = _batch(4, "labels", 10, 99, bytes_keys, filenames)
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    return folder, np.concatenate(train_x), np.concatenate(train_y), test_x, test_y


def make_tarball(folder: Path, tar_path: Path) -> Path:
    with tarfile.open(tar_path, "w:gz") as archive:
        archive.add(folder, arcname=folder.name)
    return tar_path


@pytest.mark.parametrize("bytes_keys", [True, False])
@pytest.mark.parametrize("filenames", [True, False])
def test_cifar10_folder(tmp_path: Path, bytes_keys: bool, filenames: bool) -> None:
    folder, train_x, train_y, test_x, test_y = make_cifar10(tmp_path, bytes_keys, filenames)
    for path in (folder, tmp_path):  # the folder itself, or its parent
        splits = load_cifar10(path)
        assert splits.train.images.shape == (15, 3, 32, 32)
        assert splits.test.images.shape == (4, 3, 32, 32)
        assert splits.train.classes[0] == "airplane"
        assert splits.train.classes[9] == "truck"
        assert np.array_equal(splits.train.labels.numpy(), train_y)
        assert np.array_equal(splits.test.labels.numpy(), test_y)
        assert np.array_equal(splits.train.images.reshape(15, -1).numpy(), train_x)
        assert np.array_equal(splits.test.images.reshape(4, -1).numpy(), test_x)


def test_cifar_pixel_layout(tmp_path: Path) -> None:
    folder, train_x, *_ = make_cifar10(tmp_path)
    splits = load_cifar10(folder)
    image = splits.train.images[0]
    # Row layout: 1024 red, 1024 green, 1024 blue, each plane row-major 32x32.
    for c, h, w in [(0, 0, 0), (1, 5, 7), (2, 31, 30), (0, 31, 0), (2, 0, 31)]:
        assert int(image[c, h, w]) == int(train_x[0, c * 1024 + h * 32 + w])


def test_cifar10_tarball(tmp_path: Path) -> None:
    folder, train_x, train_y, _, test_y = make_cifar10(tmp_path / "src", filenames=False)
    tar_path = make_tarball(folder, tmp_path / "cifar-10-python.tar.gz")
    splits = load_cifar10(tar_path)
    assert np.array_equal(splits.train.images.reshape(15, -1).numpy(), train_x)
    assert np.array_equal(splits.test.labels.numpy(), test_y)
    assert not (tmp_path / "cifar-10-batches-py").exists()  # read in place, not extracted
    # A folder holding only the downloaded tarball works too.
    only = tmp_path / "downloads"
    only.mkdir()
    (tmp_path / "cifar-10-python.tar.gz").rename(only / "cifar-10-python.tar.gz")
    assert np.array_equal(load_cifar10(only).train.labels.numpy(), train_y)


def test_cifar10_missing_batch(tmp_path: Path) -> None:
    folder, *_ = make_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"not found: .*data_batch_3"):
        load_cifar10(folder)
    tar_path = make_tarball(folder, tmp_path / "c.tar.gz")
    with pytest.raises(DataError, match=r"not found: cifar-10-batches-py/data_batch_3 in .*c\.tar"):
        load_cifar10(tar_path)


def test_cifar10_nothing_there(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="CIFAR-10 data not found") as info:
        load_cifar10(tmp_path)
    assert "ownmark data download cifar10" in str(info.value)


def test_cifar10_corrupt_files(tmp_path: Path) -> None:
    folder, *_ = make_cifar10(tmp_path)
    batch = folder / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:200])
    with pytest.raises(DataError, match=r"corrupt: .*data_batch_2"):
        load_cifar10(folder)
    truncated = tmp_path / "t.tar.gz"
    make_tarball(folder, tmp_path / "full.tar.gz")
    truncated.write_bytes((tmp_path / "full.tar.gz").read_bytes()[:300])
    with pytest.raises(DataError, match=r"corrupt.*t\.tar\.gz"):
        load_cifar10(truncated)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_cifar_forbidden_global_is_not_executed(tmp_path: Path) -> None:
    folder, *_ = make_cifar10(tmp_path / "data")
    marker = tmp_path / "pwned"
    evil = {b"data": _Evil(marker), b"labels": [0]}
    (folder / "data_batch_1").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(DataError, match=r"refused: .*data_batch_1 references .*system"):
        load_cifar10(folder)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"cbuiltins\neval\n(S'1+1'\ntR.",
        b"c_codecs\nencode\n(Vabc\nVrot13\ntR.",  # allowed function, forbidden codec
        b"cnumpy\nload\n(S'x'\ntR.",
    ],
)
def test_restricted_unpickler_refuses(payload: bytes) -> None:
    with pytest.raises(pickle.UnpicklingError):
        RestrictedUnpickler(io.BytesIO(payload), encoding="latin1").load()


def make_cifar100(parent: Path) -> tuple[Path, dict[str, np.ndarray]]:
    folder = parent / "cifar-100-python"
    folder.mkdir(parents=True)
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}" for i in range(20)],  # str works too
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    out: dict[str, np.ndarray] = {}
    for split, n in (("train", 7), ("test", 5)):
        rng = np.random.default_rng(len(split))
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n)
        coarse = fine // 5
        batch = {
            b"data": data,
            b"fine_labels": [int(v) for v in fine],
            b"coarse_labels": [int(v) for v in coarse],
        }
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
        out[f"{split}_x"], out[f"{split}_fine"], out[f"{split}_coarse"] = data, fine, coarse
    return folder, out


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    folder, arrays = make_cifar100(tmp_path / "src")
    fine = load_cifar100(folder)
    assert fine.num_classes == 100
    assert fine.train.classes[42] == "fine42"
    assert np.array_equal(fine.train.labels.numpy(), arrays["train_fine"])
    assert np.array_equal(fine.test.images.reshape(5, -1).numpy(), arrays["test_x"])
    tar_path = make_tarball(folder, tmp_path / "cifar-100-python.tar.gz")
    coarse = load_cifar100(tar_path, label_mode="coarse")
    assert coarse.num_classes == 20
    assert coarse.train.classes[3] == "coarse3"
    assert np.array_equal(coarse.test.labels.numpy(), arrays["test_coarse"])
    with pytest.raises(ConfigError, match="label_mode"):
        load_cifar100(folder, label_mode="medium")


def test_cifar100_bad_label(tmp_path: Path) -> None:
    folder, _ = make_cifar100(tmp_path)
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}
    (folder / "test").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=r"corrupt: .*test .*labels outside 0\.\.99"):
        load_cifar100(folder)


# ---------------------------------------------------------------------------------------------
# Image folders


def _png(path: Path, value: int, size: tuple[int, int] = (8, 6), mode: str = "RGB") -> None:
    """A solid image; ``size`` is (height, width)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    color: Any = value if mode == "L" else (value, 255 - value, value // 2)
    Image.new(mode, (size[1], size[0]), color).save(path)


def make_folder(root: Path, per_class: int = 5, mode: str = "RGB") -> None:
    for label, name in enumerate(["cat", "dog", "emu"]):
        for i in range(per_class):
            _png(root / name / f"{i:02d}.png", 10 * label + i, mode=mode)


def test_folder_split(tmp_path: Path) -> None:
    make_folder(tmp_path)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    splits = load_image_folder(tmp_path, test_fraction=0.4, seed=3)
    assert splits.train.classes == ("cat", "dog", "emu")
    assert splits.train.images.shape == (9, 3, 8, 6)
    assert splits.test.images.shape == (6, 3, 8, 6)
    assert splits.test.labels.bincount().tolist() == [2, 2, 2]
    # Pixel values identify the file: red channel = 10*label + index.
    red = torch.cat([splits.train.images[:, 0, 0, 0], splits.test.images[:, 0, 0, 0]])
    labels = torch.cat([splits.train.labels, splits.test.labels])
    assert sorted(red.tolist()) == [10 * c + i for c in range(3) for i in range(5)]
    assert torch.equal(red // 10, labels)
    again = load_image_folder(tmp_path, test_fraction=0.4, seed=3)
    assert torch.equal(again.test.images, splits.test.images)


def test_folder_train_test(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", per_class=3)
    make_folder(tmp_path / "test", per_class=2)
    splits = load_image_folder(tmp_path)
    assert len(splits.train) == 9
    assert len(splits.test) == 6
    assert splits.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert splits.test.images[:, 0, 0, 0].tolist() == [0, 1, 10, 11, 20, 21]


def test_folder_train_test_classes_differ(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", per_class=2)
    make_folder(tmp_path / "test", per_class=2)
    _png(tmp_path / "test" / "fox" / "a.png", 1)
    with pytest.raises(DataError, match=r"only in test: \['fox'\]"):
        load_image_folder(tmp_path)


def test_folder_sizes_and_channels(tmp_path: Path) -> None:
    make_folder(tmp_path, per_class=2, mode="L")
    _png(tmp_path / "dog" / "big.png", 7, size=(12, 12), mode="L")
    with pytest.raises(DataError, match=r"different sizes.*image size"):
        load_image_folder(tmp_path)
    splits = load_image_folder(tmp_path, image_size=16)
    assert splits.image_shape == (1, 16, 16)  # all grayscale -> 1 channel
    rgb = load_image_folder(tmp_path, image_size=(10, 4), channels=3)
    assert rgb.image_shape == (3, 10, 4)
    with pytest.raises(ConfigError):
        load_image_folder(tmp_path, image_size=16, channels=2)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image folder not found"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(DataError, match="no class sub-folders"):
        load_image_folder(tmp_path)
    make_folder(tmp_path, per_class=2)
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png"):
        load_image_folder(tmp_path)


# ---------------------------------------------------------------------------------------------
# Built-in digits


def test_builtin_digits_split() -> None:
    splits = load_builtin_digits()
    assert (len(splits.train), len(splits.test)) == (4000, 1000)
    assert splits.train.labels.bincount().tolist() == [400] * 10
    assert splits.test.labels.bincount().tolist() == [100] * 10
    assert splits.image_shape == (1, 28, 28)
    assert splits.train.classes == tuple("0123456789")
    # Real digits: mostly black background, some bright strokes.
    assert 20 < splits.train.images.float().mean() < 60
    assert int(splits.train.images.max()) == 255
    # Train and test are disjoint images.
    train_rows = {bytes(x.numpy().tobytes()) for x in splits.train.images}
    assert not any(bytes(x.numpy().tobytes()) in train_rows for x in splits.test.images)


def test_builtin_digits_seed() -> None:
    a = load_builtin_digits(seed=0)
    b = load_builtin_digits(seed=0)
    c = load_builtin_digits(seed=1)
    assert torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.test.images, c.test.images)
    a.train.images[0].fill_(7)  # a caller writing into its copy does not touch the cache
    assert not torch.equal(load_builtin_digits(seed=0).train.images[0], a.train.images[0])


# ---------------------------------------------------------------------------------------------
# Registry


def test_registry(tmp_path: Path) -> None:
    assert list_datasets()[0] == "digits"
    assert set(list_datasets()) == {"digits", "mnist", "cifar10", "cifar100", "folder"}
    assert set(DATASET_DESCRIPTIONS) == set(list_datasets())
    assert all("\n" not in d for d in DATASET_DESCRIPTIONS.values())
    assert len(load_dataset().train) == 4000
    assert len(load_dataset("digits", test_fraction=0.5).test) == 2500
    with pytest.raises(ConfigError, match="known: digits, mnist, cifar10, cifar100, folder"):
        load_dataset("imagenet")
    with pytest.raises(ConfigError, match="needs a path"):
        load_dataset("mnist")
    with pytest.raises(ConfigError, match="takes no path"):
        load_dataset("digits", path=tmp_path)
    with pytest.raises(ConfigError, match="no option image_sise"):
        load_dataset("folder", path=tmp_path, image_sise=3)
    make_mnist(tmp_path / "m", gz=True)
    splits = load_dataset("mnist", path=tmp_path / "m")
    assert isinstance(splits, DataSplits)
    assert len(splits.train) == 12


# ---------------------------------------------------------------------------------------------
# Downloads


class _FileServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.honor_range = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files``; understands ``Range: bytes=N-`` (unless told not to)."""

    server: _FileServer

    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        range_header = self.headers.get("Range")
        self.server.requests.append((name, range_header))
        body = self.server.files.get(name)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if range_header and self.server.honor_range:
            match = re.fullmatch(r"bytes=(\d+)-", range_header)
            assert match is not None
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_FileServer]:
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    srv = _FileServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


FILE_A = bytes(range(256)) * 40  # 10 KiB
FILE_B = b"second file " * 100


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch, server: _FileServer) -> _FileServer:
    """A registered data set 'tiny' of two files, served by ``server``."""
    server.files = {"a.bin": FILE_A, "b.bin": FILE_B}
    files = (RemoteFile("a.bin", _md5(FILE_A)), RemoteFile("b.bin", _md5(FILE_B)))
    monkeypatch.setitem(DOWNLOADS, "tiny", RemoteDataset("http://unreachable.invalid/", files))
    return server


def test_download_fresh(tmp_path: Path, tiny: _FileServer) -> None:
    paths = download_dataset("tiny", tmp_path / "dl", mirror=tiny.url, progress=False)
    assert paths == [tmp_path / "dl" / "a.bin", tmp_path / "dl" / "b.bin"]
    assert paths[0].read_bytes() == FILE_A
    assert paths[1].read_bytes() == FILE_B
    assert tiny.requests == [("a.bin", None), ("b.bin", None)]
    assert not list((tmp_path / "dl").glob("*.part"))


def test_download_resume(tmp_path: Path, tiny: _FileServer) -> None:
    (tmp_path / "a.bin.part").write_bytes(FILE_A[:3000])
    download_dataset("tiny", tmp_path, mirror=tiny.url, progress=False)
    assert ("a.bin", "bytes=3000-") in tiny.requests
    assert (tmp_path / "a.bin").read_bytes() == FILE_A
    assert not (tmp_path / "a.bin.part").exists()


def test_download_restarts_when_range_ignored(tmp_path: Path, tiny: _FileServer) -> None:
    tiny.honor_range = False
    (tmp_path / "a.bin.part").write_bytes(b"x" * 500)  # wrong bytes: must not be kept
    download_dataset("tiny", tmp_path, mirror=tiny.url, progress=False)
    assert ("a.bin", "bytes=500-") in tiny.requests
    assert (tmp_path / "a.bin").read_bytes() == FILE_A


def test_download_complete_part(tmp_path: Path, tiny: _FileServer) -> None:
    (tmp_path / "a.bin.part").write_bytes(FILE_A)  # finished earlier but not yet verified
    download_dataset("tiny", tmp_path, mirror=tiny.url, progress=False)
    assert (tmp_path / "a.bin").read_bytes() == FILE_A


def test_download_checksum_mismatch(tmp_path: Path, tiny: _FileServer) -> None:
    tiny.files["b.bin"] = b"tampered"
    with pytest.raises(DataError, match="checksum mismatch") as info:
        download_dataset("tiny", tmp_path, mirror=tiny.url, progress=False)
    message = str(info.value)
    assert "b.bin" in message
    assert _md5(FILE_B) in message
    assert _md5(b"tampered") in message
    assert "\n" not in message
    assert not (tmp_path / "b.bin").exists()
    assert not (tmp_path / "b.bin.part").exists()
    assert (tmp_path / "a.bin").read_bytes() == FILE_A


def test_download_skips_verified_file(tmp_path: Path, tiny: _FileServer) -> None:
    (tmp_path / "a.bin").write_bytes(FILE_A)
    (tmp_path / "b.bin").write_bytes(FILE_B)
    paths = download_dataset("tiny", tmp_path, mirror=tiny.url, progress=False)
    assert tiny.requests == []
    assert [p.name for p in paths] == ["a.bin", "b.bin"]


def test_download_replaces_bad_final_file(tmp_path: Path, tiny: _FileServer) -> None:
    (tmp_path / "a.bin").write_bytes(b"old and wrong")
    download_dataset("tiny", tmp_path, mirror=tiny.url, progress=False)
    assert (tmp_path / "a.bin").read_bytes() == FILE_A


def test_download_errors(tmp_path: Path, tiny: _FileServer) -> None:
    with pytest.raises(ConfigError, match=r"downloadable: .*mnist"):
        download_dataset("imagenet", tmp_path)
    del tiny.files["a.bin"]
    with pytest.raises(DataError, match=r"a\.bin failed: HTTP 404"):
        download_dataset("tiny", tmp_path, mirror=tiny.url, progress=False)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DataError, match="failed") as info:
        download_dataset("tiny", tmp_path, mirror=f"http://127.0.0.1:{port}/", progress=False)
    assert "\n" not in str(info.value)


def test_failed_download_leaves_no_empty_folders(tmp_path: Path, tiny: _FileServer) -> None:
    """Offline: the folders the call made are removed; a saved file keeps its folder."""
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DataError, match="failed"):
        download_dataset("tiny", tmp_path / "a" / "b", mirror=f"http://127.0.0.1:{port}/")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "existing").mkdir()
    with pytest.raises(DataError, match="failed"):
        download_dataset("tiny", tmp_path / "existing", mirror=f"http://127.0.0.1:{port}/")
    assert (tmp_path / "existing").is_dir()  # not made by the call: kept
    del tiny.files["b.bin"]
    with pytest.raises(DataError, match="HTTP 404"):
        download_dataset("tiny", tmp_path / "c" / "d", mirror=tiny.url, progress=False)
    assert (tmp_path / "c" / "d" / "a.bin").read_bytes() == FILE_A


@pytest.mark.parametrize("dangling", [False, True])
def test_download_part_symlink_refused(tmp_path: Path, tiny: _FileServer, dangling: bool) -> None:
    """A symlink planted at the .part name is neither written through nor followed."""
    victim = tmp_path / "victim.txt"
    if not dangling:
        victim.write_bytes(b"precious")  # a resume would append to it, a restart overwrite it
    dl = tmp_path / "dl"
    dl.mkdir()
    (dl / "a.bin.part").symlink_to(victim)
    with pytest.raises(DataError, match=r"a\.bin\.part: it is a symbolic link to ") as info:
        download_dataset("tiny", dl, mirror=tiny.url, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert "remove it and run the same command again" in message
    assert tiny.requests == []  # refused before anything was asked of the server
    if dangling:
        assert not victim.exists() and not victim.is_symlink()  # not created through the link
    else:
        assert victim.read_bytes() == b"precious"
    assert not (dl / "a.bin").exists()


def test_download_part_hard_link_refused(tmp_path: Path, tiny: _FileServer) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    os.link(victim, tmp_path / "a.bin.part")
    with pytest.raises(DataError, match=r"a\.bin\.part: it has 2 hard links"):
        download_dataset("tiny", tmp_path, mirror=tiny.url, progress=False)
    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("resume", [False, True])
def test_download_part_symlink_planted_after_check(
    tmp_path: Path, tiny: _FileServer, monkeypatch: pytest.MonkeyPatch, resume: bool
) -> None:
    """A symlink that appears between the check and the open (a race) is not followed either.

    A fresh download removes it (never its target) and creates the file with O_EXCL; a resume
    opens with O_NOFOLLOW and stops with the same clear error.
    """
    import ownmark.data.download as download

    victim = tmp_path / "victim.txt"
    victim.write_bytes(FILE_A[:3000])
    part = tmp_path / "a.bin.part"
    checked = download._part_size

    def plant_then_check(path: Path, url: str) -> int:
        size = checked(path, url)
        if path == part:
            path.symlink_to(victim)
            return 3000 if resume else size
        return size

    monkeypatch.setattr(download, "_part_size", plant_then_check)
    if resume:
        with pytest.raises(DataError, match=r"a\.bin\.part: it is a symbolic link") as info:
            download_dataset("tiny", tmp_path, mirror=tiny.url, progress=False)
        assert "\n" not in str(info.value)
        assert ("a.bin", "bytes=3000-") in tiny.requests
    else:
        download_dataset("tiny", tmp_path, mirror=tiny.url, progress=False)
        assert (tmp_path / "a.bin").read_bytes() == FILE_A
        assert not (tmp_path / "a.bin").is_symlink()
    assert victim.read_bytes() == FILE_A[:3000]


def test_download_local_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "a.bin").write_bytes(FILE_A)
    files = (RemoteFile("a.bin", _md5(FILE_A)),)
    monkeypatch.setitem(DOWNLOADS, "tiny", RemoteDataset("http://unreachable.invalid/", files))
    paths = download_dataset("tiny", tmp_path / "dl", mirror=str(mirror), progress=False)
    assert paths[0].read_bytes() == FILE_A


def test_download_mnist_then_load(
    tmp_path: Path, server: _FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end: official names from a mirror, checksums patched for the tiny files."""
    arrays = make_mnist(tmp_path / "made", gz=True)
    server.files = {p.name: p.read_bytes() for p in (tmp_path / "made").iterdir()}
    files = tuple(RemoteFile(f.name, _md5(server.files[f.name])) for f in DOWNLOADS["mnist"].files)
    monkeypatch.setitem(DOWNLOADS, "mnist", RemoteDataset(DOWNLOADS["mnist"].base_url, files))
    download_dataset("mnist", tmp_path / "dl", mirror=server.url, progress=True)
    splits = load_dataset("mnist", path=tmp_path / "dl")
    assert np.array_equal(splits.test.labels.numpy(), arrays["test_y"])
