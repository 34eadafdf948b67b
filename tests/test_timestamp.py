"""RFC 3161 timestamps over a key's commitment, against a real TSA (OpenSSL's) on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ownmark.errors import OwnmarkError
from ownmark.timestamp import (
    TimestampError,
    TimestampInfo,
    decode_token,
    encode_token,
    request_timestamp,
    verify_timestamp,
)
from tsa import (
    SLOW_SECONDS,
    TSA_COMMON_NAME,
    TSA_POLICY,
    TestTSA,
    make_ca,
    start_tsa,
    tamper_query,
)

COMMITMENT = hashlib.sha256(b"ownmark key commitment").hexdigest()
OTHER = hashlib.sha256(b"another key").hexdigest()


@pytest.fixture(scope="module")
def token(tsa: TestTSA) -> bytes:
    return request_timestamp(COMMITMENT, tsa.url)


@pytest.fixture(scope="module")
def unrelated_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cert, _key = make_ca(tmp_path_factory.mktemp("unrelated-ca"), "someone else's CA")
    return cert


@pytest.fixture(scope="module")
def rsa_tsa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestTSA]:
    """The shape of public TSAs: RSA keys, the TSA issued by an intermediate CA that is itself
    restricted to time stamping; tokens carry the TSA and intermediate certificates."""
    server = start_tsa(tmp_path_factory.mktemp("rsa-tsa"), key_type="rsa", intermediate=True)
    yield server
    server.close()


def _fails(match: str, call: object, *args: object, **kwargs: object) -> TimestampError:
    """The TimestampError ``call`` raises: its message matches and is one line."""
    assert callable(call)
    with pytest.raises(TimestampError, match=match) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and 0 < len(message) < 400, message
    return info.value


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_token_verifies_and_says_when_and_by_whom(tsa: TestTSA, token: bytes) -> None:
    info = verify_timestamp(token, COMMITMENT)
    assert isinstance(info, TimestampInfo)
    assert info.time.tzinfo is not None and info.time.utcoffset() == dt.timedelta(0)
    assert abs(info.time - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=1)
    assert TSA_COMMON_NAME in info.tsa
    assert info.policy == TSA_POLICY
    assert info.digest_hex == COMMITMENT
    assert info.serial > 0
    assert info.url is None
    # Upper-case hex names the same digest.
    assert verify_timestamp(token, COMMITMENT.upper()).serial == info.serial


def test_each_request_gets_its_own_token(tsa: TestTSA, token: bytes) -> None:
    again = request_timestamp(COMMITMENT, tsa.url)
    assert again != token
    assert verify_timestamp(again, COMMITMENT).serial != verify_timestamp(token, COMMITMENT).serial


def test_token_does_not_verify_for_another_digest(token: bytes) -> None:
    _fails("covers digest .* not ", verify_timestamp, token, OTHER)


def test_tampered_signature_fails(token: bytes) -> None:
    # The token ends with the SignerInfo's signature (OpenSSL adds no unsigned attributes):
    # flipping its last bit keeps the DER well formed and breaks the signature.
    _fails("signature does not verify", verify_timestamp, _flip(token, len(token) - 1), COMMITMENT)


def test_backdated_token_fails(token: bytes) -> None:
    """Editing the stamped time (what a forger back-dating a key would do) breaks the token."""
    gen_time = token.find(b"\x18\x0f")  # GeneralizedTime, 15 characters: YYYYMMDDhhmmssZ
    assert gen_time > 0
    year = gen_time + 2 + 3  # last digit of the year
    _fails("altered", verify_timestamp, _flip(token, year), COMMITMENT)


def test_trusted_ca_verifies_and_unrelated_ca_fails(
    tsa: TestTSA, token: bytes, unrelated_ca: Path
) -> None:
    info = verify_timestamp(token, COMMITMENT, trusted_certs=[tsa.ca_cert_path])
    assert TSA_COMMON_NAME in info.tsa
    # The TSA's own certificate can be pinned instead of its CA.
    verify_timestamp(token, COMMITMENT, trusted_certs=[tsa.tsa_cert_path])
    # Among several trusted certificates, one is enough.
    verify_timestamp(token, COMMITMENT, trusted_certs=[unrelated_ca, tsa.ca_cert_path])
    _fails("does not chain", verify_timestamp, token, COMMITMENT, trusted_certs=[unrelated_ca])


def test_rsa_tsa_under_an_intermediate(rsa_tsa: TestTSA, tsa: TestTSA, unrelated_ca: Path) -> None:
    token = request_timestamp(COMMITMENT, rsa_tsa.url, certificate=rsa_tsa.ca_cert_path)
    info = verify_timestamp(token, COMMITMENT, trusted_certs=[rsa_tsa.ca_cert_path])
    assert TSA_COMMON_NAME in info.tsa
    # The intermediate can be the anchor too; another root cannot, even one of the same name.
    verify_timestamp(token, COMMITMENT, trusted_certs=[rsa_tsa.directory / "intermediate.pem"])
    _fails("does not chain", verify_timestamp, token, COMMITMENT, trusted_certs=[unrelated_ca])
    _fails("does not chain", verify_timestamp, token, COMMITMENT,
           trusted_certs=[tsa.ca_cert_path])  # fmt: skip
    _fails("signature does not verify", verify_timestamp, _flip(token, len(token) - 1),
           COMMITMENT, trusted_certs=[rsa_tsa.ca_cert_path])  # fmt: skip


def test_bad_trusted_certificate_arguments(token: bytes, tmp_path: Path) -> None:
    _fails("no trusted certificates", verify_timestamp, token, COMMITMENT, trusted_certs=[])
    missing = tmp_path / "missing.pem"
    _fails("cannot read the certificate file", verify_timestamp, token, COMMITMENT,
           trusted_certs=[missing])  # fmt: skip
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    _fails("not a PEM or DER", verify_timestamp, token, COMMITMENT, trusted_certs=[junk])


def test_request_checks_against_the_given_certificate(tsa: TestTSA, unrelated_ca: Path) -> None:
    token = request_timestamp(COMMITMENT, tsa.url, certificate=tsa.ca_cert_path)
    verify_timestamp(token, COMMITMENT, trusted_certs=[tsa.ca_cert_path])
    _fails("does not chain", request_timestamp, COMMITMENT, tsa.url, certificate=unrelated_ca)


def test_unreachable_tsa_fails_quickly() -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    _fails("cannot reach the TSA", request_timestamp, COMMITMENT, f"http://127.0.0.1:{port}/",
           timeout=5)  # fmt: skip
    assert time.monotonic() - started < 5


def test_slow_tsa_times_out(tsa: TestTSA) -> None:
    started = time.monotonic()
    _fails("did not answer within 0.3 s", request_timestamp, COMMITMENT, tsa.url_for("slow"),
           timeout=0.3)  # fmt: skip
    assert time.monotonic() - started < SLOW_SECONDS


@pytest.mark.parametrize(
    ("mode", "match"),
    [
        ("http500", "answered HTTP 500"),
        ("garbage", "did not answer with an RFC 3161 TimeStampResp"),
        ("reject", "refused the request: status rejection .*bad_alg"),
        ("wrong-imprint", "token for another digest"),
        ("wrong-nonce", "nonce mismatch"),
    ],
)
def test_misbehaving_tsa_is_refused(tsa: TestTSA, mode: str, match: str) -> None:
    started = time.monotonic()
    _fails(match, request_timestamp, COMMITMENT, tsa.url_for(mode), timeout=5)
    assert time.monotonic() - started < 5


def test_wrong_imprint_token_is_a_real_token(tsa: TestTSA) -> None:
    """The refused wrong-imprint reply is a well-signed token, just not for our digest: the
    refusal comes from the imprint check, not from a broken reply."""
    from asn1crypto import tsp

    query = tsp.TimeStampReq(
        {
            "version": "v1",
            "message_imprint": {
                "hash_algorithm": {"algorithm": "sha256"},
                "hashed_message": bytes.fromhex(COMMITMENT),
            },
            "nonce": 12345,
            "cert_req": True,
        }
    ).dump()
    reply = tsa.reply(tamper_query(query, "wrong-imprint"))
    tampered = bytearray(bytes.fromhex(COMMITMENT))
    tampered[-1] ^= 0x01
    info = verify_timestamp(reply, tampered.hex(), trusted_certs=[tsa.ca_cert_path])
    assert info.digest_hex == tampered.hex()
    _fails("covers digest", verify_timestamp, reply, COMMITMENT)


def test_openssl_agrees(tsa: TestTSA, token: bytes, tmp_path: Path) -> None:
    """The same imprint convention as OpenSSL's: its query verifies here as a whole response,
    and our token verifies with ``openssl ts -verify -digest``."""
    openssl = shutil.which("openssl")
    assert openssl is not None
    query_path = tmp_path / "query.tsq"
    subprocess.run(
        [openssl, "ts", "-query", "-digest", COMMITMENT, "-sha256", "-cert", "-out",
         str(query_path)],
        check=True, capture_output=True,
    )  # fmt: skip
    response = tsa.reply(query_path.read_bytes())
    info = verify_timestamp(response, COMMITMENT, trusted_certs=[tsa.ca_cert_path])
    assert TSA_COMMON_NAME in info.tsa

    token_path = tmp_path / "token.der"
    token_path.write_bytes(token)
    done = subprocess.run(
        [openssl, "ts", "-verify", "-digest", COMMITMENT, "-token_in", "-in", str(token_path),
         "-CAfile", str(tsa.ca_cert_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and "Verification: OK" in done.stdout, done.stdout + done.stderr


def test_base64_round_trip(token: bytes) -> None:
    text = encode_token(token)
    assert isinstance(text, str) and "\n" not in text
    assert decode_token(text) == token
    wrapped = "\n".join(text[i : i + 64] for i in range(0, len(text), 64))
    assert decode_token(wrapped) == token
    assert verify_timestamp(decode_token(text), COMMITMENT).digest_hex == COMMITMENT
    _fails("not valid base64", decode_token, "not*base64!")
    _fails("empty", decode_token, "")


@pytest.mark.parametrize(
    "digest", ["", "ab" * 31, "zz" * 32, COMMITMENT + "00", hashlib.sha1(b"x").hexdigest()]
)
def test_bad_digest_is_refused_before_any_request(digest: str) -> None:
    # The URL is never contacted: the digest is checked first.
    _fails("64 hex characters", request_timestamp, digest, "http://127.0.0.1:9/")
    _fails("64 hex characters", verify_timestamp, b"\x30\x00", digest)


def test_garbage_token_is_refused(token: bytes) -> None:
    _fails("not an RFC 3161", verify_timestamp, b"not a token at all", COMMITMENT)
    _fails("not an RFC 3161|malformed", verify_timestamp, token[: len(token) // 2], COMMITMENT)
    assert issubclass(TimestampError, OwnmarkError)


def test_missing_library_is_reported_only_when_called(
    monkeypatch: pytest.MonkeyPatch, token: bytes
) -> None:
    for name in [m for m in sys.modules if m == "asn1crypto" or m.startswith("asn1crypto.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "asn1crypto", None)
    # Importing the module needs nothing optional.
    code = "import sys; sys.modules['asn1crypto'] = None; import ownmark.timestamp"
    subprocess.run([sys.executable, "-c", code], check=True)
    _fails(r"pip install 'ownmark\[timestamp\]'", verify_timestamp, token, COMMITMENT)
    _fails(r"pip install 'ownmark\[timestamp\]'", request_timestamp, COMMITMENT,
           "http://127.0.0.1:9/")  # fmt: skip
