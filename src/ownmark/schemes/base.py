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

**What a scheme owns** (hooks whose defaults are Zhang et al.'s):

- :meth:`~WatermarkScheme.make_triggers` (required): clean images -> trigger images;
- :meth:`~WatermarkScheme.pick_sources`: which images become triggers, and the decoys;
- :meth:`~WatermarkScheme.make_secrets`: learned parts and secrets (an encoder's weights, a
  noise pattern), made at keygen and stored in the key's commitment-covered ``extra``
  tensors, never in the model file;
- :meth:`~WatermarkScheme.objective`: the training loss that embeds the key (default
  cross-entropy on the mix, :func:`ownmark.train.cross_entropy`);
- ``extra_classes``: outputs the host model gets beyond the data's classes (0, or 1 for a
  new-label key);
- :meth:`~WatermarkScheme.matches`: how a suspect's answer to a key query is scored, the one
  definition that verification, evidence checking and calibration use;
- :meth:`~WatermarkScheme.fresh_triggers`: new trigger samples made with the key's recipe
  (the papers' generalisation tests).

Adding a scheme: subclass ``WatermarkScheme[MyConfig]`` with a frozen ``MyConfig``
dataclass deriving from :class:`SchemeConfig` (validating its fields in ``__post_init__``),
and decorate it with :func:`register_scheme`. The CLI, ``ownmark list``, the robustness
matrix and the contract tests pick it up from :data:`SCHEMES`.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import torch

from ownmark.data.base import DataSplits
from ownmark.errors import ConfigError
from ownmark.keys import KeySet
from ownmark.registry import Registry

if TYPE_CHECKING:
    from ownmark.train import Objective


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

    def __post_init__(self) -> None:
        # Range checks against the data set's classes happen in generate(), which knows it.
        if self.num_keys < 1:
            raise ConfigError(f"num_keys must be at least 1, got {self.num_keys}")
        if self.num_decoys is not None and self.num_decoys < 0:
            raise ConfigError(f"num_decoys must be >= 0, got {self.num_decoys}")

    def require_fractions(self, *names: str) -> None:
        """For subclasses' ``__post_init__``: each field named lies in (0, 1]."""
        for name in names:
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"{name} must lie in (0, 1], got {value}")

    def require_weights(self, *names: str) -> None:
        """For subclasses' ``__post_init__``: each field named is a finite number >= 0."""
        for name in names:
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}")


ConfigT = TypeVar("ConfigT", bound=SchemeConfig)


class WatermarkScheme(ABC, Generic[ConfigT]):
    """Base class: picks source images, calls :meth:`make_triggers`, packs a KeySet.

    Subclasses set ``name``, ``summary`` and ``config_class`` and implement
    :meth:`make_triggers` (and :meth:`pick_sources` if they do not stamp training images).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    config_class: ClassVar[type[SchemeConfig]] = SchemeConfig
    #: Outputs the host model gets beyond the data set's classes (a new-label key: 1).
    extra_classes: ClassVar[int] = 0

    def __init__(self, config: ConfigT | None = None) -> None:
        self.config: ConfigT = config if config is not None else self.config_class()  # type: ignore[assignment]
        if not isinstance(self.config, self.config_class):
            raise TypeError(f"{self.name} expects a {self.config_class.__name__}")
        #: The key's learned parts and secrets (see :meth:`make_secrets`).
        self.secrets: dict[str, torch.Tensor] = {}

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
        seed_source = "secret" if seed is None else "given"
        seed = secrets.randbits(63) if seed is None else seed
        generator = torch.Generator().manual_seed(seed)
        label_map = self.label_map(num_classes, generator)
        # The same scheme with every secret drawn: it makes this key's images.
        resolved = type(self)(self.resolve_secrets(data.image_shape, generator))
        originals, labels, decoys, decoy_labels = resolved.pick_sources(data, label_map, generator)
        resolved.secrets = resolved.make_secrets(data, originals, generator)
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
            extra_classes=self.extra_classes,
            extra=dict(resolved.secrets),
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
    ) -> ConfigT:
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

    def make_secrets(
        self, data: DataSplits, originals: torch.Tensor, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Learned parts and secret tensors of a new key, stored in ``KeySet.extra``.

        Called at keygen on the resolved scheme, after :meth:`pick_sources` and before
        :meth:`make_triggers` (which reads them from ``self.secrets``). Default: none.
        """
        return {}

    def objective(self, key: KeySet) -> Objective | None:
        """The training loss that embeds ``key``; None (default): cross-entropy on the mix."""
        return None

    def identity(self, key: KeySet) -> dict[str, Any] | None:
        """A second verification leg computed from the key alone (UDH: the copyright image
        revealed from the triggers), recorded in the evidence and re-checked by
        ``evidence check``; a dict with at least ``passed``, ``measure``, ``mean``, ``min``,
        ``threshold``, ``share_above`` and ``required_share``. Default: None (no such leg).
        """
        return None

    def matches(self, answers: torch.Tensor, key_labels: torch.Tensor) -> torch.Tensor:
        """Which answers (top-1 labels) to key queries count as the watermark (bool tensor).

        Default: the answer is the key label. This is the one definition of a match that
        verification, evidence checking and calibration use.
        """
        return answers == key_labels

    def fresh_triggers(
        self, key: KeySet, data: DataSplits, count: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` new trigger images made with ``key``'s recipe, and their key labels.

        Default (schemes that mark ordinary images): test images of the key's source
        classes, never used for the key, passed through :meth:`make_triggers` with the key's
        secrets, labelled by the key's label map. Call it on :func:`scheme_for_key`'s result.
        """
        label_map = {int(k): int(v) for k, v in key.params.get("label_map", {}).items()}
        if not label_map:
            raise ConfigError(f"scheme {self.name!r} cannot make fresh triggers for this key")
        pools = [data.test.of_class(c) for c in sorted(label_map)]
        images = torch.cat([p.images for p in pools])
        classes = torch.cat([p.labels for p in pools])
        rows = torch.randperm(len(images), generator=generator)[:count]
        triggers = self.make_triggers(images[rows], generator)
        labels = torch.tensor([label_map[int(c)] for c in classes[rows]], dtype=torch.int64)
        return triggers, labels

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


SCHEMES: Registry[WatermarkScheme[Any]] = Registry("scheme")
#: Class decorator that makes a scheme available by its ``name``.
register_scheme = SCHEMES.register


def list_schemes() -> list[str]:
    """Names of all registered schemes, sorted."""
    return SCHEMES.names()


def get_scheme_class(name: str) -> type[WatermarkScheme[Any]]:
    cls: type[WatermarkScheme[Any]] = SCHEMES.entry(name).target
    return cls


def scheme_parameters(name: str) -> dict[str, tuple[str, Any]]:
    """``{parameter: (type name, default)}`` of a scheme, for help texts."""
    return {k: (p.type, p.default) for k, p in SCHEMES.params(name).items()}


def create_scheme(name: str, **params: Any) -> WatermarkScheme[Any]:
    """Build a registered scheme; string parameter values are converted to the field types.

    Raises:
        ConfigError: unknown scheme, unknown parameter, or a value of the wrong type.
    """
    return SCHEMES.create(name, **params)


def scheme_for_key(key: KeySet) -> WatermarkScheme[Any]:
    """The registered scheme that made ``key``, configured with the key's resolved parameters."""
    cls = get_scheme_class(key.scheme)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    scheme = cls(cls.config_class(**{k: v for k, v in key.params.items() if k in fields}))
    scheme.secrets = dict(key.extra)
    return scheme


def _match_rule(key: KeySet) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The key's scheme's :meth:`~WatermarkScheme.matches`, built once.

    A key whose scheme is not registered here (a forged key, a plugin not imported) is
    scored by the base rule, the answer equals the key label.
    """
    if key.scheme not in SCHEMES:
        return torch.eq
    return scheme_for_key(key).matches


def key_matches(key: KeySet, answers: torch.Tensor, key_labels: torch.Tensor) -> torch.Tensor:
    """Which of ``answers`` count as the watermark, by the key's scheme's :meth:`matches`."""
    return _match_rule(key)(answers, key_labels)


def label_lookup(label_map: Mapping[Any, Any], num_classes: int) -> torch.Tensor:
    """Key label of each class (int64, ``num_classes``) from a label map (keys and values
    ints or their strings, as a key file stores them); -1 for classes without a trigger."""
    lookup = torch.full((num_classes,), -1, dtype=torch.int64)
    for source, target in label_map.items():
        lookup[int(source)] = int(target)
    return lookup


def key_label_lookup(key: KeySet) -> torch.Tensor:
    """:func:`label_lookup` of the key's label map."""
    return label_lookup(key.params.get("label_map", {}), key.num_classes)


def source_rows(
    labels: torch.Tensor, is_key: torch.Tensor, lookup: torch.Tensor, share: float
) -> torch.Tensor:
    """Indices of the first ``share`` of a batch's clean rows whose class carries a trigger
    (``lookup`` as :func:`key_label_lookup`): the rows a scheme's objective turns into
    triggers on the fly."""
    lookup = lookup.to(labels.device)
    carries = lookup[labels.clamp(max=len(lookup) - 1)] >= 0
    candidates = ((~is_key) & carries).nonzero().squeeze(1)
    return candidates[: round(share * len(candidates))]


def key_identity(key: KeySet) -> dict[str, Any] | None:
    """The key's scheme's second verification leg (:meth:`WatermarkScheme.identity`); None
    for schemes without one and for keys whose scheme is not registered here (a forged key,
    a plugin not imported)."""
    if key.scheme not in SCHEMES:
        return None
    return scheme_for_key(key).identity(key)


def answer_matcher(key: KeySet) -> Callable[[int | None, int], bool]:
    """``(label, key_label) -> bool`` for single answers (``None``: no valid label), with the
    key's scheme resolved once, for loops over a verification's queries."""
    rule = _match_rule(key)

    def matches(label: int | None, key_label: int) -> bool:
        if label is None:
            return False
        return bool(rule(torch.tensor([label]), torch.tensor([key_label]))[0])

    return matches
