"""Signed retirement certificates: the body, its canonical JSON, SHA-256 and Ed25519 signature.

A certificate document is a plain JSON object::

    {"certificate": {...body...}, "sha256": "<hex>", "signature": "<base64>",
     "key_id": "<16 hex>", "algorithm": "Ed25519"}

The signature and the digest cover the **canonical JSON** of ``certificate`` (see `canonical_json`),
so anyone with the registry's public key can verify a document offline, with no database: recompute
the canonical bytes, compare their SHA-256, check the Ed25519 signature (`verify_document`).

Ed25519 signatures are deterministic: the same retirement, key and base URL give the same document,
byte for byte, however often it is issued.

Nothing here knows about Flask; `web/` serves the documents and publishes the public key.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Table, bindparam, select
from sqlalchemy.orm import Session

from registry.errors import InvalidInput
from registry.models import (
    Batch,
    Block,
    Holder,
    Methodology,
    Project,
    Retirement,
    project_code,
    serial_prefix,
)
from registry.serials import SerialRange, parse_serial

SCHEMA = "tanhui.certificate/1"
ALGORITHM = "Ed25519"
REGISTRY_NAME = "碳惠 Tanhui Registry"
# Where `web/` publishes the public key (relative to the public base URL).
PUBLIC_KEY_PATH = "/.well-known/tanhui-registry-key.pem"
KEY_FILE_ENV = "TANHUI_SIGNING_KEY_FILE"
KEY_FILE_NAME = "certificate-signing-key.pem"

# Integers beyond ±(2**53 - 1) lose precision in JavaScript and many other JSON parsers; refusing
# them keeps the canonical form verifiable by any JSON implementation.
_MAX_SAFE_INT = 2**53 - 1


class CanonicalJSONError(ValueError):
    """The value cannot be put in canonical form (a float, a non-string key, an unknown type...)."""


# ---- canonical JSON -----------------------------------------------------------------------------


def _check_canonical(value: Any, path: str) -> None:
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if not -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT:
            raise CanonicalJSONError(f"{path}: integer {value} is outside ±(2**53 - 1)")
        return
    if isinstance(value, float):
        raise CanonicalJSONError(f"{path}: floats are not allowed in a certificate ({value!r}); use integers")
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CanonicalJSONError(f"{path}: object keys must be strings, not {type(k).__name__}")
            _check_canonical(v, f"{path}.{k}")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_canonical(v, f"{path}[{i}]")
        return
    raise CanonicalJSONError(f"{path}: {type(value).__name__} is not a JSON value")


def canonical_json(body: Any) -> bytes:
    """The canonical bytes of a JSON value, the input of the digest and of the signature.

    Rules (tanhui.certificate/1):
    - object keys sorted by code point (Python's `sort_keys`), no insignificant whitespace
      (separators ``,`` and ``:``);
    - UTF-8, non-ASCII characters written as themselves (``ensure_ascii=False``); JSON's mandatory
      escapes only (``"``, ``\\``, control characters as ``\\uXXXX`` or the short forms);
    - only null, true/false, strings, integers within ±(2**53 - 1), arrays and objects with string
      keys. Floats (and NaN/Infinity) are refused with `CanonicalJSONError`: quantities are integer
      kilograms and times are ISO-8601 strings.
    """
    _check_canonical(body, "$")
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as e:  # e.g. a lone surrogate
        raise CanonicalJSONError(str(e)) from e


def digest(canonical: bytes) -> str:
    return hashlib.sha256(canonical).hexdigest()


# ---- the certificate body -----------------------------------------------------------------------


def iso_utc(t: dt.datetime) -> str:
    """ISO-8601 UTC to the second with a "Z": naive datetimes are UTC (as everywhere in the DB)."""
    if t.tzinfo is not None:
        t = t.astimezone(dt.UTC).replace(tzinfo=None)
    return t.replace(microsecond=0).isoformat() + "Z"


def verification_url(base_url: str, number: str) -> str:
    """The public page of a certificate (the same permalink as the web API's)."""
    return base_url.rstrip("/") + f"/retirements/{number}"


def public_key_url(base_url: str) -> str:
    return base_url.rstrip("/") + PUBLIC_KEY_PATH


_BL = cast(Table, Block.__table__)
_BA = cast(Table, Batch.__table__)
_PR = cast(Table, Project.__table__)
_ME = cast(Table, Methodology.__table__)
_HO = cast(Table, Holder.__table__)
# The retired blocks with their batches, projects and methodologies, and the retiring holder's name:
# one Core statement, no ORM objects (every certificate served or issued reads it).
_RETIRED = (select(_BL.c.batch_id, _BL.c.start, _BL.c.end, _BA.c.project_id, _BA.c.number, _BA.c.vintage,
                   _PR.c.title, _PR.c.title_en.label("p_title_en"), _PR.c.city,
                   _ME.c.code.label("m_code"), _ME.c.version, _ME.c.title_zh, _ME.c.title_en.label("m_title_en"),
                   _HO.c.name.label("holder_name"))
            .select_from(_BL).join(_BA, _BA.c.id == _BL.c.batch_id).join(_PR, _PR.c.id == _BA.c.project_id)
            .join(_ME, _ME.c.id == _BA.c.methodology_id).join(_HO, _HO.c.id == bindparam("holder_id"))
            .where(_BL.c.retirement_id == bindparam("retirement_id")).order_by(_BL.c.batch_id, _BL.c.start))


def _ranges(blocks: Sequence[Any]) -> list[dict[str, Any]]:
    """The retired serial ranges, sorted by (project, batch number, start), with contiguous pieces of
    one batch merged so the certificate does not depend on how the blocks were split before."""
    ordered = sorted(blocks, key=lambda b: (b.project_id, b.number, b.start))
    merged: list[tuple[Any, int, int]] = []
    for b in ordered:
        if merged and merged[-1][0].batch_id == b.batch_id and merged[-1][2] + 1 == b.start:
            first, start, _ = merged[-1]
            merged[-1] = (first, start, b.end)
        else:
            merged.append((b, b.start, b.end))
    out = []
    for b, start, end in merged:
        out.append({
            "serial": f"{serial_prefix(b.project_id, b.vintage, b.number)}-{start}-{end}",
            "project": {"id": b.project_id, "code": project_code(b.project_id), "title": b.title, "title_en": b.p_title_en,
                        "city": b.city},
            "vintage": b.vintage,
            "methodology": {"code": b.m_code, "version": b.version, "title_zh": b.title_zh,
                            "title_en": b.m_title_en},
            "quantity_kg": int(end - start + 1),
        })
    return out


@dataclass(frozen=True, slots=True)
class RetiredRange:
    """One retired block as its certificate lists it (the attributes of a `_RETIRED` row)."""

    batch_id: int
    number: int         # the batch's number within its project and vintage
    project_id: int
    vintage: int
    start: int
    end: int
    title: str          # the project's
    p_title_en: str | None
    city: str | None
    m_code: str         # the methodology's
    version: str
    title_zh: str
    m_title_en: str | None


@dataclass(frozen=True, slots=True)
class RetirementFacts:
    """What a retirement's certificate says, as the use case that wrote it has it in hand (so the
    certificate of a retirement just made needs no query: `body_of`). `purpose` is the
    RetirementPurpose's value; `blocks` are `RetiredRange`s or rows with their attributes."""

    certificate_number: str
    beneficiary: str
    jurisdiction: str
    purpose: str
    message: str | None
    footprint_ref: str | None
    quantity_kg: int
    retired_at: dt.datetime
    holder_id: int
    holder_name: str
    blocks: Sequence[Any]


def body_of(facts: RetirementFacts, base_url: str, registry_name: str = REGISTRY_NAME) -> dict[str, Any]:
    """The signed fields of a certificate (`certificate_body`) from what the retirement wrote."""
    return {
        "schema": SCHEMA,
        "registry": registry_name,
        "certificate_number": facts.certificate_number,
        "beneficiary": facts.beneficiary,
        "jurisdiction": facts.jurisdiction,
        "purpose": facts.purpose,
        "message": facts.message,
        "footprint_ref": facts.footprint_ref,
        "quantity_kg": int(facts.quantity_kg),
        "retired_at": iso_utc(facts.retired_at),
        "retired_by": {"holder_id": facts.holder_id, "name": facts.holder_name},
        "serials": _ranges(facts.blocks),
        "verification_url": verification_url(base_url, facts.certificate_number),
        "public_key_url": public_key_url(base_url),
    }


def certificate_body(session: Session, retirement: Retirement, base_url: str,
                     registry_name: str = REGISTRY_NAME) -> dict[str, Any]:
    """The signed fields of a retirement's certificate: deterministic for a given retirement.

    Quantities are integer kg; the time is ISO-8601 UTC with a "Z"; the serial ranges are sorted.
    Reads the retired blocks (one query); `body_of` gives the same from what the retirement wrote.
    """
    blocks = session.execute(_RETIRED, {"retirement_id": retirement.id, "holder_id": retirement.holder_id}).all()
    holder_name = blocks[0].holder_name if blocks else retirement.holder.name
    return body_of(RetirementFacts(
        retirement.certificate_number, retirement.beneficiary, retirement.jurisdiction, retirement.purpose.value,
        retirement.message, retirement.footprint_ref, retirement.quantity_kg, retirement.retired_at,
        retirement.holder_id, holder_name, blocks), base_url, registry_name)


# ---- the signing key ----------------------------------------------------------------------------


def _raw_public(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(public: Ed25519PublicKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw 32-byte public key."""
    return hashlib.sha256(_raw_public(public)).hexdigest()[:16]


def configured_key_file(config: Mapping[str, Any]) -> str | None:
    """The key file named by the config or the environment (`TANHUI_SIGNING_KEY_FILE`), if any."""
    path = config.get(KEY_FILE_ENV) or os.environ.get(KEY_FILE_ENV)
    return str(path) if path else None


def existing_key_file(config: Mapping[str, Any], instance_path: str | os.PathLike[str]) -> Path | None:
    """Where the registry's key is, without creating one: the configured file, else the instance
    folder's, if it exists."""
    configured = configured_key_file(config)
    path = Path(configured) if configured else Path(instance_path) / KEY_FILE_NAME
    return path if path.exists() else None


class SigningKey:
    """The registry's Ed25519 key. Load it with `from_file`, `load_or_create` or `from_config`."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_key: Ed25519PublicKey = private.public_key()
        self.key_id: str = key_id_of(self.public_key)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the certificate signing key must be an Ed25519 private key")
        return cls(key)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> SigningKey:
        return cls.from_pem(Path(path).read_bytes())

    @classmethod
    def load_or_create(cls, folder: str | os.PathLike[str]) -> SigningKey:
        """The key in `folder`/certificate-signing-key.pem, generated (mode 0600) on first use.

        Creation is exclusive (O_EXCL), so two processes starting at once end up with one key.
        """
        path = Path(folder) / KEY_FILE_NAME
        if not path.exists():
            Path(folder).mkdir(parents=True, exist_ok=True)
            key = cls.generate()
            tmp = path.with_name(f".{KEY_FILE_NAME}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, key.private_pem())
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)  # atomic, and fails if another process or thread created it first
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return cls.from_file(path)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], instance_path: str | os.PathLike[str]) -> SigningKey:
        """`TANHUI_SIGNING_KEY_FILE` from the config, else from the environment, else a key kept in
        the instance folder (generated on first use)."""
        path = configured_key_file(config)
        if path:
            return cls.from_file(path)
        return cls.load_or_create(instance_path)

    def private_pem(self) -> bytes:
        return self._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())

    def public_key_pem(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)


# ---- issue and verify ---------------------------------------------------------------------------


def sign_body(body: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    """The signed document of a certificate body (no checks of its content)."""
    canonical = canonical_json(body)
    return {"certificate": body, "sha256": digest(canonical),
            "signature": base64.b64encode(key.sign(canonical)).decode("ascii"),
            "key_id": key.key_id, "algorithm": ALGORITHM}


def issue_document(session: Session, retirement: Retirement, key: SigningKey, base_url: str,
                   registry_name: str = REGISTRY_NAME) -> dict[str, Any]:
    """The signed certificate document of a retirement (deterministic: Ed25519 is)."""
    return sign_body(certificate_body(session, retirement, base_url, registry_name), key)


def document_bytes(doc: Mapping[str, Any]) -> bytes:
    """How a document is served and saved: pretty-printed UTF-8 JSON (the canonical form is only
    for the signature; a verifier recomputes it)."""
    return (json.dumps(doc, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode("utf-8")


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    reason: str
    certificate_number: str | None = None
    key_id: str | None = None

    def __bool__(self) -> bool:
        return self.ok

    def describe(self) -> str:
        what = f"certificate {self.certificate_number}" if self.certificate_number else "certificate"
        return f"{what}: {'OK' if self.ok else 'INVALID'}: {self.reason}"


@functools.lru_cache(maxsize=32)
def _public_key(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """Parse (and cache) a PEM public key; accepts a private key PEM too, using its public half."""
    if b"PRIVATE KEY" in pem:
        return SigningKey.from_pem(pem).public_key
    return _public_key(pem)


def check_ranges(body: Mapping[str, Any]) -> str | None:
    """Invariant 4 inside a certificate: every range is well formed, agrees with its serial text,
    ranges do not overlap, and their kg add up to the certificate's quantity. The problem, or None."""
    qty = body.get("quantity_kg")
    if not isinstance(qty, int) or isinstance(qty, bool) or qty <= 0:
        return "quantity_kg must be a positive integer"
    serials = body.get("serials")
    if not isinstance(serials, list) or not serials:
        return "the certificate lists no serial ranges"
    seen: list[SerialRange] = []
    total = 0
    for i, item in enumerate(serials):
        if not isinstance(item, Mapping):
            return f"serials[{i}] is not an object"
        try:
            rng = parse_serial(item.get("serial"), field=f"serials.{i}")  # type: ignore[arg-type]
        except InvalidInput:
            return f"serials[{i}]: {item.get('serial')!r} is not a serial range"
        q = item.get("quantity_kg")
        if not isinstance(q, int) or isinstance(q, bool) or q != rng.quantity:
            return f"serials[{i}]: quantity_kg {q!r} does not match the range {item['serial']} ({rng.quantity} kg)"
        if item.get("vintage") != rng.vintage:
            return f"serials[{i}]: vintage {item.get('vintage')!r} does not match the serial {item['serial']}"
        project = item.get("project")
        if not isinstance(project, Mapping) or project.get("id") != rng.project_id:
            return f"serials[{i}]: the project does not match the serial {item['serial']}"
        for j, other in enumerate(seen):
            if rng.overlaps(other):
                return f"serials[{i}] overlaps serials[{j}]"
        seen.append(rng)
        total += q
    if total != qty:
        return f"the serial ranges add up to {total} kg but the certificate states {qty} kg"
    return None


def verify_document(doc: Any, public_key_pem: bytes) -> VerifyResult:
    """Verify a certificate document offline with the registry's public key (PEM).

    Checks, in order: the document's shape, the schema, the SHA-256 of the canonical JSON, the key
    id, the Ed25519 signature, then invariant 4 inside the certificate (`check_ranges`).
    """
    if not isinstance(doc, Mapping):
        return VerifyResult(False, "not a certificate document (expected a JSON object)")
    body = doc.get("certificate")
    number = body.get("certificate_number") if isinstance(body, Mapping) else None
    number = number if isinstance(number, str) else None
    kid = doc.get("key_id") if isinstance(doc.get("key_id"), str) else None

    def fail(reason: str) -> VerifyResult:
        return VerifyResult(False, reason, number, kid)

    if not isinstance(body, Mapping):
        return fail("the document has no 'certificate' object")
    if doc.get("algorithm") != ALGORITHM:
        return fail(f"unsupported algorithm {doc.get('algorithm')!r} (expected {ALGORITHM})")
    if body.get("schema") != SCHEMA:
        return fail(f"unknown schema {body.get('schema')!r} (expected {SCHEMA})")
    try:
        canonical = canonical_json(body)
    except CanonicalJSONError as e:
        return fail(f"the certificate is not canonical JSON: {e}")
    if doc.get("sha256") != digest(canonical):
        return fail("SHA-256 mismatch: the certificate's fields were altered (or the digest was)")
    try:
        public = load_public_key(public_key_pem)
    except (ValueError, TypeError) as e:
        return fail(f"cannot read the public key: {e}")
    expected_kid = key_id_of(public)
    if kid != expected_kid:
        return fail(f"signed with key {kid!r}, but the public key given is {expected_kid}")
    sig_text = doc.get("signature")
    if not isinstance(sig_text, str):
        return fail("the document has no signature")
    try:
        signature = base64.b64decode(sig_text, validate=True)
    except (binascii.Error, ValueError):
        return fail("the signature is not valid base64")
    try:
        public.verify(signature, canonical)
    except InvalidSignature:
        return fail("the Ed25519 signature does not verify with this public key")
    problem = check_ranges(body)
    if problem:
        return fail(f"invariant 4: {problem}")
    return VerifyResult(True, f"signature valid (key {kid}), {body['quantity_kg']} kg in "
                              f"{len(body['serials'])} serial range(s)", number, kid)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def load_document(data: bytes | str) -> Any:
    """Parse a document's JSON text, refusing duplicate keys (which different parsers read differently)."""
    return json.loads(data, object_pairs_hook=_no_duplicate_keys)


def verify_file(path: str | os.PathLike[str], public_key_pem: bytes) -> VerifyResult:
    """Verify a saved certificate JSON file offline (what `flask registry verify-certificate` runs)."""
    try:
        doc = load_document(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        return VerifyResult(False, f"cannot read {path}: {e}")
    return verify_document(doc, public_key_pem)
