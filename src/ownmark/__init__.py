"""ownmark: watermark image classifiers and prove ownership through their prediction API."""

from __future__ import annotations

__version__ = "0.2.0"
