"""Model registry (timm-style), model specifications and the normalising ``Classifier`` wrapper.

Built-in networks register themselves with :func:`register_model`; :func:`create_network` builds
one by name. A name of the form ``package.module:factory`` instead imports a user's own factory,
so people can watermark their own architectures without editing ownmark.

Every network ownmark handles is wrapped in a :class:`Classifier`, which takes images in
``[0, 1]`` and normalises them itself. That keeps the rest of the toolkit (trigger sets,
attacks, verification) working in plain pixel space, whatever normalisation a model uses.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from ownmark.errors import ConfigError, one_line
from ownmark.registry import Registry

__all__ = [
    "MODELS",
    "Classifier",
    "ModelSpec",
    "build_model",
    "create_network",
    "default_normalization",
    "is_factory_name",
    "list_models",
    "model_descriptions",
    "register_model",
]

NetworkFactory = Callable[..., nn.Module]
"""A callable ``f(num_classes=..., in_channels=..., input_size=(H, W)) -> nn.Module``."""

_F = TypeVar("_F", bound=NetworkFactory)

# ``package.module:factory`` (the attribute part may be dotted, e.g. ``mod:Class.build``).
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_FACTORY_RE = re.compile(rf"^{_IDENT}(?:\.{_IDENT})*:{_IDENT}(?:\.{_IDENT})*$")


#: Built-in networks, by name (the shared :class:`~ownmark.registry.Registry` shape).
MODELS: Registry[nn.Module] = Registry("model")


def register_model(name: str, description: str) -> Callable[[_F], _F]:
    """Decorator that registers a network factory under ``name``.

    The factory is called as ``f(num_classes=..., in_channels=..., input_size=(H, W))`` and must
    return an ``nn.Module`` mapping normalised ``(N, C, H, W)`` images to ``(N, num_classes)``
    logits. ``description`` is a one-line summary shown by ``ownmark models``.

    Raises:
        ValueError: ``name`` is already registered or contains ``:`` (reserved for
            ``module:factory`` names). These are programming errors, not user errors.
    """
    if ":" in name or not name:
        raise ValueError(f"invalid model name {name!r}: must be non-empty and contain no ':'")

    def decorator(factory: _F) -> _F:
        MODELS.add(name, description, factory)
        return factory

    return decorator


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return MODELS.names()


def model_descriptions() -> dict[str, str]:
    """``{name: one-line description}`` for every registered model, sorted by name."""
    return {entry.name: entry.summary for entry in MODELS}


def is_factory_name(name: str) -> bool:
    """True if ``name`` refers to user code (``package.module:factory``), not a registered model."""
    return ":" in name


def _resolve_factory(name: str) -> NetworkFactory:
    """Import ``package.module:factory`` and return the factory (a callable)."""
    if not _FACTORY_RE.match(name):
        raise ConfigError(
            f"invalid model factory {name!r}: expected the form 'package.module:factory'"
        )
    module_name, attr_path = name.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any error while running the user's module, not just ImportError
        raise ConfigError(
            f"cannot import module {module_name!r} for model factory {name!r}: {one_line(exc)}"
        ) from exc
    try:
        obj: Any = functools.reduce(getattr, attr_path.split("."), module)
    except AttributeError as exc:
        raise ConfigError(
            f"module {module_name!r} has no attribute {attr_path!r} (model factory {name!r})"
        ) from exc
    if not callable(obj):
        raise ConfigError(f"model factory {name!r} is not callable")
    factory: NetworkFactory = obj
    return factory


def _accepts_input_size(factory: NetworkFactory) -> bool:
    """Whether ``factory`` takes an ``input_size`` keyword (by name or through ``**kwargs``)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # some builtins/C callables have no signature
        return False
    return any(
        (p.name == "input_size" and p.kind != inspect.Parameter.POSITIONAL_ONLY)
        or p.kind == inspect.Parameter.VAR_KEYWORD
        for p in params
    )


def _check_dims(num_classes: int, in_channels: int, input_size: tuple[int, int]) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"in_channels must be a positive integer, got {in_channels!r}")
    if len(input_size) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in input_size
    ):
        raise ConfigError(f"input_size must be two positive integers (H, W), got {input_size!r}")


def create_network(
    name: str, num_classes: int, in_channels: int, input_size: tuple[int, int]
) -> nn.Module:
    """Build the bare network ``name`` (no normalisation; see :func:`build_model` for that).

    Args:
        name: a registered model (see :func:`list_models`) or ``package.module:factory``. A
            user factory is called as ``factory(num_classes=..., in_channels=...)``, plus
            ``input_size=(H, W)`` only if its signature accepts it. Importing it runs that code.
        num_classes: number of output logits.
        in_channels: image channels (1 for MNIST, 3 for CIFAR-10).
        input_size: image ``(H, W)``.

    Raises:
        ConfigError: unknown name, bad dimensions, a factory that cannot be imported, fails,
            or does not return an ``nn.Module``.
    """
    input_size = tuple(input_size)  # type: ignore[assignment]  # accept lists from JSON/CLI
    _check_dims(num_classes, in_channels, input_size)
    if is_factory_name(name):
        factory = _resolve_factory(name)
        kwargs: dict[str, Any] = {"num_classes": num_classes, "in_channels": in_channels}
        if _accepts_input_size(factory):
            kwargs["input_size"] = input_size
        try:
            network = factory(**kwargs)
        except Exception as exc:  # user code: report in one line, keep the chain for debugging
            args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
            raise ConfigError(f"model factory {name}({args}) failed: {one_line(exc)}") from exc
        if not isinstance(network, nn.Module):
            raise ConfigError(
                f"model factory {name!r} returned {type(network).__name__}, "
                "expected a torch.nn.Module"
            )
        return network
    if name not in MODELS:
        raise ConfigError(
            f"unknown model {name!r}; registered models: {', '.join(list_models())}; "
            "or give your own factory as 'package.module:factory'"
        )
    factory = MODELS.entry(name).factory
    return factory(num_classes=num_classes, in_channels=in_channels, input_size=input_size)


def default_normalization(in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` for images in ``[0, 1]``.

    1 channel: the MNIST statistics ``(0.1307,)`` / ``(0.3081,)``. 3 channels: the CIFAR-10
    statistics ``(0.4914, 0.4822, 0.4465)`` / ``(0.2470, 0.2435, 0.2616)``. Any other channel
    count gets ``0.5`` / ``0.5`` per channel (maps ``[0, 1]`` to ``[-1, 1]``).
    """
    if in_channels == 1:
        return (0.1307,), (0.3081,)
    if in_channels == 3:
        return (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    if in_channels < 1:
        raise ConfigError(f"in_channels must be a positive integer, got {in_channels!r}")
    return (0.5,) * in_channels, (0.5,) * in_channels


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model's structure (weights live elsewhere).

    Attributes:
        arch: a registered model name or ``package.module:factory``.
        num_classes: number of output logits.
        in_channels: image channels.
        input_size: image ``(H, W)``.
        mean: per-channel mean subtracted from ``[0, 1]`` inputs (length ``in_channels``).
        std: per-channel std the inputs are divided by (length ``in_channels``, all > 0).
    """

    arch: str
    num_classes: int
    in_channels: int
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        # Normalise lists (from JSON) to tuples so specs compare and hash reliably.
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not self.arch:
            raise ConfigError("model arch must be a non-empty name")
        _check_dims(self.num_classes, self.in_channels, self.input_size)
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ConfigError(
                f"mean and std need {self.in_channels} value(s) (one per channel), got "
                f"{len(self.mean)} and {len(self.std)}"
            )
        if not all(s > 0 for s in self.std):
            raise ConfigError(f"std values must all be > 0, got {self.std}")

    @classmethod
    def with_defaults(
        cls,
        arch: str,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: tuple[int, int] = (28, 28),
    ) -> ModelSpec:
        """A spec using :func:`default_normalization` (defaults: 10 classes, 1x28x28, MNIST)."""
        mean, std = default_normalization(in_channels)
        return cls(arch, num_classes, in_channels, tuple(input_size), mean, std)  # type: ignore[arg-type]


class Classifier(nn.Module):
    """A network plus its input normalisation: ``[0, 1]`` images in, logits out.

    The mean/std buffers are not part of the state dict: the (immutable) ``spec`` is their single
    source of truth, and state dicts then hold only the network's weights (``network.*``).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, spec: ModelSpec, network: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        shape = (1, spec.in_channels, 1, 1)
        self.register_buffer(
            "mean", torch.tensor(spec.mean, dtype=torch.float32).view(shape), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(spec.std, dtype=torch.float32).view(shape), persistent=False
        )
        self.network = network

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` per channel."""
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` for float images in ``[0, 1]`` of shape ``(N, C, H, W)``."""
        if x.ndim != 4 or x.shape[1] != self.spec.in_channels:
            raise ValueError(
                f"expected images of shape (N, {self.spec.in_channels}, H, W), got {tuple(x.shape)}"
            )
        logits: torch.Tensor = self.network(self.normalize(x))
        return logits

    def extra_repr(self) -> str:
        return f"arch={self.spec.arch!r}, num_classes={self.spec.num_classes}"


def build_model(spec: ModelSpec) -> Classifier:
    """Build a freshly initialised :class:`Classifier` for ``spec`` (in training mode, on CPU).

    Initialisation uses torch's global RNG, so call ``torch.manual_seed`` first for
    reproducible weights.

    Raises:
        ConfigError: see :func:`create_network`.
    """
    network = create_network(spec.arch, spec.num_classes, spec.in_channels, spec.input_size)
    return Classifier(spec, network)
