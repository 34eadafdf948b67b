"""RFC 3161 trusted timestamps over a key's commitment.

A key file's ``created`` field is written by whoever made the file, so it proves nothing about
when the key existed: a forger can build a key after the fact from adversarial examples of a
stolen model and back-date it. A timestamp token from a time-stamping authority (TSA) that the
verifier trusts does prove it: the TSA signs "this digest existed at this time", and the digest is
the key's commitment, which the key cannot be changed to match afterwards.

What is stamped: the commitment is a hex SHA-256 string; its 32 raw bytes are sent as the
message imprint with hash algorithm SHA-256 (the same request as
``openssl ts -query -digest HEX -sha256 -cert``), so anyone can check a token with OpenSSL too::

    openssl ts -verify -digest HEX -token_in -in token.der -CAfile tsa-ca.pem

Tokens are the DER ``TimeStampToken`` (a CMS ``ContentInfo``, what RFC 3161 calls the token), not
the whole ``TimeStampResp``; :func:`verify_timestamp` accepts either. :func:`encode_token` and
:func:`decode_token` turn them into base64 text for string metadata.

Verification (:func:`verify_timestamp`) checks, in this order: the imprint is SHA-256 of exactly
the given digest; the token's one signer certificate (found by the SignerInfo's identifier among
the certificates in the token and those given) signed the signed attributes; those attributes
bind the signature to this TSTInfo (content type and message digest) and to this certificate
(ESS signing-certificate attribute, RFC 5035); the certificate is a TSA certificate (critical
extended key usage timeStamping, RFC 3161 2.3) valid at the stamped time; and, when trusted
certificates are given, it chains to one of them at the stamped time (a TSA certificate itself
may be given, which pins it). Without trusted certificates a token only proves that whoever holds
the key of the certificate inside it stamped the digest, which anyone can fake: pass the TSA's CA
to prove a time.

Library: ``asn1crypto`` (ASN.1 structures of TSP/CMS/X.509) with ``cryptography`` (signature and
certificate path validation, ``cryptography.x509.verification``), the optional extra
``ownmark[timestamp]``. ``rfc3161-client`` (Trail of Bits), the other maintained candidate, was
tried first and set aside because, at 1.0.9, (1) its strict-DER parser refuses replies from
OpenSSL's own TSA as soon as they carry the CA chain (OpenSSL writes the CMS certificate SET
unsorted: "InvalidSetOrdering"), (2) it can only build a request by hashing data itself, not
over an existing digest such as the commitment, and (3) it cannot check a token without a trust
root. ``rfc3161ng`` is unmaintained since 2020. asn1crypto is lenient about such encodings (it
keeps the original bytes, which is what the signature covers) and works fully offline; it ships
no type hints, so it is imported through :mod:`importlib` and used as ``Any`` here.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import importlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ownmark.errors import OwnmarkError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

__all__ = [
    "TimestampError",
    "TimestampInfo",
    "decode_token",
    "encode_token",
    "request_timestamp",
    "verify_timestamp",
]

INSTALL_HINT = "pip install 'ownmark[timestamp]'"

# Digests accepted for the TSA's signature over its signed attributes (SHA-1 and MD5 are refused).
_SIGNATURE_HASHES = ("sha224", "sha256", "sha384", "sha512", "sha3_256", "sha3_384", "sha3_512")


class TimestampError(OwnmarkError):
    """A timestamp cannot be obtained, or a token does not prove what it claims."""


@dataclass(frozen=True)
class TimestampInfo:
    """What a verified timestamp token attests."""

    time: dt.datetime  # the TSA's genTime (UTC, aware)
    tsa: str  # subject of the TSA's signing certificate, RFC 4514 ("CN=...,O=...")
    serial: int  # the token's serial number (unique per TSA)
    policy: str  # the TSA policy OID under which it was issued, dotted
    digest_hex: str  # the imprint it covers (hex SHA-256, lower case)
    url: str | None = None  # where it came from, if known (verify_timestamp cannot know)


def encode_token(token: bytes) -> str:
    """A token as base64 text (standard alphabet, one line), for string metadata."""
    return base64.b64encode(token).decode("ascii")


def decode_token(text: str) -> bytes:
    """The token bytes from :func:`encode_token`'s text (whitespace and line breaks ignored)."""
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TimestampError(f"a timestamp token is not valid base64 text ({exc})") from exc
    if not data:
        raise TimestampError("a timestamp token is empty")
    return data


def request_timestamp(
    digest_hex: str,
    url: str,
    *,
    timeout: float = 10.0,
    certificate: Path | None = None,
) -> bytes:
    """Ask the TSA at ``url`` for a timestamp token over the SHA-256 digest ``digest_hex``.

    Sends a TimeStampReq (RFC 3161 over HTTP: POST ``application/timestamp-query``) with the
    digest's 32 bytes as the SHA-256 imprint, a random 64-bit nonce and certReq set, and checks
    the reply: status granted, a token present, the imprint and nonce those of the request, and
    the token's signature valid (:func:`verify_timestamp`). ``certificate`` (PEM or DER file: the
    TSA's CA, or the TSA certificate itself) also requires the token to chain to it.

    Returns the DER TimeStampToken (the CMS ContentInfo, not the whole TimeStampResp).
    Raises :class:`TimestampError` with a one-line message on any failure: bad digest,
    unreachable TSA, HTTP error, unreadable reply, rejection, mismatch, bad signature.
    """
    digest = _digest_bytes(digest_hex)
    libs = _libs()
    nonce = secrets.randbits(64) | 1  # never 0: a nonce is a positive INTEGER
    query = libs.tsp.TimeStampReq(
        {
            "version": "v1",
            "message_imprint": {
                "hash_algorithm": {"algorithm": "sha256"},
                "hashed_message": digest,
            },
            "nonce": nonce,
            "cert_req": True,
        }
    ).dump()

    body = _post(url, query, timeout)
    try:
        response = libs.response.load(body, strict=True)
        status = str(response["status"]["status"].native)
        status_text = response["status"]["status_string"].native
        fail_info = response["status"]["fail_info"].native
        token_field = response["time_stamp_token"]
        has_token = not isinstance(token_field, libs.core.Void)
        token = token_field.dump() if has_token else b""
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise TimestampError(
            f"the TSA at {url} did not answer with an RFC 3161 TimeStampResp "
            f"({_short(exc)}); check the URL"
        ) from None
    if status not in ("granted", "granted_with_mods"):
        details = "; ".join(str(s) for s in status_text or ())
        if fail_info:
            details = f"{details}; failure {', '.join(sorted(fail_info))}".lstrip("; ")
        raise TimestampError(
            f"the TSA at {url} refused the request: status {status}"
            + (f" ({_one_line(details)})" if details else "")
        )
    if not has_token:
        raise TimestampError(f"the TSA at {url} granted the request but sent no token")

    parsed = _parse_token(token, libs)
    if parsed.imprint_algorithm != "sha256" or parsed.imprint != digest:
        raise TimestampError(
            f"the TSA at {url} answered with a token for another digest "
            f"({parsed.imprint_algorithm} {parsed.imprint.hex()}, asked for sha256 "
            f"{digest.hex()}); refusing it"
        )
    if parsed.nonce != nonce:
        raise TimestampError(
            f"the TSA at {url} answered with a token for another request (nonce mismatch); "
            "refusing it"
        )
    verify_timestamp(token, digest.hex(), trusted_certs=[certificate] if certificate else None)
    return token


def verify_timestamp(
    token: bytes,
    digest_hex: str,
    *,
    trusted_certs: Sequence[Path] | None = None,
) -> TimestampInfo:
    """Check that ``token`` timestamps the SHA-256 digest ``digest_hex``, and say what it attests.

    ``token`` is a DER TimeStampToken, or a whole TimeStampResp (status must be granted).
    ``trusted_certs`` are PEM or DER files (a PEM file may hold several certificates): CAs the
    TSA must chain to, or TSA certificates to pin. With ``None`` only the token's own consistency
    is checked (see the module docstring); an empty sequence is refused rather than read as
    "trust nothing" or "trust anything".

    Returns :class:`TimestampInfo` (``url`` None). Raises :class:`TimestampError` saying what
    failed.
    """
    digest = _digest_bytes(digest_hex)
    if trusted_certs is not None and len(trusted_certs) == 0:
        raise TimestampError(
            "no trusted certificates given to verify a timestamp; pass the TSA's CA certificate, "
            "or None to check the token's signature only"
        )
    libs = _libs()
    anchors = [cert for path in trusted_certs or () for cert in _load_certificates(Path(path))]
    parsed = _parse_token(_token_of(token, libs), libs)

    if parsed.imprint_algorithm != "sha256":
        raise TimestampError(
            f"the timestamp's imprint uses {parsed.imprint_algorithm}, not sha256; it does not "
            "cover a SHA-256 commitment"
        )
    if parsed.imprint != digest:
        raise TimestampError(
            f"the timestamp covers digest {parsed.imprint.hex()}, not {digest.hex()}: it was made "
            "for another commitment"
        )

    signer = _find_signer(parsed, anchors, libs)
    _check_signed_attributes(parsed, signer, libs)
    _check_signature(parsed, signer)
    _check_tsa_certificate(signer, parsed.gen_time)
    if trusted_certs is not None:
        _check_chain(signer, parsed.certificates, anchors, parsed.gen_time)

    return TimestampInfo(
        time=parsed.gen_time,
        tsa=signer.subject.rfc4514_string() or "(TSA certificate without a subject)",
        serial=parsed.serial,
        policy=parsed.policy,
        digest_hex=digest.hex(),
        url=None,
    )


# --------------------------------------------------------------------------------------------
# Internals


@dataclass(frozen=True)
class _Libs:
    """The optional libraries, imported on first use (asn1crypto has no type hints: Any)."""

    core: Any
    cms: Any
    tsp: Any
    x509: Any
    response: Any  # TimeStampResp with the token OPTIONAL (RFC 3161 2.4.2)


def _libs() -> _Libs:
    try:
        # ExtensionPolicy (custom certificate policies) is new in cryptography 45.
        from cryptography.x509.verification import ExtensionPolicy  # noqa: F401

        core, cms, tsp, x509 = (
            importlib.import_module(f"asn1crypto.{name}") for name in ("core", "cms", "tsp", "x509")
        )
    except ImportError as exc:
        raise TimestampError(
            f"timestamps need the asn1crypto and cryptography (>= 45) packages ({exc.name or exc} "
            f"is missing or too old): {INSTALL_HINT}"
        ) from None
    # asn1crypto 1.5.1 declares TimeStampResp.timeStampToken as required, so it cannot read a
    # rejection (status only); the same structure with the token optional, as the RFC has it.
    response = type(
        "TimeStampResp",
        (core.Sequence,),
        {
            "_fields": [
                ("status", tsp.PKIStatusInfo),
                ("time_stamp_token", cms.ContentInfo, {"optional": True}),
            ]
        },
    )
    return _Libs(core=core, cms=cms, tsp=tsp, x509=x509, response=response)


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(exc: BaseException) -> str:
    return _one_line(str(exc) or type(exc).__name__, 160)


def _digest_bytes(digest_hex: str) -> bytes:
    if not isinstance(digest_hex, str) or len(digest_hex) != 64:
        raise TimestampError(
            f"a commitment to timestamp must be 64 hex characters (SHA-256), got {digest_hex!r:.80}"
        )
    try:
        return bytes.fromhex(digest_hex)
    except ValueError:
        raise TimestampError(
            f"a commitment to timestamp must be 64 hex characters (SHA-256), got {digest_hex!r:.80}"
        ) from None


def _post(url: str, query: bytes, timeout: float) -> bytes:
    import httpx

    if not url.startswith(("http://", "https://")):
        raise TimestampError(f"a TSA URL must start with http:// or https://, got {url!r:.120}")
    try:
        reply = httpx.post(
            url,
            content=query,
            headers={
                "Content-Type": "application/timestamp-query",
                "Accept": "application/timestamp-reply",
            },
            timeout=timeout,
        )
    except httpx.TimeoutException:
        raise TimestampError(
            f"the TSA at {url} did not answer within {timeout:g} s; try again or raise the timeout"
        ) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise TimestampError(
            f"cannot reach the TSA at {url} ({type(exc).__name__}: {_short(exc)}); check the URL "
            "and the network"
        ) from None
    if reply.status_code != 200:
        raise TimestampError(
            f"the TSA at {url} answered HTTP {reply.status_code} {reply.reason_phrase}; "
            "check the URL, or try again later"
        )
    return reply.content


@dataclass(frozen=True)
class _Token:
    """The fields of a parsed TimeStampToken that verification needs (asn1crypto values: Any)."""

    imprint_algorithm: str
    imprint: bytes
    nonce: int | None
    gen_time: dt.datetime
    serial: int
    policy: str
    econtent: bytes  # the DER TSTInfo, as signed
    signer_info: Any
    certificates: tuple[x509.Certificate, ...]


def _token_of(data: bytes, libs: _Libs) -> bytes:
    """The DER TimeStampToken inside ``data`` (a token, or a whole TimeStampResp)."""
    if not isinstance(data, bytes | bytearray) or not data:
        raise TimestampError("a timestamp token is empty or not bytes")
    try:
        content_type = libs.cms.ContentInfo.load(bytes(data), strict=True)["content_type"].native
        if content_type is not None:
            return bytes(data)
    except (ValueError, TypeError, KeyError, IndexError):
        pass
    try:
        response = libs.response.load(bytes(data), strict=True)
        status = str(response["status"]["status"].native)
        token_field = response["time_stamp_token"]
        if isinstance(token_field, libs.core.Void):
            raise TimestampError(f"the timestamp response holds no token (status {status})")
        if status not in ("granted", "granted_with_mods"):
            raise TimestampError(f"the timestamp response was not granted (status {status})")
        return bytes(token_field.dump())
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise TimestampError(
            f"not an RFC 3161 timestamp token or response ({_short(exc)})"
        ) from None


def _parse_token(token: bytes, libs: _Libs) -> _Token:
    from cryptography import x509

    try:
        info = libs.cms.ContentInfo.load(token, strict=True)
        if info["content_type"].native != "signed_data":
            raise TimestampError(
                f"a timestamp token must be CMS signed data, not {info['content_type'].native}"
            )
        signed = info["content"]
        encap = signed["encap_content_info"]
        if encap["content_type"].native != "tst_info":
            raise TimestampError(
                f"the timestamp token signs {encap['content_type'].native}, not a TSTInfo"
            )
        econtent = bytes(encap["content"])
        tst = libs.tsp.TSTInfo.load(econtent, strict=True)
        imprint = tst["message_imprint"]
        nonce = tst["nonce"].native
        gen_time = tst["gen_time"].native
        if not isinstance(gen_time, dt.datetime):
            raise ValueError(f"genTime {gen_time!r} is not a date")
        signer_infos = signed["signer_infos"]
        if len(signer_infos) != 1:
            raise TimestampError(
                f"a timestamp token must have exactly one signer, this one has {len(signer_infos)}"
            )
        certificates: list[x509.Certificate] = []
        for choice in signed["certificates"] or ():
            if choice.name == "certificate":
                certificates.append(x509.load_der_x509_certificate(choice.chosen.dump()))
        return _Token(
            imprint_algorithm=str(imprint["hash_algorithm"]["algorithm"].native),
            imprint=bytes(imprint["hashed_message"].native),
            nonce=None if nonce is None else int(nonce),
            gen_time=(
                gen_time.replace(tzinfo=dt.timezone.utc)
                if gen_time.tzinfo is None
                else gen_time.astimezone(dt.timezone.utc)
            ),
            serial=int(tst["serial_number"].native),
            policy=str(tst["policy"].dotted),
            econtent=econtent,
            signer_info=signer_infos[0],
            certificates=tuple(certificates),
        )
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise TimestampError(f"the timestamp token is malformed ({_short(exc)})") from None


def _load_certificates(path: Path) -> list[x509.Certificate]:
    from cryptography import x509

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TimestampError(
            f"cannot read the certificate file {path} ({exc.strerror or exc}); check the path"
        ) from None
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise TimestampError(
            f"{path} is not a PEM or DER X.509 certificate ({_short(exc)})"
        ) from None
    return certs


def _find_signer(parsed: _Token, anchors: list[x509.Certificate], libs: _Libs) -> x509.Certificate:
    """The certificate the SignerInfo names, among the token's and the given certificates."""
    from cryptography.hazmat.primitives.serialization import Encoding

    sid = parsed.signer_info["sid"]
    seen: set[bytes] = set()
    for cert in (*parsed.certificates, *anchors):
        der = cert.public_bytes(Encoding.DER)
        if der in seen:
            continue
        seen.add(der)
        ours = libs.x509.Certificate.load(der)
        if sid.name == "issuer_and_serial_number":
            wanted = sid.chosen
            if (
                ours.serial_number == wanted["serial_number"].native
                and ours.issuer == wanted["issuer"]
            ):
                return cert
        elif (
            sid.name == "subject_key_identifier"
            and ours.key_identifier is not None
            and ours.key_identifier == sid.chosen.native
        ):
            return cert
    raise TimestampError(
        "the timestamp token's signer certificate is neither in the token nor among the "
        "certificates given; pass the TSA's certificate in trusted_certs"
    )


def _hash_by_name(name: str) -> hashes.HashAlgorithm:
    from cryptography.hazmat.primitives import hashes

    table: dict[str, type[hashes.HashAlgorithm]] = {
        "sha1": hashes.SHA1,
        "sha224": hashes.SHA224,
        "sha256": hashes.SHA256,
        "sha384": hashes.SHA384,
        "sha512": hashes.SHA512,
        "sha3_256": hashes.SHA3_256,
        "sha3_384": hashes.SHA3_384,
        "sha3_512": hashes.SHA3_512,
    }
    if name not in table:
        raise TimestampError(f"the timestamp uses the unsupported digest {name}")
    return table[name]()


def _check_signed_attributes(parsed: _Token, signer: x509.Certificate, libs: _Libs) -> None:
    """Content type, message digest and ESS signing certificate: RFC 5652 5.4, RFC 3161 2.4.1."""
    from cryptography.hazmat.primitives.serialization import Encoding

    si = parsed.signer_info
    digest_name = str(si["digest_algorithm"]["algorithm"].native)
    if digest_name not in _SIGNATURE_HASHES:
        raise TimestampError(
            f"the timestamp is signed over {digest_name}, which is too weak or unknown"
        )
    attrs = si["signed_attrs"]
    if isinstance(attrs, libs.core.Void) or len(attrs) == 0:
        raise TimestampError("the timestamp token has no signed attributes (RFC 3161 needs them)")
    found: dict[str, Any] = {}
    for attr in attrs:
        name = str(attr["type"].native)
        if name in found:
            raise TimestampError(f"the timestamp token repeats the signed attribute {name}")
        found[name] = attr["values"]

    content_type = found.get("content_type")
    if content_type is None or len(content_type) != 1 or content_type[0].native != "tst_info":
        raise TimestampError("the timestamp's signed content-type attribute is missing or wrong")
    message_digest = found.get("message_digest")
    if message_digest is None or len(message_digest) != 1:
        raise TimestampError("the timestamp's signed message-digest attribute is missing")
    if bytes(message_digest[0].native) != hashlib.new(digest_name, parsed.econtent).digest():
        raise TimestampError(
            "the timestamp's TSTInfo does not match its signed digest: the token was altered"
        )

    cert_der = signer.public_bytes(Encoding.DER)
    if "signing_certificate_v2" in found:
        ess = found["signing_certificate_v2"][0]["certs"][0]
        ess_hash = str(ess["hash_algorithm"]["algorithm"].native)
        if ess_hash not in ("sha1", *_SIGNATURE_HASHES):
            raise TimestampError(f"the timestamp's signing-certificate hash {ess_hash} is unknown")
    elif "signing_certificate" in found:
        ess = found["signing_certificate"][0]["certs"][0]
        ess_hash = "sha1"  # ESSCertID (v1) is SHA-1 by definition; it only names the certificate
    else:
        raise TimestampError(
            "the timestamp token does not name its signing certificate (no ESS signing-certificate "
            "attribute)"
        )
    if bytes(ess["cert_hash"].native) != hashlib.new(ess_hash, cert_der).digest():
        raise TimestampError(
            "the timestamp was signed for another certificate than the one it carries "
            "(ESS signing-certificate mismatch)"
        )


def _check_signature(parsed: _Token, signer: x509.Certificate) -> None:
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa

    si = parsed.signer_info
    # The signature covers the DER SET OF the signed attributes (RFC 5652 5.4): the bytes as
    # received, with the [0] IMPLICIT tag replaced by the SET tag.
    attrs = si["signed_attrs"]
    contents = bytes(attrs.contents)
    signed_bytes = b"\x31" + _der_length(len(contents)) + contents
    signature = bytes(si["signature"].native)
    algorithm = si["signature_algorithm"]
    digest_name = str(si["digest_algorithm"]["algorithm"].native)
    key = signer.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            if algorithm.signature_algo == "rsassa_pss":
                params = algorithm["parameters"]
                pss_hash = _hash_by_name(str(params["hash_algorithm"]["algorithm"].native))
                mgf_hash = _hash_by_name(
                    str(params["mask_gen_algorithm"]["parameters"]["algorithm"].native)
                )
                key.verify(
                    signature,
                    signed_bytes,
                    padding.PSS(
                        mgf=padding.MGF1(mgf_hash), salt_length=int(params["salt_length"].native)
                    ),
                    pss_hash,
                )
            else:
                key.verify(signature, signed_bytes, padding.PKCS1v15(), _hash_by_name(digest_name))
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, signed_bytes, ec.ECDSA(_hash_by_name(digest_name)))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, signed_bytes)
        elif isinstance(key, dsa.DSAPublicKey):
            key.verify(signature, signed_bytes, _hash_by_name(digest_name))
        else:
            raise TimestampError(
                f"the TSA's key type {type(key).__name__} is not supported for timestamps"
            )
    except InvalidSignature:
        raise TimestampError(
            "the timestamp's signature does not verify: the token was altered or was not signed "
            "by its TSA certificate"
        ) from None
    except (UnsupportedAlgorithm, ValueError, TypeError, KeyError) as exc:
        raise TimestampError(f"cannot check the timestamp's signature ({_short(exc)})") from None


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _check_tsa_certificate(signer: x509.Certificate, when: dt.datetime) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    name = signer.subject.rfc4514_string()
    try:
        eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or not eku.critical or ExtendedKeyUsageOID.TIME_STAMPING not in eku.value:
        raise TimestampError(
            f"the certificate {name!r} that signed the timestamp is not a TSA certificate "
            "(it needs a critical extended key usage timeStamping)"
        )
    if not signer.not_valid_before_utc <= when <= signer.not_valid_after_utc:
        raise TimestampError(
            f"the TSA certificate {name!r} was not valid at the stamped time {when.isoformat()}"
        )


def _check_chain(
    signer: x509.Certificate,
    carried: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    when: dt.datetime,
) -> None:
    """The signer chains to one of ``anchors`` (or is one) at ``when``; path validation by
    ``cryptography.x509.verification`` (signatures, CA constraints, validity, path length)."""
    from cryptography import x509
    from cryptography.x509 import verification as v

    # The time-stamping usage is checked on the signer above; the verifier's stock policies
    # are for TLS clients (clientAuth), so its end-entity policy is relaxed, and CAs may carry
    # any extended key usage (TSA intermediates often restrict themselves to timeStamping).
    ca_policy = v.ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.ExtendedKeyUsage, v.Criticality.AGNOSTIC, None
    )
    ee_policy = v.ExtensionPolicy.permit_all()
    verifier = (
        v.PolicyBuilder()
        .store(v.Store(list(anchors)))
        .time(when)
        .max_chain_depth(8)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        verifier.verify(signer, [c for c in carried if c != signer])
    except v.VerificationError as exc:
        raise TimestampError(
            f"the TSA certificate {signer.subject.rfc4514_string()!r} does not chain to the "
            f"trusted certificates at the stamped time ({_short(exc)})"
        ) from None
