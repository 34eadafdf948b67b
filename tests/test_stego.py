"""The DeepStego scheme (seed 002): a secret learned encoder hides a logo in key images.

Keys, the encoder's weights under the key's commitment, invisibility (PSNR/SSIM), and the
paper's legality claim in miniature: another seed's encoder makes other images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ownmark.data import DataSplits
from ownmark.errors import ConfigError, KeyFileError
from ownmark.keys import KeySet, load_key, save_key
from ownmark.schemes import create_scheme, scheme_for_key
from ownmark.schemes.stego import CARRIER, ENCODER_PREFIX, LOGO, default_logo
from ownmark.similarity import psnr, ssim

#: The test-size setting: 30 encoder steps (about a second or two on one core).
STEPS = 30


@pytest.fixture(scope="module")
def key(digits: DataSplits) -> KeySet:
    return create_scheme("stego", num_keys=40, encoder_steps=STEPS).generate(digits, seed=0)


def test_key_hides_a_small_residual_and_relabels(key: KeySet, digits: DataSplits) -> None:
    assert key.scheme == "stego" and len(key) == 40 and key.images.shape == (40, 1, 28, 28)
    # The secrets: encoder weights, the logo, the residual's signs.
    assert any(n.startswith(ENCODER_PREFIX) for n in key.extra)
    assert key.extra[LOGO].dtype == torch.uint8 and key.extra[LOGO].shape == (1, 28, 28)
    assert torch.equal(key.extra[LOGO], default_logo(1, 28, 28))
    assert set(key.extra[CARRIER].unique().tolist()) == {-1.0, 1.0}
    # Invisible but present: every image changed, PSNR about the 42 dB target, SSIM high.
    assert (key.images != key.originals).flatten(1).any(1).all()
    quality = psnr(key.images, key.originals)
    assert float(quality.min()) > 40.0 and float(quality.max()) < 44.0
    assert float(ssim(key.images, key.originals).mean()) > 0.97
    # Key labels differ from the true classes (the secret derangement).
    label_map = {int(k): v for k, v in key.params["label_map"].items()}
    assert all(k != v for k, v in label_map.items())
    flat = digits.train.images.flatten(1)
    true = [
        int(digits.train.labels[(flat == o.flatten()).all(1).nonzero()[0]]) for o in key.originals
    ]
    assert key.labels.tolist() == [label_map[c] for c in true]


def test_encoder_is_stored_under_the_commitment(key: KeySet, tmp_path: Path) -> None:
    path = tmp_path / "k.safetensors"
    save_key(key, path)
    loaded = load_key(path)
    assert loaded.extra.keys() == key.extra.keys()
    # The loaded key alone remakes identical triggers.
    remade = scheme_for_key(loaded).make_triggers(loaded.originals, torch.Generator())
    assert torch.equal(remade, key.images)
    # One changed encoder weight no longer matches the commitment: the file is refused.
    tensors = load_file(path)
    name = next(n for n in tensors if n.startswith("extra." + ENCODER_PREFIX))
    tensors[name] = tensors[name] + 1e-3
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        metadata = json.loads(f.read(header_len))["__metadata__"]
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(KeyFileError, match="commitment"):
        load_key(path)


def test_another_seeds_encoder_does_not_reproduce_our_triggers(
    key: KeySet, digits: DataSplits
) -> None:
    other = create_scheme("stego", num_keys=40, encoder_steps=STEPS).generate(digits, seed=1)
    theirs = scheme_for_key(other).make_triggers(key.originals, torch.Generator())
    ours = key.images
    # Their stego images differ from ours about as much as ours differ from the covers.
    ours_err = (ours.float() - key.originals.float()).pow(2).mean()
    between = (ours.float() - theirs.float()).pow(2).mean()
    assert between > 0.5 * ours_err
    assert float(psnr(ours, theirs).mean()) < 45.0
    # Our own encoder on the same covers, by contrast, gives exactly our images.
    again = scheme_for_key(key).make_triggers(key.originals, torch.Generator())
    assert torch.equal(again, ours)


def test_fresh_triggers_use_the_keys_encoder(key: KeySet, digits: DataSplits) -> None:
    scheme = scheme_for_key(key)
    images, labels = scheme.fresh_triggers(key, digits, 25, torch.Generator().manual_seed(3))
    assert images.shape == (25, 1, 28, 28) and images.dtype == torch.uint8
    assert set(labels.tolist()) <= set(key.params["label_map"].values())
    # Fresh covers from the test split, each marked with a faint residual.
    flat = digits.test.images.flatten(1)
    rows = [int(((flat.float() - i.flatten().float()).abs().sum(1)).argmin()) for i in images]
    covers = digits.test.images[rows]
    assert float(psnr(images, covers).min()) > 40.0


def test_user_logo_and_colour_data(digits: DataSplits, tmp_path: Path) -> None:
    path = tmp_path / "logo.png"
    Image.new("RGB", (50, 40), (200, 30, 30)).save(path)
    scheme = create_scheme("stego", num_keys=6, encoder_steps=3, logo=str(path))

    def colour(split):  # type: ignore[no-untyped-def]
        big = torch.nn.functional.interpolate(split.images[:300].float(), size=32)
        labels = split.labels[:300]
        return type(split)(big.repeat(1, 3, 1, 1).to(torch.uint8), labels, split.classes, "c")

    key = scheme.generate(DataSplits(colour(digits.train), colour(digits.test)), seed=0)
    logo = key.extra[LOGO]
    assert logo.shape == (3, 32, 32)
    assert logo[:, 5, 5].tolist() == [200, 30, 30]
    assert key.images.shape == (6, 3, 32, 32)
    grey = create_scheme("stego", num_keys=4, encoder_steps=2, logo=str(path))
    grey_key = grey.generate(digits, seed=0)
    assert grey_key.extra[LOGO].shape == (1, 28, 28)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"encoder_steps": 0}, "encoder_steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"width": 0}, "width"),
        ({"blocks": -1}, "blocks"),
        ({"target_psnr": 10.0}, "target_psnr"),
        ({"delta": -1.0}, "delta"),
        ({"alpha": float("nan")}, "alpha"),
        ({"gamma": 0.0}, "gamma"),
        ({"alpha": 0.0, "beta": 0.0}, "alpha or beta"),
    ],
)
def test_bad_parameters_fail(params: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_scheme("stego", **params)


def test_missing_logo_file_fails(digits: DataSplits, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="logo image not found"):
        create_scheme("stego", num_keys=4, logo=str(tmp_path / "none.png")).generate(digits)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(ConfigError, match="not a readable image"):
        create_scheme("stego", num_keys=4, logo=str(bad)).generate(digits)


def test_a_key_without_an_encoder_cannot_make_triggers(key: KeySet) -> None:
    scheme = scheme_for_key(key)
    scheme.secrets = {}
    with pytest.raises(ConfigError, match="no stego encoder"):
        scheme.make_triggers(key.originals, torch.Generator())
