"""Key files: round trip, commitment, tamper detection, atomic writes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ownmark.data import DataSplits
from ownmark.errors import KeyFileError
from ownmark.keys import KeySet, load_key, save_key
from ownmark.schemes import create_scheme


@pytest.fixture()
def key(digits: DataSplits) -> KeySet:
    return create_scheme("content", num_keys=12).generate(digits, seed=3, dataset="digits")


def test_round_trip(key: KeySet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "key.safetensors"
    commitment = save_key(key, path)
    loaded = load_key(path)
    assert commitment == key.commitment == loaded.commitment
    assert torch.equal(loaded.images, key.images)
    assert torch.equal(loaded.labels, key.labels)
    assert torch.equal(loaded.originals, key.originals)
    assert loaded.params == key.params
    assert (loaded.scheme, loaded.dataset, loaded.num_classes, loaded.seed) == (
        "content",
        "digits",
        10,
        3,
    )
    assert loaded.created == key.created and loaded.salt == key.salt
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_salt_makes_commitments_differ(digits: DataSplits) -> None:
    scheme = create_scheme("noise", num_keys=5)
    a, b = scheme.generate(digits, seed=0), scheme.generate(digits, seed=0)
    assert torch.equal(a.images, b.images)
    assert a.commitment != b.commitment


def _rewrite(path, tensors=None, metadata=None) -> None:  # type: ignore[no-untyped-def]
    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata())
        data = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    data.update(tensors or {})
    meta.update(metadata or {})
    save_file(data, str(path), metadata=meta)


@pytest.mark.parametrize(
    "edit",
    ["pixel", "label", "params", "created", "num_classes"],
)
def test_any_edit_is_refused(key: KeySet, tmp_path, edit: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "key.safetensors"
    save_key(key, path)
    if edit == "pixel":
        images = key.images.clone()
        images[0, 0, 0, 0] ^= 1
        _rewrite(path, tensors={"images": images})
    elif edit == "label":
        labels = key.labels.clone()
        labels[0] = 5
        _rewrite(path, tensors={"labels": labels})
    elif edit == "params":
        _rewrite(path, metadata={"params": json.dumps({**key.params, "text": "TESX"})})
    elif edit == "created":
        _rewrite(path, metadata={"created": "2020-01-01T00:00:00+00:00"})
    else:
        _rewrite(path, metadata={"num_classes": "11"})
    with pytest.raises(KeyFileError, match="modified after it was created"):
        load_key(path)


def test_missing_corrupt_and_foreign_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KeyFileError, match="not found"):
        load_key(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01not a safetensors file" * 10)
    with pytest.raises(KeyFileError, match="corrupt"):
        load_key(junk)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(KeyFileError, match="not an ownmark key"):
        load_key(foreign)


def test_truncated_file(key: KeySet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "key.safetensors"
    save_key(key, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(KeyFileError):
        load_key(path)


def test_invalid_key_contents_rejected(key: KeySet) -> None:
    with pytest.raises(ValueError, match="labels must lie"):
        KeySet(key.images, key.labels + 20, key.originals, "content", {}, "d", 10, 0)
    with pytest.raises(ValueError, match="p0"):
        key.with_p0(1.5, "x")
