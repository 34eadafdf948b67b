"""A real RFC 3161 time-stamping authority on 127.0.0.1, for tests.

The certificates are made here with ``cryptography`` (a throwaway root CA and a TSA certificate
it issued, extendedKeyUsage critical timeStamping); the replies are made by OpenSSL's own TSA,
``openssl ts -reply``, behind a small ``http.server`` thread that speaks the RFC 3161 HTTP
transport (POST ``application/timestamp-query`` -> ``application/timestamp-reply``).

Besides the honest TSA at ``url``, ``url_for(mode)`` gives endpoints that misbehave on purpose:

* ``http500``       answers HTTP 500;
* ``garbage``       answers 200 with bytes that are not a TimeStampResp;
* ``reject``        passes OpenSSL a query for a digest it does not accept, so OpenSSL itself
                    answers with status rejection (badAlg);
* ``wrong-imprint`` has OpenSSL stamp the query with one bit of its imprint flipped
                    (a valid, signed token over another digest, with the right nonce);
* ``wrong-nonce``   has OpenSSL stamp the query with its nonce changed;
* ``slow``          answers correctly, but only after ``SLOW_SECONDS``.

``openssl`` must be on PATH: Debian ships it, and CI runs on the same image. Without it,
:func:`start_tsa` raises with a message that says so (the tests fail, they do not skip).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TSA_POLICY = "1.3.6.1.4.1.55555.1.1"
TSA_COMMON_NAME = "ownmark test TSA"
CA_COMMON_NAME = "ownmark test root CA"

MODES = ("ok", "http500", "garbage", "reject", "wrong-imprint", "wrong-nonce", "slow")
SLOW_SECONDS = 2.0

# DER prefix of a SHA-256 MessageImprint in a TimeStampReq made by any client:
# AlgorithmIdentifier { sha256, NULL } followed by the OCTET STRING header of a 32-byte digest.
_SHA256_OID = bytes.fromhex("0609608648016503040201")
_SHA384_OID = bytes.fromhex("0609608648016503040202")
_IMPRINT_HEADER = bytes.fromhex("0420")

_OPENSSL_CONFIG = """\
[ tsa ]
default_tsa = tsa_config

[ tsa_config ]
dir = {dir}
serial = $dir/tsaserial
crypto_device = builtin
signer_cert = $dir/tsa.pem
certs = $dir/chain.pem
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = {policy}
digests = sha256, sha512
accuracy = secs:1
clock_precision_digits = 0
ordering = no
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _new_key(key_type: str) -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"key_type must be 'ec' or 'rsa', not {key_type!r}")


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=not ca,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def issue_certificate(
    directory: Path,
    stem: str,
    name: x509.Name,
    *,
    ca: bool,
    issuer: tuple[x509.Certificate, PrivateKey] | None = None,
    key_type: str = "ec",
    path_length: int | None = 0,
    timestamping: bool = False,
) -> tuple[x509.Certificate, PrivateKey, Path]:
    """A certificate (self-signed when ``issuer`` is None), written as ``{stem}.pem`` and
    ``{stem}.key`` (PEM) into ``directory``; ``timestamping`` adds the critical extended key
    usage timeStamping that a TSA certificate needs (and that TSA intermediates often carry)."""
    key = _new_key(key_type)
    issuer_cert, issuer_key = issuer if issuer is not None else (None, key)
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
        .add_extension(_key_usage(ca=ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    if timestamping:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_path = directory / f"{stem}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key, cert_path


def _cn(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(directory: Path, common_name: str = CA_COMMON_NAME) -> tuple[Path, Path]:
    """A self-signed root CA, written as ``ca.pem`` and ``ca.key`` (PEM) into ``directory``."""
    _cert, _key, cert_path = issue_certificate(
        directory, "ca", _cn(common_name), ca=True, path_length=1
    )
    return cert_path, directory / "ca.key"


def _flip_after(data: bytes, marker: bytes, offset: int) -> bytes:
    """``data`` with one bit flipped ``offset`` bytes after the end of ``marker``."""
    at = data.find(marker)
    if at < 0:
        raise ValueError("query is not a SHA-256 TimeStampReq")
    i = at + len(marker) + offset
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


def tamper_query(query: bytes, mode: str) -> bytes:
    """The query a misbehaving TSA stamps instead of the one it received."""
    imprint_at = query.find(_SHA256_OID + b"\x05\x00" + _IMPRINT_HEADER)
    if mode == "wrong-imprint":
        return _flip_after(query, _SHA256_OID + b"\x05\x00" + _IMPRINT_HEADER, 31)
    if mode == "wrong-nonce":
        # After the 32-byte digest comes the nonce: INTEGER (0x02), length, value.
        nonce_at = imprint_at + len(_SHA256_OID) + 2 + len(_IMPRINT_HEADER) + 32
        if imprint_at < 0 or query[nonce_at] != 0x02:
            raise ValueError("query has no nonce")
        return query[: nonce_at + 2] + bytes([query[nonce_at + 2] ^ 0x01]) + query[nonce_at + 3 :]
    if mode == "reject":
        # SHA-384 is not in the TSA's accepted digests: OpenSSL answers status rejection.
        return query.replace(_SHA256_OID, _SHA384_OID, 1)
    return query


class TestTSA:
    """A running TSA. Use :func:`start_tsa`; call :meth:`close` when done."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(
        self, directory: Path, openssl: str, *, key_type: str = "ec", intermediate: bool = False
    ) -> None:
        self.directory = directory
        self.openssl = openssl
        root = issue_certificate(directory, "ca", _cn(CA_COMMON_NAME), ca=True, path_length=1)
        self.ca_cert_path, self.ca_key_path = root[2], directory / "ca.key"
        issuer = root
        if intermediate:
            # Like public TSAs: an intermediate restricted to time stamping issues the TSA.
            issuer = issue_certificate(
                directory,
                "intermediate",
                _cn("ownmark test timestamping CA"),
                ca=True,
                issuer=root[:2],
                key_type=key_type,
                timestamping=True,
            )
        tsa_name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ownmark tests"),
                x509.NameAttribute(NameOID.COMMON_NAME, TSA_COMMON_NAME),
            ]
        )
        *_, self.tsa_cert_path = issue_certificate(
            directory, "tsa", tsa_name, ca=False, issuer=issuer[:2], key_type=key_type,
            timestamping=True,
        )  # fmt: skip
        # The chain OpenSSL puts into each token next to the signer certificate: the issuer
        # (the root itself when there is no intermediate).
        (directory / "chain.pem").write_bytes(issuer[2].read_bytes())
        (directory / "tsaserial").write_text("01\n")
        self.config_path = directory / "openssl-tsa.cnf"
        self.config_path.write_text(_OPENSSL_CONFIG.format(dir=directory, policy=TSA_POLICY))
        self._lock = threading.Lock()  # openssl ts -reply updates the serial file
        self.requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}/"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="test-tsa", daemon=True
        )
        self._thread.start()

    def url_for(self, mode: str) -> str:
        """The URL of an endpoint that behaves as ``mode`` (one of :data:`MODES`)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
        return self.url if mode == "ok" else f"{self.url}{mode}"

    def reply(self, query: bytes) -> bytes:
        """OpenSSL's TimeStampResp (DER) to a TimeStampReq (DER)."""
        with self._lock, tempfile.TemporaryDirectory(dir=self.directory) as tmp:
            query_path, reply_path = Path(tmp) / "query.tsq", Path(tmp) / "reply.tsr"
            query_path.write_bytes(query)
            done = subprocess.run(
                [
                    self.openssl,
                    "ts",
                    "-reply",
                    "-config",
                    str(self.config_path),
                    "-queryfile",
                    str(query_path),
                    "-out",
                    str(reply_path),
                ],
                capture_output=True,
                timeout=30,
                check=False,
            )
            if done.returncode != 0 or not reply_path.exists():
                raise RuntimeError(
                    "openssl ts -reply failed: " + done.stderr.decode(errors="replace").strip()
                )
            self.requests += 1
            return reply_path.read_bytes()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        tsa = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output quiet

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                query = self.rfile.read(length)
                mode = self.path.strip("/") or "ok"
                if mode not in MODES:
                    self._send(404, b"no such endpoint\n", "text/plain")
                    return
                if mode == "http500":
                    self._send(500, b"internal error\n", "text/plain")
                    return
                if mode == "garbage":
                    self._send(200, b"<html>this is not a TimeStampResp</html>", "text/html")
                    return
                if self.headers.get("Content-Type") != "application/timestamp-query":
                    self._send(415, b"expected application/timestamp-query\n", "text/plain")
                    return
                if mode == "slow":
                    time.sleep(SLOW_SECONDS)
                try:
                    body = tsa.reply(tamper_query(query, mode))
                except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                    self._send(400, f"{exc}\n".encode(), "text/plain")
                    return
                # The client may have given up waiting (the "slow" endpoint).
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._send(200, body, "application/timestamp-reply")

        return Handler

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_tsa(directory: Path, *, key_type: str = "ec", intermediate: bool = False) -> TestTSA:
    """Make certificates in ``directory`` and start a TSA there; fails clearly without openssl.

    ``key_type`` "ec" (P-256) or "rsa" (2048, PKCS#1 v1.5 signatures); ``intermediate`` puts an
    intermediate CA (extended key usage timeStamping) between the root and the TSA."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError(
            "the test TSA needs the openssl command-line tool (openssl ts -reply), which is not "
            "on PATH; install it (Debian: apt-get install openssl)"
        )
    return TestTSA(directory, openssl, key_type=key_type, intermediate=intermediate)
