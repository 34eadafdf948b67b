"""Suspects reached through Python code: :class:`CallableSuspect` and :func:`load_adapter`.

For APIs that need custom code (signing, uploads, odd encodings): a user's function, object
or factory, loaded from "package.module:attr" or "path/to/file.py:attr", gets the uint8
images and returns one answer per image, validated by :func:`normalize_answers`. A factory
gets the suspect's URL and the command line's options, so one adapter serves any endpoint;
the evidence names the URL as the suspect's address and the adapter separately.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch

from ownmark.errors import ConfigError
from ownmark.verify.remote.answers import _image_batch, normalize_answers
from ownmark.verify.remote.encoding import WireFormat
from ownmark.verify.remote.transport import _one_line
from ownmark.verify.suspects import InputSpec, SuspectBase

__all__ = ["Adapter", "CallableSuspect", "load_adapter"]

#: A user's Python suspect: uint8 images (N×C×H×W numpy array) in, one answer per image out.
Adapter = Callable[[npt.NDArray[np.uint8]], object]


class CallableSuspect(SuspectBase):
    """A suspect reached through a Python function (or anything :func:`load_adapter` returns).

    ``fn`` gets a uint8 N×C×H×W numpy array (a copy) and returns one answer per image:
    labels or rows of scores (see :func:`normalize_answers`), or label names with
    ``wire.labels``. Its exceptions propagate; the verifier records them as errors.

    Args:
        fn: the adapter.
        address: the suspect's address, as the evidence names it (default "python adapter";
            the CLI passes ``--url``).
        adapter: the adapter's spec ("file.py:attr"), recorded beside the address (default
            None).
        wire: the options given on the command line (default :class:`WireFormat`); the
            adapter got them when it was made (:func:`load_adapter`), and ``labels`` map
            the names it answers to classes.
    """

    protocol = "python"

    def __init__(
        self,
        fn: Adapter,
        address: str = "python adapter",
        *,
        adapter: str | None = None,
        wire: WireFormat | None = None,
    ) -> None:
        if not callable(fn):
            raise ConfigError(f"the adapter must be callable, got {type(fn).__name__}")
        super().__init__(address)
        self._fn = fn
        self._adapter = adapter
        self._wire = wire if wire is not None else WireFormat()
        self._labels = self._wire.label_index()

    @property
    def requests_sent(self) -> int:
        return self.counters.requests_sent

    @property
    def images_sent(self) -> int:
        return self.counters.images_sent

    @property
    def retries_done(self) -> int:
        return 0

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(self._wire.encoding.to_dict())

    def options(self) -> dict[str, Any]:
        return {
            "adapter": self._adapter,
            "encoding": self._wire.encoding.to_dict(),
            "input_name": self._wire.input_name,
            "output_name": self._wire.output_name,
            "answer": self._wire.answer,
            "max_batch": self._wire.max_batch,
            "labels": None if self._wire.labels is None else list(self._wire.labels),
        }

    def check_input(self, image_shape: tuple[int, int, int]) -> None:
        """The encoding the adapter was given must fit the images."""
        self._wire.encoding.image_shape(image_shape)

    def _answer(self, images: torch.Tensor) -> Sequence[object]:
        batch = _image_batch(images)
        count = int(batch.shape[0])
        if count == 0:
            return []
        return normalize_answers(self._fn(batch), count, self._labels)

    def __enter__(self) -> CallableSuspect:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _import_file(path: Path) -> object:
    if not path.is_file():
        raise ConfigError(f"adapter file {path} does not exist")
    resolved = path.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    name = f"_ownmark_adapter_{digest}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ConfigError(f"adapter file {path} cannot be loaded as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(
            f"adapter file {path} failed to load: {type(exc).__name__}: {_one_line(exc)}"
        ) from exc
    return module


def _import_module(name: str) -> object:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and name != exc.name and not name.startswith(exc.name + "."):
            raise ConfigError(
                f"adapter module {name!r} needs module {exc.name!r}, which is not installed"
            ) from exc
        raise ConfigError(
            f"cannot import adapter module {name!r}; check the spec or install the package"
        ) from exc
    except Exception as exc:
        raise ConfigError(
            f"adapter module {name!r} failed to load: {type(exc).__name__}: {_one_line(exc)}"
        ) from exc


#: What a factory may take, by name: the suspect's URL and the command line's options.
_FACTORY_ARGUMENTS: Final = ("url", "options")


def _factory_arguments(fn: Callable[..., object]) -> tuple[set[str], set[str]] | None:
    """(required, accepted) names among :data:`_FACTORY_ARGUMENTS` when ``fn`` is a factory:
    every argument it requires is one of them. None when it requires others, or when Python
    cannot tell (builtins)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    required: set[str] = set()
    accepted: set[str] = set()
    for parameter in signature.parameters.values():
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if parameter.name in _FACTORY_ARGUMENTS:
            accepted.add(parameter.name)
        if parameter.default is inspect.Parameter.empty:
            if parameter.name not in _FACTORY_ARGUMENTS:
                return None
            required.add(parameter.name)
    return required, accepted


def _as_adapter(obj: object, spec: str, made: bool) -> Adapter:
    query: object = getattr(obj, "query", None)
    if callable(query):
        return query
    if callable(obj):
        return obj
    what = f"returned a {type(obj).__name__}" if made else f"is a {type(obj).__name__}"
    raise ConfigError(f"adapter {spec!r} {what}, not a callable or an object with .query()")


def load_adapter(
    spec: str, *, url: str | None = None, options: WireFormat | None = None
) -> Adapter:
    """Load a Python adapter from "package.module:attr" or "path/to/file.py:attr".

    ``attr`` may be dotted ("module:Class.method") and names one of:

    * a function taking the images (see :class:`CallableSuspect`): used as is;
    * an object with a ``.query(images)`` method: its ``.query`` is used;
    * a class, or a factory function: it is called once and its result (an object with
      ``.query``, or a callable) is used. It gets, as keyword arguments, those of ``url``
      (the suspect's address, ``--url``) and ``options`` (the :class:`WireFormat` of the
      command line's ``--input-datatype``, ``--scale``, ``--labels``, ...) that it takes.

    A function is taken as a factory exactly when every argument it requires is named
    ``url`` or ``options`` (so one that requires none is a factory too).

    Raises:
        ConfigError: the spec is malformed, or the module, file or attribute is missing, or
            what it names cannot answer queries, or it needs a URL and none was given.
    """
    where, colon, attr = spec.rpartition(":")
    if not colon or not where or not attr:
        raise ConfigError(
            f"adapter spec {spec!r} must be 'package.module:attr' or 'path/to/file.py:attr'"
        )
    is_file = where.endswith(".py") or "/" in where or os.sep in where
    module = _import_file(Path(where)) if is_file else _import_module(where)
    obj: object = module
    for part in attr.split("."):
        if not part.isidentifier() or not hasattr(obj, part):
            raise ConfigError(f"adapter {where!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    made = False
    factory = _factory_arguments(obj) if callable(obj) else None
    if factory is not None and (inspect.isclass(obj) or inspect.isroutine(obj)):
        required, accepted = factory
        if "url" in required and url is None:
            raise ConfigError(f"the adapter {spec!r} needs the suspect's URL; pass --url")
        given: dict[str, object] = {"url": url, "options": options or WireFormat()}
        kwargs = {name: given[name] for name in accepted if given[name] is not None}
        made = True
        try:
            obj = obj(**kwargs)
        except Exception as exc:
            raise ConfigError(
                f"cannot create the adapter {spec!r}: {type(exc).__name__}: {_one_line(exc)}"
            ) from exc
    elif inspect.isclass(obj):
        raise ConfigError(
            f"cannot create the adapter {spec!r} without arguments other than url and options"
        )
    return _as_adapter(obj, spec, made)
