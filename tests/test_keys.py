"""Key files: round trip, commitment, tamper detection, atomic writes."""

from __future__ import annotations

import dataclasses
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
    ["pixel", "label", "params", "created", "num_classes", "decoy", "plan", "model"],
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
    elif edit == "decoy":
        decoys = key.decoys.clone()
        decoys[0, 0, 0, 0] ^= 1
        _rewrite(path, tensors={"decoys": decoys})
    elif edit == "plan":
        _rewrite(path, metadata={"alpha": "0.01"})
    elif edit == "model":
        _rewrite(path, metadata={"released_model_sha256": "0" * 64})
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
        dataclasses.replace(key, labels=key.labels + 20)
    with pytest.raises(ValueError, match="decoy_labels must lie"):
        dataclasses.replace(key, decoy_labels=key.decoy_labels + 20)
    with pytest.raises(ValueError, match="decoys must be uint8"):
        dataclasses.replace(key, decoys=key.decoys[:, :, :5])
    with pytest.raises(ValueError, match="p0"):
        key.with_p0(1.5, "x")


def test_default_keys_are_secret_and_distinct(digits: DataSplits) -> None:
    """Without a seed two owners with the same defaults get unrelated keys (issue 7)."""
    scheme = create_scheme("content", num_keys=20, num_decoys=20)
    a, b = scheme.generate(digits), scheme.generate(digits)
    assert a.seed_source == b.seed_source == "secret"
    assert a.seed != b.seed
    assert not torch.equal(a.images, b.images)
    assert a.params["text"] != b.params["text"] or a.params["position"] != b.params["position"]
    assert a.params["label_map"] != b.params["label_map"]
    given = scheme.generate(digits, seed=5)
    assert given.seed_source == "given" and given.seed == 5


def test_timestamp_token_sits_outside_the_commitment(key: KeySet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    stamped = key.with_timestamp("dG9rZW4=")
    assert stamped.commitment == key.commitment
    path = tmp_path / "key.safetensors"
    save_key(stamped, path)
    assert load_key(path).timestamp_token == "dG9rZW4="
    # Anything that changes the commitment drops the token, which no longer covers it.
    assert stamped.with_p0(0.2, "x").timestamp_token == ""


def test_binding_the_released_model_changes_the_commitment(key: KeySet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    model_file = tmp_path / "model.safetensors"
    model_file.write_bytes(b"weights" * 1000)
    bound = key.bound_to_model(model_file)
    assert bound.released_model_sha256 == hashlib.sha256(b"weights" * 1000).hexdigest()
    assert bound.commitment != key.commitment
    save_key(bound, tmp_path / "k.safetensors")
    assert load_key(tmp_path / "k.safetensors").released_model_sha256 == bound.released_model_sha256


def test_old_format_keys_are_refused_with_advice(key: KeySet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "key.safetensors"
    save_key(key, path)
    _rewrite(path, metadata={"format_version": "1"})
    with pytest.raises(KeyFileError, match=r"version 1 key file.*ownmark keygen"):
        load_key(path)
