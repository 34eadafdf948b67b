"""The shared base of every watermark scheme, and the scheme registry.

A scheme turns clean data into a :class:`~ownmark.keys.KeySet`: trigger images labelled
with a key label. Embedding (training on data mixed with the key) and verification
(querying a suspect with the key) are the same for every scheme and live elsewhere
(:mod:`ownmark.train`, :mod:`ownmark.verify`), like foolbox keeps criteria apart from attacks.

Adding a scheme: subclass :class:`WatermarkScheme`, give it a frozen ``Config`` dataclass
deriving from :class:`SchemeConfig`, and decorate it with :func:`register_scheme`. The CLI
and the test-suite pick it up from the registry.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch

from ownmark.data.base import DataSplits
from ownmark.errors import ConfigError
from ownmark.keys import KeySet


@dataclass(frozen=True)
class SchemeConfig:
    """Parameters every scheme shares.

    Attributes:
        num_keys: number of trigger images in the key (default 100).
        source_class: class whose clean training images carry the trigger (default 1:
            the paper stamps "automobile" images for CIFAR-10 and digit "1" for MNIST).
        target_class: key label the watermarked model must answer (default 0: the paper's
            "airplane" / digit "0").
    """

    num_keys: int = 100
    source_class: int = 1
    target_class: int = 0


ConfigT = TypeVar("ConfigT", bound=SchemeConfig)


class WatermarkScheme(ABC):
    """Base class: picks source images, calls :meth:`make_triggers`, packs a KeySet.

    Subclasses set ``name``, ``summary`` and ``config_class`` and implement
    :meth:`make_triggers` (and :meth:`pick_sources` if they do not stamp training images).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    config_class: ClassVar[type[SchemeConfig]] = SchemeConfig

    def __init__(self, config: SchemeConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()
        if not isinstance(self.config, self.config_class):
            raise TypeError(f"{self.name} expects a {self.config_class.__name__}")

    def generate(self, data: DataSplits, *, seed: int = 0, dataset: str = "") -> KeySet:
        """Make a key for models trained on ``data``; deterministic for a given ``seed``."""
        cfg = self.config
        num_classes = data.num_classes
        for field_name in ("source_class", "target_class"):
            value = getattr(cfg, field_name)
            if not 0 <= value < num_classes:
                raise ConfigError(
                    f"{field_name}={value} is out of range for a data set with {num_classes} "
                    f"classes; choose 0..{num_classes - 1}"
                )
        if cfg.num_keys < 1:
            raise ConfigError(f"num_keys must be at least 1, got {cfg.num_keys}")
        generator = torch.Generator().manual_seed(seed)
        originals = self.pick_sources(data, generator)
        triggers = self.make_triggers(originals, generator)
        labels = torch.full((len(triggers),), cfg.target_class, dtype=torch.int64)
        return KeySet(
            images=triggers,
            labels=labels,
            originals=originals,
            scheme=self.name,
            params=dataclasses.asdict(cfg),
            dataset=dataset or data.train.name,
            num_classes=num_classes,
            seed=seed,
        )

    def pick_sources(self, data: DataSplits, generator: torch.Generator) -> torch.Tensor:
        """Default: ``num_keys`` random training images of ``source_class`` (uint8 N×C×H×W)."""
        pool = data.train.of_class(self.config.source_class)
        if len(pool) < self.config.num_keys:
            raise ConfigError(
                f"class {self.config.source_class} has only {len(pool)} training images but "
                f"num_keys={self.config.num_keys}; lower num_keys or pick another source class"
            )
        order = torch.randperm(len(pool), generator=generator)[: self.config.num_keys]
        return pool.images[order.sort().values].clone()

    @abstractmethod
    def make_triggers(self, originals: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Turn clean ``uint8`` images into ``uint8`` trigger images of the same shape."""


_SCHEMES: dict[str, type[WatermarkScheme]] = {}
SchemeT = TypeVar("SchemeT", bound=type[WatermarkScheme])


def register_scheme(cls: SchemeT) -> SchemeT:
    """Class decorator that makes a scheme available by its ``name``."""
    if cls.name in _SCHEMES:
        raise ValueError(f"scheme {cls.name!r} is registered twice")
    _SCHEMES[cls.name] = cls
    return cls


def list_schemes() -> list[str]:
    """Names of all registered schemes, sorted."""
    return sorted(_SCHEMES)


def get_scheme_class(name: str) -> type[WatermarkScheme]:
    try:
        return _SCHEMES[name]
    except KeyError:
        raise ConfigError(
            f"unknown scheme {name!r}; choose one of: {', '.join(list_schemes())}"
        ) from None


def scheme_parameters(name: str) -> dict[str, tuple[str, Any]]:
    """``{parameter: (type name, default)}`` of a scheme, for help texts."""
    cls = get_scheme_class(name)
    hints = typing.get_type_hints(cls.config_class)
    return {
        f.name: (_type_name(hints[f.name]), f.default) for f in dataclasses.fields(cls.config_class)
    }


def create_scheme(name: str, **params: Any) -> WatermarkScheme:
    """Build a registered scheme; string parameter values are converted to the field types.

    Raises:
        ConfigError: unknown scheme, unknown parameter, or a value of the wrong type.
    """
    cls = get_scheme_class(name)
    hints = typing.get_type_hints(cls.config_class)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    values: dict[str, Any] = {}
    for key, raw in params.items():
        if key not in fields:
            raise ConfigError(
                f"scheme {name!r} has no parameter {key!r}; its parameters are: "
                f"{', '.join(sorted(fields))}"
            )
        values[key] = _convert(raw, hints[key], key) if isinstance(raw, str) else raw
    try:
        config = cls.config_class(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid parameters for scheme {name!r}: {exc}") from exc
    return cls(config)


def _type_name(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    return getattr(base, "__name__", str(base))


def _convert(raw: str, hint: Any, key: str) -> Any:
    """Convert a command-line string to the annotated type (int, float, str, Optional)."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "") and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    converters: dict[Any, Callable[[str], Any]] = {int: int, float: float, str: str}
    if hint is bool:
        if raw.lower() in ("1", "true", "yes"):
            return True
        if raw.lower() in ("0", "false", "no"):
            return False
        raise ConfigError(f"parameter {key} expects true/false, got {raw!r}")
    try:
        return converters[hint](raw)
    except (KeyError, ValueError):
        raise ConfigError(f"parameter {key} expects type {_type_name(hint)}, got {raw!r}") from None
