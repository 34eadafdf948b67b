"""One registry shape for everything ownmark enumerates by name.

Schemes, attacks, models, data sets, suspect protocols and server backends each live in a
:class:`Registry`. An entry is a name, a one-line summary and a factory whose parameters
are typed: either a class with a frozen ``config_class`` dataclass (schemes, attacks) or a
plain callable whose keyword arguments are annotated (models, data sets). The registry turns
command-line strings (``-p rate=0.5``) into those types, so the CLI, ``ownmark list`` and
the contract tests are generated from it (like timm's ``list_models`` / ``create_model``).

Example::

    from ownmark.attacks import ATTACKS
    ATTACKS.names()                     # ['finetune', 'prune', ...]
    ATTACKS.params("prune")             # {'rate': Param(type='float', default=0.5, ...)}
    prune = ATTACKS.create("prune", rate="0.3")
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ownmark.errors import ConfigError

T = TypeVar("T")
C = TypeVar("C", bound=Callable[..., Any])


@dataclass(frozen=True)
class Param:
    """One parameter of a registered entry, for help texts and string conversion."""

    name: str
    type: str
    default: Any
    hint: Any = dataclasses.field(repr=False, compare=False)
    required: bool = False


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered factory: ``factory(**params) -> T``."""

    name: str
    summary: str
    factory: Callable[..., T]
    params: dict[str, Param]
    #: What was registered (the class, or the factory function itself).
    target: Any = None


class Registry(Generic[T]):
    """Name -> typed factory, with string conversion of parameters.

    Args:
        kind: what the entries are, for error messages ("scheme", "attack", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, cls: C) -> C:
        """Class decorator: registers ``cls`` under ``cls.name`` with ``cls.summary``.

        The parameters are the fields of ``cls.config_class`` when it has one (the class is
        then built as ``cls(config_class(**params))``), else ``cls.__init__``'s keywords.
        """
        name, summary = cls.name, cls.summary  # type: ignore[attr-defined]
        config_class = getattr(cls, "config_class", None)
        if config_class is not None:

            def build(**params: Any) -> Any:
                try:
                    config = config_class(**params)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(
                        f"invalid parameters for {self.kind} {name!r}: {exc}"
                    ) from exc
                return cls(config)

            self.add(name, summary, build, params=dataclass_params(config_class), target=cls)
        else:
            self.add(name, summary, cls, params=signature_params(cls))
        return cls

    def add(
        self,
        name: str,
        summary: str,
        factory: Callable[..., T],
        *,
        params: dict[str, Param] | None = None,
        target: Any = None,
    ) -> None:
        """Register ``factory`` under ``name`` (parameters from its signature by default)."""
        if not name or ":" in name or name in self._entries:
            raise ValueError(f"{self.kind} name {name!r} is empty, has ':' or is registered twice")
        if params is None:
            params = signature_params(factory)
        self._entries[name] = Entry(name, summary, factory, params, target or factory)

    def remove(self, name: str) -> None:
        """Unregister ``name`` (tests that register a temporary entry clean up with it)."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[name] for name in self.names())

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def params(self, name: str) -> dict[str, Param]:
        return self.entry(name).params

    def parse(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` with string values converted to the parameters' declared types.

        Raises:
            ConfigError: an unknown parameter, or a value that is not of its type.
        """
        declared = self.params(name)
        values: dict[str, Any] = {}
        for key, raw in params.items():
            if key not in declared:
                raise ConfigError(
                    f"{self.kind} {name!r} has no parameter {key!r}; its parameters are: "
                    f"{', '.join(sorted(declared)) or 'none'}"
                )
            values[key] = convert(raw, declared[key].hint, key) if isinstance(raw, str) else raw
        return values

    def create(self, name: str, **params: Any) -> T:
        """Build entry ``name``; string values are converted to the declared types."""
        return self.entry(name).factory(**self.parse(name, params))


def dataclass_params(config_class: type) -> dict[str, Param]:
    """The fields of a config dataclass as :class:`Param` records."""
    hints = typing.get_type_hints(config_class)
    out = {}
    for f in dataclasses.fields(config_class):
        if not f.init:
            continue
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = (
            None
            if missing
            else f.default
            if f.default is not dataclasses.MISSING
            else f.default_factory()  # type: ignore[operator]
        )
        out[f.name] = Param(f.name, type_name(hints[f.name]), default, hints[f.name], missing)
    return out


def signature_params(factory: Callable[..., Any]) -> dict[str, Param]:
    """The annotated keyword parameters of a callable as :class:`Param` records."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target)
    except (NameError, TypeError):
        hints = {}
    out = {}
    for p in inspect.signature(factory).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "self":
            continue
        hint = hints.get(p.name, str)
        missing = p.default is inspect.Parameter.empty
        out[p.name] = Param(p.name, type_name(hint), None if missing else p.default, hint, missing)
    return out


def type_name(hint: Any) -> str:
    """A short name of a type hint (``int | None`` -> ``int``)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args and typing.get_origin(hint) in (typing.Union, types.UnionType) else hint
    return getattr(base, "__name__", str(base))


def convert(raw: str, hint: Any, key: str) -> Any:
    """Convert a command-line string to the annotated type (int, float, str, bool, Optional)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if raw.lower() in ("none", "") and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if raw.lower() in ("1", "true", "yes"):
            return True
        if raw.lower() in ("0", "false", "no"):
            return False
        raise ConfigError(f"parameter {key} expects true/false, got {raw!r}")
    converters: dict[Any, Callable[[str], Any]] = {int: int, float: float, str: str}
    if hint not in converters:
        return raw  # a type the command line cannot spell: the factory validates it
    try:
        return converters[hint](raw)
    except ValueError:
        raise ConfigError(f"parameter {key} expects type {type_name(hint)}, got {raw!r}") from None


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """``rate=0.1..0.9`` → ("rate", [0.1, 0.2, …, 0.9]); ``rate=0.1..0.9:0.2``, ``epochs=1,2,5``.

    A range of integers steps by 1 unless a step is given; any other range by 0.1. Values
    stay strings: the attack's registry entry converts them to the parameter's type.
    """
    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise ConfigError(f"a sweep looks like NAME=0.1..0.9 or NAME=1,2,5, got {text!r}")
    name = name.strip().replace("-", "_")
    if ".." not in spec:
        return name, [v.strip() for v in spec.split(",") if v.strip()]
    bounds, _, step_text = spec.partition(":")
    lo_text, _, hi_text = bounds.partition("..")
    integers = all(v.strip().lstrip("-").isdigit() for v in (lo_text, hi_text, step_text or "1"))
    try:
        lo, hi = float(lo_text), float(hi_text)
        step = float(step_text) if step_text else (1.0 if integers else 0.1)
    except ValueError:
        raise ConfigError(f"a sweep range {spec!r} is not LOW..HIGH[:STEP] of numbers") from None
    if hi < lo or step <= 0:
        raise ConfigError(f"a sweep range {spec!r} runs backwards or has a step <= 0")
    count = math.floor((hi - lo) / step + 1e-9) + 1
    if count > 1000:
        raise ConfigError(f"a sweep {text!r} has {count} values; at most 1000")
    values = [lo + step * i for i in range(count)]
    return name, [str(int(v)) if integers else repr(round(v, 10)) for v in values]


def import_plugins(modules: Iterable[str]) -> None:
    """Import each module (they register schemes, attacks... when imported).

    Raises:
        ConfigError: a module cannot be imported (the message names it).
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(
                f"cannot import plugin module {module!r}: {exc}; check the name and that it "
                "is installed (or on PYTHONPATH)"
            ) from exc
