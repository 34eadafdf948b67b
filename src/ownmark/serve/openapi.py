"""The OpenAPI description of the infer route and of the error answers.

FastAPI cannot see the infer request's shape (the handler reads the raw body, to bound its
size and time), so :func:`_infer_openapi` writes its JSON schema by hand;
:func:`_error_responses` documents the ``{"error": ...}`` body of each error status.
"""

from __future__ import annotations

from typing import Any

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}


def _infer_openapi(
    image_shape: tuple[int, int, int], max_batch: int, outputs: tuple[str, ...]
) -> dict[str, Any]:
    """JSON schema of the infer request, so API tools know its shape."""
    c, h, w = image_shape
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "enum": ["images"]},
            "shape": {
                "type": "array",
                "minItems": 4,
                "maxItems": 4,
                "prefixItems": [
                    {"type": "integer", "minimum": 1, "maximum": max_batch},
                    {"type": "integer", "enum": [c]},
                    {"type": "integer", "enum": [h]},
                    {"type": "integer", "enum": [w]},
                ],
            },
            "datatype": {"type": "string", "enum": ["UINT8"]},
            "data": {
                "type": "array",
                "description": "N*C*H*W pixels 0..255, flat row-major or nested like 'shape'",
                "items": {
                    "anyOf": [{"type": "integer", "minimum": 0, "maximum": 255}, {"type": "array"}]
                },
            },
            "parameters": {"type": "object"},
        },
    }
    request = {
        "type": "object",
        "required": ["inputs"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": tensor},
            "outputs": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "enum": list(outputs)},
                        "parameters": {"type": "object"},
                    },
                },
            },
        },
    }
    output_tensor = {
        "type": "object",
        "required": ["name", "datatype", "shape", "data"],
        "properties": {
            "name": {"type": "string", "enum": list(outputs)},
            "datatype": {"type": "string", "enum": ["INT64", "FP32"]},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "data": {"type": "array", "items": {"type": "number"}},
        },
    }
    response = {
        "type": "object",
        "required": ["model_name", "model_version", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": output_tensor},
        },
    }
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
        "responses": {
            "200": {
                "description": "Inference response",
                "content": {"application/json": {"schema": response}},
            },
        },
    }


_ERROR_TEXTS = {
    400: "Malformed request",
    401: "Missing or wrong bearer token",
    404: "Unknown model or version",
    408: "The request body did not arrive in time (the connection is closed)",
    413: "Request body or batch too large",
    422: "Invalid path parameter",
    500: "The model failed, or produced non-finite or (label, topk) tied top scores",
    503: "Too many inference requests in flight; see Retry-After",
}


def _error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses, all with the ``{"error": ...}`` body."""
    return {
        status: {
            "description": _ERROR_TEXTS[status],
            "content": {"application/json": {"schema": _ERROR_SCHEMA}},
        }
        for status in statuses
    }
