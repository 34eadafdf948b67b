"""Suspects reached through Python code: :class:`CallableSuspect` and :func:`load_adapter`.

For APIs that need custom code (signing, uploads, odd encodings): a user's function, object
or factory, loaded from "package.module:attr" or "path/to/file.py:attr", gets the uint8
images and returns one answer per image, validated by :func:`normalize_answers`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt
import torch

from ownmark.errors import ConfigError
from ownmark.verify.remote.answers import Answer, _image_batch, normalize_answers
from ownmark.verify.remote.transport import _one_line

__all__ = ["Adapter", "CallableSuspect", "load_adapter"]

#: A user's Python suspect: uint8 images (N×C×H×W numpy array) in, one answer per image out.
Adapter = Callable[[npt.NDArray[np.uint8]], object]


class CallableSuspect:
    """A suspect reached through a Python function (or anything :func:`load_adapter` returns).

    ``fn`` gets a uint8 N×C×H×W numpy array (a copy) and returns one answer per image:
    labels or rows of scores (see :func:`normalize_answers`). Its exceptions propagate; the
    verifier records them as errors.

    Args:
        fn: the adapter.
        address: how the suspect is named in results (default "python adapter").
    """

    protocol = "python"

    def __init__(self, fn: Adapter, address: str = "python adapter") -> None:
        if not callable(fn):
            raise ConfigError(f"the adapter must be callable, got {type(fn).__name__}")
        self._fn = fn
        self._address = address
        self.requests_sent = 0
        self.images_sent = 0
        self.retries_done = 0

    @property
    def address(self) -> str:
        return self._address

    def query(self, images: torch.Tensor) -> list[Answer]:
        batch = _image_batch(images)
        count = int(batch.shape[0])
        if count == 0:
            return []
        self.requests_sent += 1
        self.images_sent += count
        return normalize_answers(self._fn(batch), count)

    def close(self) -> None:
        """Nothing to release; here so every suspect can be closed alike."""

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


def _required_arguments(fn: Callable[..., object]) -> int | None:
    """How many arguments ``fn`` requires, or None when Python cannot tell (builtins)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(
        p.kind in kinds and p.default is inspect.Parameter.empty
        for p in signature.parameters.values()
    )


def _as_adapter(obj: object, spec: str, made: bool) -> Adapter:
    query: object = getattr(obj, "query", None)
    if callable(query):
        return query
    if callable(obj):
        return obj
    what = f"returned a {type(obj).__name__}" if made else f"is a {type(obj).__name__}"
    raise ConfigError(f"adapter {spec!r} {what}, not a callable or an object with .query()")


def load_adapter(spec: str) -> Adapter:
    """Load a Python adapter from "package.module:attr" or "path/to/file.py:attr".

    ``attr`` may be dotted ("module:Class.method") and names one of:

    * a function taking the images (see :class:`CallableSuspect`): used as is;
    * an object with a ``.query(images)`` method: its ``.query`` is used;
    * a class, or a factory function taking no arguments: it is called once and its
      result (an object with ``.query``, or a callable) is used.

    A function is taken as a factory exactly when it requires no arguments.

    Raises:
        ConfigError: the spec is malformed, or the module, file or attribute is missing, or
            what it names cannot answer queries.
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
    if inspect.isclass(obj) or (inspect.isroutine(obj) and _required_arguments(obj) == 0):
        made = True
        try:
            obj = obj()
        except Exception as exc:
            raise ConfigError(
                f"cannot create the adapter {spec!r} without arguments: "
                f"{type(exc).__name__}: {_one_line(exc)}"
            ) from exc
    return _as_adapter(obj, spec, made)
