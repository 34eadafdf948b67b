"""Answer encoding: the model's probabilities out as v2 output tensors, or a 500.

:func:`_check_scores` refuses to answer from non-finite scores, or (in the ``label`` and
``topk`` modes) from tied top scores, whose label would be an arbitrary tie-break;
:func:`_outputs` builds the ``label``, ``topk_labels``, ``topk_scores`` and
``probabilities`` outputs, and :func:`_output_metadata` describes them.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ownmark.serve.responses import _ApiError

_SERVER_LOGGER = logging.getLogger("ownmark.serve")


def _output_names(answer: str) -> tuple[str, ...]:
    return {
        "label": ("label",),
        "topk": ("label", "topk_labels", "topk_scores"),
        "probabilities": ("probabilities",),
    }[answer]


def _output_metadata(answer: str, k: int, num_classes: int) -> list[dict[str, Any]]:
    specs = {
        "label": ("INT64", [-1]),
        "topk_labels": ("INT64", [-1, k]),
        "topk_scores": ("FP32", [-1, k]),
        "probabilities": ("FP32", [-1, num_classes]),
    }
    return [
        {"name": name, "datatype": specs[name][0], "shape": specs[name][1]}
        for name in _output_names(answer)
    ]


def _rows_text(rows: list[int]) -> str:
    shown = ", ".join(map(str, rows[:10]))
    return shown + (f", ... ({len(rows)} in all)" if len(rows) > 10 else "")


def _non_finite(rows: list[int]) -> _ApiError:
    _SERVER_LOGGER.error("the model produced non-finite scores for image(s) %s", _rows_text(rows))
    return _ApiError(
        500,
        f"the model produced non-finite scores (NaN or infinity) for image(s) {_rows_text(rows)} "
        "of this request; a broken model gives no answer",
    )


def _check_scores(proba: np.ndarray, answer: str) -> None:
    """500 unless every row is finite and, for label and topk answers, has one top class.

    A row whose top two probabilities are equal has no label: ``argmax`` would answer the
    lower class index, the same arbitrary class for every such image (a uniform output, e.g.
    of a model pruned to nothing, is "class 0" everywhere). The probabilities answer carries
    the tie itself, so it goes out as it is and the client decides.
    """
    if proba.ndim != 2 or len(proba) == 0:
        return
    finite = np.isfinite(proba).all(axis=1)
    if not finite.all():
        raise _non_finite([int(i) for i in np.flatnonzero(~finite)])
    if answer == "probabilities" or proba.shape[1] < 2:
        return
    top2 = np.partition(proba, -2, axis=1)[:, -2:]
    tied = top2[:, 0] == top2[:, 1]
    if tied.any():
        rows = [int(i) for i in np.flatnonzero(tied)]
        _SERVER_LOGGER.warning("the model's top scores tie for image(s) %s", _rows_text(rows))
        raise _ApiError(
            500,
            f"the model's top scores tie for image(s) {_rows_text(rows)} of this request, so "
            "it names no class for them; rather than an arbitrary tie-break no label is "
            "answered (the probabilities answer mode shows the scores)",
        )


def _outputs(proba: np.ndarray, names: tuple[str, ...], k: int) -> list[dict[str, Any]]:
    n, num_classes = proba.shape
    result: list[dict[str, Any]] = []
    order: np.ndarray | None = None
    if "topk_labels" in names or "topk_scores" in names:
        # Stable sort: among equal scores the lower class comes first, as in argmax.
        order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    for name in names:
        if name == "label":
            result.append(
                {
                    "name": "label",
                    "datatype": "INT64",
                    "shape": [n],
                    "data": proba.argmax(axis=1).tolist(),
                }
            )
        elif name == "topk_labels" and order is not None:
            data = order.reshape(-1).tolist()
            result.append({"name": name, "datatype": "INT64", "shape": [n, k], "data": data})
        elif name == "topk_scores" and order is not None:
            scores = np.take_along_axis(proba, order, axis=1).reshape(-1).tolist()
            result.append({"name": name, "datatype": "FP32", "shape": [n, k], "data": scores})
        elif name == "probabilities":
            data = proba.reshape(-1).tolist()
            result.append(
                {"name": name, "datatype": "FP32", "shape": [n, num_classes], "data": data}
            )
    return result
