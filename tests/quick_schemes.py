"""Parameters that keep a scheme's keygen quick on the built-in digits (shared by the tests
that run every registered scheme): DeepStego trains its encoder with a proxy host at keygen,
a minute at its defaults; here a short warm-up and one epoch on 200 images. UDH trains
its hiding and reveal networks (800 steps by default; 20 here)."""

from __future__ import annotations

from typing import Any

QUICK_SCHEME: dict[str, dict[str, Any]] = {
    "stego": {"encoder_steps": 5, "joint_epochs": 1, "joint_images": 200},
    "udh": {"hide_steps": 20, "calibration_images": 20},
}


def quick(name: str) -> dict[str, Any]:
    """The quick parameters of scheme ``name`` (none for most schemes)."""
    return dict(QUICK_SCHEME.get(name, {}))
