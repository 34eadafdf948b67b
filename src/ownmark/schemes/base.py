"""The shared base of every watermark scheme, and the scheme registry.

A scheme turns clean data into a :class:`~ownmark.keys.KeySet`: trigger images labelled
with a key label, plus a control group of ordinary images (decoys) of the same classes.

**Owner secrets.** Zhang et al.'s parameters (stamp "TEST" on a "1", answer "0") are public:
a model that learnt "a stamp at the bottom of a 1 means 0" answers every key of that family,
so another owner with the same defaults would "prove" ownership of it. So every parameter
left at ``None`` is drawn from the key's secret (a fresh :mod:`secrets` seed unless one is
given): by default the key samples come from **every** class and each class ``c`` is mapped
to a secret key label ``pi(c)`` (a random derangement, so a clean model's right answer is
never the key label), and each scheme draws its own trigger secrets (content: the text and
its place; noise: the pattern; unrelated: which label each source image gets). Another
owner's key then agrees with ours on a class's label only by chance (about 1 in K-1), which
calibration measures on models carrying other keys. The paper's setting stays available by
giving the parameters explicitly (``source_class=1, target_class=0, text="TEST"``).

Embedding (training on data mixed with the key) and verification
(querying a suspect with the key) are the same for every scheme and live elsewhere
(:mod:`ownmark.train`, :mod:`ownmark.verify`), like foolbox keeps criteria apart from attacks.

Adding a scheme: subclass :class:`WatermarkScheme`, give it a frozen ``Config`` dataclass
deriving from :class:`SchemeConfig`, and decorate it with :func:`register_scheme`. The CLI
and the test-suite pick it up from the registry.
"""

from __future__ import annotations

import dataclasses
import secrets
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
        source_class: class whose clean training images carry the trigger; None (default):
            every class, each with its own secret key label. The paper stamps digit "1"
            (MNIST) or "automobile" (CIFAR-10): ``source_class=1``.
        target_class: key label the watermarked model must answer; None (default): secret
            (a random derangement of the classes, or a random label other than
            ``source_class`` when only that is given). The paper's: ``target_class=0``.
        num_decoys: ordinary images of the source classes stored with the key as the
            control group of verification; None (default): twice ``num_keys`` (one per key
            query at the default budget, with room to spare), or as many as the classes
            hold beside the key samples.
    """

    num_keys: int = 100
    source_class: int | None = None
    target_class: int | None = None
    num_decoys: int | None = None


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

    def generate(self, data: DataSplits, *, seed: int | None = None, dataset: str = "") -> KeySet:
        """Make a key for models trained on ``data``.

        Args:
            data: the training data (key and decoy images are drawn from its train split).
            seed: None (default) draws a fresh secret with :mod:`secrets`; an integer makes
                the key reproducible, for experiments only: anyone who knows the seed and
                the parameters can make the same key.
            dataset: the data set's name to record (default: the train split's name).
        """
        cfg = self.config
        num_classes = data.num_classes
        for field_name in ("source_class", "target_class"):
            value = getattr(cfg, field_name)
            if value is not None and not 0 <= value < num_classes:
                raise ConfigError(
                    f"{field_name}={value} is out of range for a data set with {num_classes} "
                    f"classes; choose 0..{num_classes - 1}"
                )
        if cfg.num_keys < 1:
            raise ConfigError(f"num_keys must be at least 1, got {cfg.num_keys}")
        if cfg.num_decoys is not None and cfg.num_decoys < 0:
            raise ConfigError(f"num_decoys must be >= 0, got {cfg.num_decoys}")
        seed_source = "secret" if seed is None else "given"
        seed = secrets.randbits(63) if seed is None else seed
        generator = torch.Generator().manual_seed(seed)
        label_map = self.label_map(num_classes, generator)
        # The same scheme with every secret drawn: it makes this key's images.
        resolved = type(self)(self.resolve_secrets(data.image_shape, generator))
        originals, labels, decoys, decoy_labels = resolved.pick_sources(data, label_map, generator)
        triggers = resolved.make_triggers(originals, generator)
        decoy_key_labels = self.decoy_key_labels(decoy_labels, labels, label_map, generator)
        params: dict[str, Any] = dataclasses.asdict(resolved.config)
        params["label_map"] = {str(k): v for k, v in sorted(label_map.items())}
        # What came from the secret: the label map, and trigger parameters drawn for None.
        params["secret"] = sorted(
            name
            for name, value in dataclasses.asdict(cfg).items()
            if value is None
            and name != "num_decoys"
            and (params[name] is not None or name in ("source_class", "target_class"))
        )
        return KeySet(
            images=triggers,
            labels=labels,
            originals=originals,
            scheme=self.name,
            params=params,
            dataset=dataset or data.train.name,
            num_classes=num_classes,
            seed=seed,
            seed_source=seed_source,
            decoys=decoys,
            decoy_labels=decoy_labels,
            decoy_key_labels=decoy_key_labels,
        )

    def label_map(self, num_classes: int, generator: torch.Generator) -> dict[int, int]:
        """Key label of each source class: given by the parameters or drawn from the secret."""
        source, target = self.config.source_class, self.config.target_class
        if num_classes < 2:
            raise ConfigError("a key needs a data set with at least 2 classes")
        if source is not None and target is not None:
            return {source: target}
        if source is not None:
            others = [c for c in range(num_classes) if c != source]
            return {source: others[int(torch.randint(len(others), (1,), generator=generator))]}
        if target is not None:
            return {c: target for c in range(num_classes) if c != target}
        # A uniformly random derangement (rejection sampling: about e tries).
        while True:
            perm = torch.randperm(num_classes, generator=generator)
            if not bool((perm == torch.arange(num_classes)).any()):
                return {c: int(perm[c]) for c in range(num_classes)}

    def resolve_secrets(
        self, image_shape: tuple[int, int, int], generator: torch.Generator
    ) -> SchemeConfig:
        """The config with every secret (None) trigger parameter drawn from ``generator``.

        Default: nothing to draw (the label map is drawn by :meth:`label_map`).
        """
        return self.config

    def pick_sources(
        self, data: DataSplits, label_map: dict[int, int], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clean images to turn into triggers, their key labels, and decoys with true labels.

        Default: ``num_keys`` training images spread evenly over the source classes (the
        keys of ``label_map``), each labelled with its class's key label, and ``num_decoys``
        *other* training images of the same classes as the control group.
        """
        cfg = self.config
        classes = sorted(label_map)
        originals, true_classes, decoys, decoy_labels = draw_by_class(
            data, classes, cfg.num_keys, cfg.num_decoys, generator
        )
        labels = torch.tensor([label_map[int(c)] for c in true_classes], dtype=torch.int64)
        return originals, labels, decoys, decoy_labels

    def decoy_key_labels(
        self,
        decoy_labels: torch.Tensor,
        key_labels: torch.Tensor,
        label_map: dict[int, int],
        generator: torch.Generator,
    ) -> torch.Tensor:
        """The key label each decoy would get from a model that ignored the trigger.

        Its class's key label where the label map has one; otherwise (out-of-distribution
        keys) the label of a random key sample. Verification compares the suspect's rate of
        key labels on key images with this rate on decoys: a model (or a broken API) that
        answers key labels whatever it is shown scores both alike.
        """
        picks = torch.randint(len(key_labels), (len(decoy_labels),), generator=generator)
        out = key_labels[picks].clone()
        for i, label in enumerate(decoy_labels.tolist()):
            if label in label_map:
                out[i] = label_map[label]
        return out

    @abstractmethod
    def make_triggers(self, originals: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Turn clean ``uint8`` images into ``uint8`` trigger images of the same shape."""


def draw_by_class(
    data: DataSplits,
    classes: list[int],
    num_keys: int,
    num_decoys: int | None,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``num_keys`` and ``num_decoys`` distinct training images spread evenly over ``classes``.

    Returns (key images, their classes, decoy images, their classes); within each class the
    key and decoy images never overlap. Classes that get one more image than the others
    (the remainder) are chosen at random. ``num_decoys=None``: up to ``2 * num_keys`` (at
    least 200), as many as each class holds beside its key samples.
    """

    def shares(total: int) -> list[int]:
        base, extra = divmod(total, len(classes))
        lucky = set(torch.randperm(len(classes), generator=generator)[:extra].tolist())
        return [base + (i in lucky) for i in range(len(classes))]

    wanted = num_decoys if num_decoys is not None else max(2 * num_keys, 200)
    key_counts, decoy_counts = shares(num_keys), shares(wanted)
    parts: list[tuple[torch.Tensor, ...]] = []
    for label, n_key, n_decoy in zip(classes, key_counts, decoy_counts, strict=True):
        pool = data.train.of_class(label)
        if num_decoys is None:
            n_decoy = max(0, min(n_decoy, len(pool) - n_key))
        if len(pool) < n_key + n_decoy:
            raise ConfigError(
                f"class {label} has {len(pool)} training images but the key needs {n_key} "
                f"key and {n_decoy} decoy images of it; lower num_keys or num_decoys"
            )
        order = torch.randperm(len(pool), generator=generator)
        key_rows, decoy_rows = order[:n_key].sort().values, order[n_key : n_key + n_decoy]
        parts.append(
            (
                pool.images[key_rows],
                pool.labels[key_rows],
                pool.images[decoy_rows],
                pool.labels[decoy_rows],
            )
        )
    images, labels, decoys, decoy_labels = (torch.cat(col) for col in zip(*parts, strict=True))
    return images.clone(), labels.clone(), decoys.clone(), decoy_labels.clone()


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
