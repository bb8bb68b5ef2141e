"""Certificate bodies, canonical JSON, Ed25519 signing and offline verification."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import stat
import time
from typing import Any

import pytest
from sqlalchemy.orm import Session

from registry import certificates as certs
from registry.certificates import CanonicalJSONError, SigningKey
from registry.queries import retirement_by_certificate
from tests.certificates.conftest import BASE_URL, Retired


def _doc(session: Session, retired: Retired, key: SigningKey) -> dict[str, Any]:
    return certs.issue_document(session, retired.retirement, key, BASE_URL)


# ---- the body -----------------------------------------------------------------------------------


def test_body_fields(session: Session, retired: Retired) -> None:
    r, w = retired.retirement, retired.world
    body = certs.certificate_body(session, r, BASE_URL)
    assert body["schema"] == "tanhui.certificate/1"
    assert body["registry"] == certs.REGISTRY_NAME
    assert body["certificate_number"] == r.certificate_number
    assert body["beneficiary"] == "大湾区论坛 GBA Forum"
    assert body["jurisdiction"] == "广东省深圳市福田区"
    assert body["purpose"] == "event_offset"
    assert body["footprint_ref"] == "FP-GBA-2026"
    assert body["message"].startswith("本次论坛")
    assert body["quantity_kg"] == 182_640 and type(body["quantity_kg"]) is int
    assert body["retired_by"] == {"holder_id": w.buyer.holder.id, "name": "会务方"}
    assert body["retired_at"].endswith("Z") and "T" in body["retired_at"] and len(body["retired_at"]) == 20
    assert body["verification_url"] == f"https://registry.tanhui.example/retirements/{r.certificate_number}"
    assert body["public_key_url"] == "https://registry.tanhui.example/.well-known/tanhui-registry-key.pem"
    b1, b2 = retired.b1, retired.b2
    # The two pieces bought separately from b1 appear as one range; ranges sorted by project, batch.
    assert [s["serial"] for s in body["serials"]] == [b1.serial(1, 60_000), b2.serial(1_001, 123_640)]
    first, second = body["serials"]
    assert first["project"] == {"id": b1.project_id, "code": f"{b1.project_id:05d}", "title": "屋顶光伏",
                                "title_en": "Rooftop PV", "city": "深圳市"}
    assert first["vintage"] == 2023 and second["vintage"] == 2024
    m = retired.world.methodology
    assert first["methodology"] == {"code": m.code, "version": "1.0", "title_zh": "分布式光伏",
                                    "title_en": "Rooftop PV"}
    assert [s["quantity_kg"] for s in body["serials"]] == [60_000, 122_640]
    assert sum(s["quantity_kg"] for s in body["serials"]) == body["quantity_kg"]
    certs.canonical_json(body)  # integers and strings only


def test_same_retirement_same_bytes_same_signature(session: Session, retired: Retired,
                                                   signing_key: SigningKey) -> None:
    one = _doc(session, retired, signing_key)
    session.expire_all()
    r, _ = retirement_by_certificate(session, retired.retirement.certificate_number)
    two = certs.issue_document(session, r, signing_key, BASE_URL.rstrip("/"))
    assert certs.canonical_json(one["certificate"]) == certs.canonical_json(two["certificate"])
    assert one == two
    assert certs.document_bytes(one) == certs.document_bytes(two)
    assert one["algorithm"] == "Ed25519" and one["key_id"] == signing_key.key_id
    assert one["sha256"] == hashlib.sha256(certs.canonical_json(one["certificate"])).hexdigest()
    assert len(base64.b64decode(one["signature"])) == 64


# ---- canonical JSON -----------------------------------------------------------------------------


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert certs.canonical_json({"b": 1, "a": [True, None, "碳"], "c": {"z": -2, "y": ""}}) == (
        '{"a":[true,null,"碳"],"b":1,"c":{"y":"","z":-2}}'.encode())
    assert certs.canonical_json({"s": 'q"\\\n'}) == b'{"s":"q\\"\\\\\\n"}'


@pytest.mark.parametrize("bad", [{"q": 1.5}, {"q": 1.0}, {"q": [float("nan")]}, {1: "x"}, {"t": object()},
                                 {"n": 2**53}, {"s": "\ud800"}])
def test_canonical_json_refuses_floats_and_non_json(bad: Any) -> None:
    with pytest.raises(CanonicalJSONError):
        certs.canonical_json(bad)


# ---- verification -------------------------------------------------------------------------------


def test_verify_ok_offline_from_the_saved_file(session: Session, retired: Retired, signing_key: SigningKey,
                                               tmp_path: Any) -> None:
    doc = _doc(session, retired, signing_key)
    path = tmp_path / "cert.json"
    path.write_bytes(certs.document_bytes(doc))
    pem = signing_key.public_key_pem()
    result = certs.verify_file(path, pem)
    assert result.ok, result.reason
    assert result.certificate_number == retired.retirement.certificate_number
    assert result.key_id == signing_key.key_id
    assert "OK" in result.describe()
    assert certs.verify_document(json.loads(path.read_text("utf-8")), pem)


def _tampered(doc: dict[str, Any], change: Any) -> dict[str, Any]:
    d = copy.deepcopy(doc)
    change(d["certificate"])
    return d


@pytest.mark.parametrize("name, change", [
    ("beneficiary", lambda c: c.__setitem__("beneficiary", "别人 Someone else")),
    ("quantity", lambda c: c.__setitem__("quantity_kg", c["quantity_kg"] + 1)),
    ("serial", lambda c: c["serials"][0].__setitem__("serial", c["serials"][0]["serial"].replace("-1-", "-2-", 1))),
    ("serial quantity", lambda c: c["serials"][1].__setitem__("quantity_kg", 1)),
    ("message", lambda c: c.__setitem__("message", None)),
    ("time", lambda c: c.__setitem__("retired_at", "2020-01-01T00:00:00Z")),
    ("extra field", lambda c: c.__setitem__("note", "x")),
    ("float", lambda c: c.__setitem__("quantity_kg", float(c["quantity_kg"]))),
])
def test_tampering_with_any_field_fails(session: Session, retired: Retired, signing_key: SigningKey,
                                        name: str, change: Any) -> None:
    doc = _doc(session, retired, signing_key)
    bad = _tampered(doc, change)
    result = certs.verify_document(bad, signing_key.public_key_pem())
    assert not result.ok, name
    assert "SHA-256 mismatch" in result.reason or "canonical" in result.reason

    # Even with the digest recomputed, the signature gives it away.
    bad["sha256"] = hashlib.sha256(certs.canonical_json(bad["certificate"])).hexdigest() if name != "float" else ""
    result = certs.verify_document(bad, signing_key.public_key_pem())
    assert not result.ok
    if name != "float":
        assert result.reason == "the Ed25519 signature does not verify with this public key"


def test_envelope_tampering_fails(session: Session, retired: Retired, signing_key: SigningKey) -> None:
    doc = _doc(session, retired, signing_key)
    pem = signing_key.public_key_pem()
    sig = bytearray(base64.b64decode(doc["signature"]))
    sig[0] ^= 1
    cases = {
        "signature": {**doc, "signature": base64.b64encode(bytes(sig)).decode()},
        "not base64": {**doc, "signature": "***"},
        "no signature": {k: v for k, v in doc.items() if k != "signature"},
        "algorithm": {**doc, "algorithm": "RS256"},
        "key id": {**doc, "key_id": "0" * 16},
        "schema": {**doc, "certificate": {**doc["certificate"], "schema": "other/1"}},
        "no certificate": {k: v for k, v in doc.items() if k != "certificate"},
    }
    for name, bad in cases.items():
        result = certs.verify_document(bad, pem)
        assert not result.ok and result.reason, name
    assert not certs.verify_document([doc], pem).ok
    assert "key" in certs.verify_document(doc, b"not a pem").reason


def test_wrong_public_key_fails(session: Session, retired: Retired, signing_key: SigningKey) -> None:
    doc = _doc(session, retired, signing_key)
    other = SigningKey.generate()
    result = certs.verify_document(doc, other.public_key_pem())
    assert not result.ok and f"public key given is {other.key_id}" in result.reason
    # A forger who also rewrites the key id still fails on the signature.
    result = certs.verify_document({**doc, "key_id": other.key_id}, other.public_key_pem())
    assert result.reason == "the Ed25519 signature does not verify with this public key"


def test_invariant_4_is_checked_inside_a_signed_document(session: Session, retired: Retired,
                                                         signing_key: SigningKey) -> None:
    """A document signed with the right key but whose ranges disagree with its quantity is refused."""
    pem = signing_key.public_key_pem()
    body = certs.certificate_body(session, retired.retirement, BASE_URL)

    def signed(change: Any) -> certs.VerifyResult:
        b = copy.deepcopy(body)
        change(b)
        return certs.verify_document(certs.sign_body(b, signing_key), pem)

    assert signed(lambda b: None).ok
    r = signed(lambda b: b.__setitem__("quantity_kg", 182_641))
    assert not r.ok and r.reason == ("invariant 4: the serial ranges add up to 182640 kg but the certificate "
                                     "states 182641 kg")
    r = signed(lambda b: b["serials"][0].__setitem__("quantity_kg", 59_999))
    assert not r.ok and "does not match the range" in r.reason
    r = signed(lambda b: b["serials"].append(copy.deepcopy(b["serials"][0])))
    assert not r.ok and "overlaps" in r.reason
    r = signed(lambda b: b.__setitem__("serials", []))
    assert not r.ok and "no serial ranges" in r.reason
    r = signed(lambda b: b["serials"][0].__setitem__("vintage", 1999))
    assert not r.ok and "vintage" in r.reason
    r = signed(lambda b: b["serials"][0].__setitem__("serial", "garbage"))
    assert not r.ok and "not a serial range" in r.reason


def test_duplicate_keys_in_a_file_are_refused(session: Session, retired: Retired, signing_key: SigningKey,
                                              tmp_path: Any) -> None:
    doc = _doc(session, retired, signing_key)
    text = certs.document_bytes(doc).decode()
    path = tmp_path / "dup.json"
    path.write_text(text.replace('"algorithm": "Ed25519"', '"algorithm": "Ed25519", "algorithm": "Ed25519"'))
    result = certs.verify_file(path, signing_key.public_key_pem())
    assert not result.ok and "duplicate key" in result.reason
    assert not certs.verify_file(tmp_path / "missing.json", signing_key.public_key_pem()).ok


# ---- keys ---------------------------------------------------------------------------------------


def test_key_is_generated_once_with_mode_0600_and_reloaded(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv(certs.KEY_FILE_ENV, raising=False)
    folder = tmp_path / "instance"
    k1 = SigningKey.from_config({}, folder)
    path = folder / certs.KEY_FILE_NAME
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in folder.iterdir()] == [certs.KEY_FILE_NAME]
    k2 = SigningKey.load_or_create(folder)
    assert k1.key_id == k2.key_id and len(k1.key_id) == 16
    assert k1.key_id == hashlib.sha256(base64.b64decode(
        b"".join(k1.public_key_pem().splitlines()[1:-1]))[-32:]).hexdigest()[:16]
    assert k1.sign(b"x") == k2.sign(b"x")  # Ed25519 is deterministic
    assert k1.public_key_pem().startswith(b"-----BEGIN PUBLIC KEY-----")


def test_key_from_configured_file(tmp_path: Any, monkeypatch: Any) -> None:
    key = SigningKey.generate()
    path = tmp_path / "registry.pem"
    path.write_bytes(key.private_pem())
    assert SigningKey.from_config({certs.KEY_FILE_ENV: str(path)}, tmp_path / "unused").key_id == key.key_id
    monkeypatch.setenv(certs.KEY_FILE_ENV, str(path))
    assert SigningKey.from_config({}, tmp_path / "unused").key_id == key.key_id
    assert not (tmp_path / "unused").exists()
    # The private PEM may stand in for the public one when verifying.
    doc = certs.sign_body({"schema": certs.SCHEMA, "quantity_kg": 1, "serials": [
        {"serial": "THR-00001-2024-1-5-5", "quantity_kg": 1, "vintage": 2024, "project": {"id": 1}}]}, key)
    assert certs.verify_document(doc, key.private_pem()).ok
    with pytest.raises(ValueError):
        SigningKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


# ---- speed --------------------------------------------------------------------------------------


def test_verify_p99_under_20ms(session: Session, retired: Retired, signing_key: SigningKey) -> None:
    doc = _doc(session, retired, signing_key)
    text = certs.document_bytes(doc)
    pem = signing_key.public_key_pem()
    samples = []
    for _ in range(200):
        t0 = time.perf_counter()
        result = certs.verify_document(certs.load_document(text), pem)  # parse + verify, as the CLI does
        samples.append(time.perf_counter() - t0)
        assert result.ok
    samples.sort()
    p50, p99 = samples[len(samples) // 2], samples[int(len(samples) * 0.99) - 1]
    print(f"\ncertificate verification: p50 {p50 * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms over 200")
    assert p99 < 0.020


def test_existing_key_file_never_creates_one(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv(certs.KEY_FILE_ENV, raising=False)
    assert certs.existing_key_file({}, tmp_path) is None and not any(tmp_path.iterdir())
    SigningKey.load_or_create(tmp_path)
    assert certs.existing_key_file({}, tmp_path) == tmp_path / certs.KEY_FILE_NAME
    assert certs.existing_key_file({certs.KEY_FILE_ENV: str(tmp_path / "nope.pem")}, tmp_path) is None


def test_concurrent_first_use_makes_one_key(tmp_path: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: SigningKey.load_or_create(tmp_path).key_id, range(16)))
    assert len(ids) == 1
    assert [p.name for p in tmp_path.iterdir()] == [certs.KEY_FILE_NAME]
