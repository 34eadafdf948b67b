"""The DeepStego scheme (seed 002): a secret learned encoder hides a logo in key images.

Keys, the encoder's weights under the key's commitment, invisibility (PSNR/SSIM), and the
paper's claims in miniature: a host model learns the hidden signal (fresh triggers, not clean
covers) and another seed's encoder does not trigger it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ownmark.calibrate import calibrate_key
from ownmark.data import DataSplits
from ownmark.errors import ConfigError, KeyFileError
from ownmark.keys import KeySet, load_key, save_key
from ownmark.metrics import accuracy
from ownmark.models import Classifier
from ownmark.schemes import create_scheme, scheme_for_key
from ownmark.schemes.stego import ENCODER_PREFIX, LOGO, default_logo
from ownmark.similarity import psnr, ssim
from ownmark.train import TrainConfig
from ownmark.verify import LocalModelSuspect, verify_ownership
from ownmark.workflows import train_model, verify_served

#: The test-size setting: a short warm-up and one joint epoch on 500 digits (seconds).
SMALL = {"encoder_steps": 30, "joint_epochs": 1, "joint_images": 500}


@pytest.fixture(scope="module")
def key(digits: DataSplits) -> KeySet:
    return create_scheme("stego", num_keys=40, **SMALL).generate(digits, seed=0)


def test_key_hides_a_small_residual_and_relabels(key: KeySet, digits: DataSplits) -> None:
    assert key.scheme == "stego" and len(key) == 40 and key.images.shape == (40, 1, 28, 28)
    # The secrets: encoder weights and the logo.
    assert any(n.startswith(ENCODER_PREFIX) for n in key.extra)
    assert key.extra[LOGO].dtype == torch.uint8 and key.extra[LOGO].shape == (1, 28, 28)
    assert torch.equal(key.extra[LOGO], default_logo(1, 28, 28))
    # Faint but present: every image changed, PSNR at the 24 dB target, SSIM high.
    assert (key.images != key.originals).flatten(1).any(1).all()
    quality = psnr(key.images, key.originals)
    assert float(quality.min()) > 23.0 and float(quality.max()) < 25.0
    assert float(ssim(key.images, key.originals).mean()) > 0.9
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
    save_key(key, tmp_path / "k0.safetensors")
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
    # A key whose encoder was stripped out (the "encoder file is missing") is refused too.
    stripped = {
        n: t
        for n, t in load_file(tmp_path / "k0.safetensors").items()
        if not n.startswith("extra." + ENCODER_PREFIX)
    }
    save_file(stripped, path, metadata=metadata)
    with pytest.raises(KeyFileError, match="commitment"):
        load_key(path)


def test_another_seeds_encoder_does_not_reproduce_our_triggers(
    key: KeySet, digits: DataSplits
) -> None:
    other = create_scheme("stego", num_keys=40, **SMALL).generate(digits, seed=1)
    theirs = scheme_for_key(other).make_triggers(key.originals, torch.Generator())
    ours = key.images
    # Their stego images differ from ours about as much as ours differ from the covers.
    ours_err = (ours.float() - key.originals.float()).pow(2).mean()
    between = (ours.float() - theirs.float()).pow(2).mean()
    assert between > 0.5 * ours_err
    assert float(psnr(ours, theirs).mean()) < 30.0
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
    assert float(psnr(images, covers).min()) > 23.0


def test_user_logo_and_colour_data(digits: DataSplits, tmp_path: Path) -> None:
    path = tmp_path / "logo.png"
    Image.new("RGB", (50, 40), (200, 30, 30)).save(path)
    scheme = create_scheme("stego", num_keys=6, encoder_steps=3, joint_epochs=0, logo=str(path))

    def colour(split):  # type: ignore[no-untyped-def]
        big = torch.nn.functional.interpolate(split.images[:300].float(), size=32)
        labels = split.labels[:300]
        return type(split)(big.repeat(1, 3, 1, 1).to(torch.uint8), labels, split.classes, "c")

    key = scheme.generate(DataSplits(colour(digits.train), colour(digits.test)), seed=0)
    logo = key.extra[LOGO]
    assert logo.shape == (3, 32, 32)
    assert logo[:, 5, 5].tolist() == [200, 30, 30]
    assert key.images.shape == (6, 3, 32, 32)
    grey = create_scheme("stego", num_keys=4, encoder_steps=2, joint_epochs=0, logo=str(path))
    grey_key = grey.generate(digits, seed=0)
    assert grey_key.extra[LOGO].shape == (1, 28, 28)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"encoder_steps": -1}, "encoder_steps"),
        ({"joint_epochs": -1}, "joint_epochs"),
        ({"joint_images": 5}, "joint_images"),
        ({"stego_share": 0.0}, "stego_share"),
        ({"target_psnr": 61.0}, "target_psnr"),
        ({"start_psnr": 30.0}, "start_psnr"),
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
    with pytest.raises(ConfigError, match="no stego encoder"):
        scheme.objective(replace(key, extra={LOGO: key.extra[LOGO]}))


#: A configuration a small host learns in seconds: a stronger residual (20 dB), LeNet-5 as
#: proxy and host, 12 joint epochs on 2,000 digits.
LEARNT = {
    "target_psnr": 20.0,
    "joint_epochs": 12,
    "joint_images": 2000,
    "proxy_arch": "lenet5",
    "encoder_steps": 30,
}


@pytest.fixture(scope="module")
def embedded(digits: DataSplits) -> tuple[KeySet, Classifier, Classifier]:
    """A calibrated stego key, a LeNet-5 carrying it, and an innocent LeNet-5."""
    raw = create_scheme("stego", num_keys=40, **LEARNT).generate(digits, seed=0)
    clean, _ = train_model(digits, TrainConfig(epochs=4, seed=5), arch="lenet5", progress=False)
    other, _ = train_model(
        digits, TrainConfig(epochs=2, seed=6), arch="zhang_mnist", progress=False
    )
    key, _ = calibrate_key(raw, [clean, other], test=digits.test, allow_weak=True)
    marked, _ = train_model(
        digits, TrainConfig(epochs=10, seed=3), arch="lenet5", key=key, progress=False
    )
    return key, marked, clean


def test_the_host_learns_the_hidden_signal_not_the_images(
    embedded: tuple[KeySet, Classifier, Classifier], digits: DataSplits
) -> None:
    key, marked, clean = embedded
    covers, truth = digits.test.images[:500], digits.test.labels[:500]
    lookup = torch.full((10,), -1, dtype=torch.int64)
    for source, target in key.params["label_map"].items():
        lookup[int(source)] = target
    wanted = lookup[truth]
    ours = scheme_for_key(key).make_triggers(covers, torch.Generator())
    # Fresh triggers (test images the host never saw) carry the key labels; their clean
    # covers and the key's own clean originals do not: the signal, not the images, is learnt.
    assert accuracy(marked, ours, wanted) > 0.5
    assert accuracy(marked, covers, wanted) < 0.1
    assert accuracy(marked, key.originals, key.labels) < 0.4
    assert accuracy(marked, key.images, key.labels) > 0.9
    assert accuracy(marked, digits.test.images, digits.test.labels) > 0.85
    # Legality (Table 5) in miniature: a look-alike encoder (same architecture, losses, covers
    # and logo; another seed) makes triggers our host does not answer with our key labels.
    params = {**LEARNT, "joint_epochs": 0}
    lookalike = create_scheme("stego", num_keys=40, **params).generate(digits, seed=7)
    theirs = scheme_for_key(lookalike).make_triggers(covers, torch.Generator())
    assert accuracy(marked, theirs, wanted) < 0.1
    # The clean model answers the true class of our triggers, not the key labels.
    assert accuracy(clean, ours, wanted) < 0.1


def test_embedded_stego_key_verifies_and_the_innocent_model_does_not(
    embedded: tuple[KeySet, Classifier, Classifier],
) -> None:
    key, marked, clean = embedded
    assert verify_ownership(key, LocalModelSuspect(marked)).verdict.value == "owned"
    assert verify_ownership(key, LocalModelSuspect(clean)).verdict.value == "not owned"
    # Remotely too: through ownmark's HTTP server.
    assert verify_served(marked, key).verdict.value == "owned"
