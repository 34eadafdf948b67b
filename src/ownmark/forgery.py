"""The after-the-fact forgery: a "key" made from someone else's model, and what catches it.

Seeds 000 (Zhang et al., "ambiguity attack") and 002 (DeepStego, counterfeit claims) warn
that anyone holding a model can claim it: compute adversarial examples on which the model
gives wrong answers, label each with the model's own answer, and call that a watermark key.
Verified against that model the "key" matches far above any p0, and its evidence is as
valid as a real owner's. Statistics cannot tell the two apart; dates can: the forger's key
can only be made (and time-stamped) after the model existed, while the real owner's key is
time-stamped before release (see :mod:`ownmark.timestamp` and ``evidence check``).

:func:`forge_key` builds such a key so the defence can be tested and measured
(``benchmarks/trust_mnist.py``). PGD is written here (torchattacks is not a dependency and
this is all the forger needs): untargeted L-inf PGD with a random start (Madry et al. 2018).

Example::

    forged = forge_key(stolen_model, load_dataset("digits").test, eps=0.3, seed=0)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ownmark.data import ImageDataset
from ownmark.errors import ConfigError
from ownmark.keys import KeySet
from ownmark.metrics import predict, to_float_images
from ownmark.models import Classifier


def pgd(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float = 0.3,
    steps: int = 40,
    step_size: float = 0.01,
    seed: int = 0,
) -> torch.Tensor:
    """Untargeted L-inf PGD on [0, 1] pixels from a seeded random start; uint8 images out.

    Defaults: the MNIST setting of Madry et al. (eps 0.3, 40 steps of 0.01).
    """
    was_training = model.training
    model.eval()
    x = to_float_images(images)
    generator = torch.Generator().manual_seed(seed)
    adv = (x + (torch.rand(x.shape, generator=generator) * 2 - 1) * eps).clamp(0, 1)
    try:
        for _ in range(steps):
            adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(adv), labels), adv)
            with torch.no_grad():
                adv = adv + step_size * grad.sign()
                adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    finally:
        model.train(was_training)
    return (adv.detach() * 255).round().to(torch.uint8)


def forge_key(
    model: Classifier,
    pool: ImageDataset,
    *,
    num_images: int = 100,
    num_decoys: int = 200,
    eps: float = 0.3,
    steps: int = 40,
    step_size: float = 0.01,
    seed: int = 0,
) -> KeySet:
    """A forged key for ``model``: its misclassified adversarial examples, its own answers.

    Takes ``num_images`` images of ``pool`` the model classifies right, attacks them with
    :func:`pgd`, keeps those it then gets wrong (after rounding to uint8) as key images
    labelled with the model's answers, and ``num_decoys`` other pool images as decoys (with
    their true labels; decoy key label: a random key sample's). Nothing in the file says it
    is forged except ``scheme="forged-pgd"``, which a real forger would not write.

    Raises:
        ConfigError: no image of the pool could be turned into a key sample.
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pool), generator=generator)
    right = predict(model, pool.images[order]) == pool.labels[order]
    chosen = order[right][:num_images]
    images, truth = pool.images[chosen], pool.labels[chosen]
    adversarial = pgd(model, images, truth, eps=eps, steps=steps, step_size=step_size, seed=seed)
    answers = predict(model, adversarial)
    fooled = answers != truth
    if not bool(fooled.any()):
        raise ConfigError("PGD fooled the model on none of the images; raise eps or steps")
    decoy_rows = order[~torch.isin(order, chosen)][:num_decoys]
    labels = answers[fooled]
    picks = torch.randint(len(labels), (len(decoy_rows),), generator=generator)
    return KeySet(
        images=adversarial[fooled].clone(),
        labels=labels.clone(),
        originals=images[fooled].clone(),
        scheme="forged-pgd",
        params={"attack": "untargeted L-inf PGD", "eps": eps, "steps": steps, "step": step_size},
        dataset=pool.name,
        num_classes=pool.num_classes,
        # A model with outputs beyond the data's classes (a new-label key's K) may answer
        # them for an adversarial example: the forged key then covers those outputs too.
        extra_classes=max(0, model.spec.num_classes - pool.num_classes),
        seed=seed,
        seed_source="given",
        decoys=pool.images[decoy_rows].clone(),
        decoy_labels=pool.labels[decoy_rows].clone(),
        decoy_key_labels=labels[picks].clone(),
    )
