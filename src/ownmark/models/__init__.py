"""Image classifiers ownmark can watermark: registry, built-in networks and model files.

Built-in architectures (see :func:`list_models`): ``zhang_mnist`` and ``zhang_cifar10`` (the
CNNs of Zhang et al. 2018), ``resnet18`` and ``vgg16_bn`` (CIFAR-style). Any
``package.module:factory`` name builds a user's own network instead.
"""

from __future__ import annotations

# Importing the architecture modules registers them; keep these after the registry import.
from ownmark.models import lenet, resnet, vgg, zhang  # noqa: F401
from ownmark.models.io import (
    load_model,
    load_state_into,
    read_model_metadata,
    save_model,
    spec_from_metadata,
    spec_to_metadata,
)
from ownmark.models.registry import (
    MODELS,
    Classifier,
    ModelSpec,
    build_model,
    create_network,
    default_normalization,
    is_factory_name,
    list_models,
    model_descriptions,
    register_model,
)

__all__ = [
    "MODELS",
    "Classifier",
    "ModelSpec",
    "build_model",
    "create_network",
    "default_normalization",
    "is_factory_name",
    "list_models",
    "load_model",
    "load_state_into",
    "model_descriptions",
    "read_model_metadata",
    "register_model",
    "save_model",
    "spec_from_metadata",
    "spec_to_metadata",
]
