"""The hash-chained audit log: every state change is recorded; tampering is found and named."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from registry import audit, invariants, units
from registry.models import AuditRecord
from tests.conftest import ON_PG
from tests.factories import issued_batch, registered_project, world


def _build(session):
    w = world(session)
    p = registered_project(session, w)
    b = issued_batch(session, w, p, 500)
    units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=units.Selection(quantity_kg=200))
    units.retire(session, w.buyer.actor, selection=units.Selection(quantity_kg=50), beneficiary="x",
                 jurisdiction="深圳市", purpose="other")
    session.commit()
    return w, p, b


def test_every_state_change_leaves_an_audit_record(session):
    w, p, b = _build(session)
    actions = [a for (a,) in session.execute(select(AuditRecord.action).order_by(AuditRecord.id))]
    for expected in ("holder.created", "user.created", "methodology.created", "project.created",
                     "project.submitted", "project.validated", "project.registered", "report.submitted",
                     "report.verified", "units.issued", "units.transferred", "units.retired"):
        assert expected in actions
    issued = audit.history(session, "batch", b.id)
    assert json.loads(issued[0].payload)["serial"] == b.serial(1, 500)
    assert issued[0].actor_holder_id == w.operator.holder.id


def test_seal_chains_in_order_and_verify_passes(session):
    _build(session)
    assert audit.verify(session).unsealed > 0
    n = audit.seal(session)
    session.commit()
    report = audit.verify(session)
    assert report.ok and report.sealed == n and report.unsealed == 0
    rows = session.scalars(select(AuditRecord).order_by(AuditRecord.chain_seq)).all()
    assert rows[0].prev_hash == audit.GENESIS
    assert all(rows[i].prev_hash == rows[i - 1].hash for i in range(1, len(rows)))
    # Sealing again is a no-op; new records continue the chain.
    assert audit.seal(session) == 0


def test_sealed_records_cannot_be_updated_or_deleted(session):
    _build(session)
    audit.seal(session)
    session.commit()
    with pytest.raises(DBAPIError):
        session.execute(text("UPDATE audit_records SET payload = '{}' WHERE chain_seq = 3"))
    session.rollback()
    with pytest.raises(DBAPIError):
        session.execute(text("DELETE FROM audit_records WHERE chain_seq = 3"))
    session.rollback()


def _disable_guards(session):
    """What an attacker with DBA rights would do first."""
    if ON_PG:
        session.execute(text("ALTER TABLE audit_records DISABLE TRIGGER audit_records_guard"))
    else:
        for t in ("audit_records_no_delete", "audit_records_sealed", "audit_records_content"):
            session.execute(text(f"DROP TRIGGER {t}"))
    session.commit()


@pytest.mark.no_invariants
def test_altered_record_is_named(session):
    _build(session)
    audit.seal(session)
    session.commit()
    _disable_guards(session)
    victim = session.scalar(select(AuditRecord).where(AuditRecord.action == "units.issued"))
    session.execute(text("UPDATE audit_records SET payload = :p WHERE id = :i"),
                    {"p": victim.payload.replace("500", "900"), "i": victim.id})
    session.commit()
    report = audit.verify(session)
    assert not report.ok
    assert (report.broken_seq, report.broken_id) == (victim.chain_seq, victim.id)
    assert "altered" in (report.reason or "")
    assert any(v.invariant == "5 audit chain" for v in invariants.check(session))


@pytest.mark.no_invariants
def test_deleted_record_is_named(session):
    _build(session)
    audit.seal(session)
    session.commit()
    _disable_guards(session)
    session.execute(text("DELETE FROM audit_records WHERE chain_seq = 5"))
    session.commit()
    report = audit.verify(session)
    assert not report.ok and report.broken_seq == 5 and "missing" in (report.reason or "")


@pytest.mark.no_invariants
def test_verify_audit_command_exits_nonzero_on_tampering(runner, session):
    _build(session)
    ok = runner.invoke(args=["registry", "verify-audit"])
    assert ok.exit_code == 0, ok.output
    assert "audit chain intact" in ok.output
    _disable_guards(session)
    session.execute(text("UPDATE audit_records SET action = 'units.nothing' WHERE chain_seq = 7"))
    session.commit()
    bad = runner.invoke(args=["registry", "verify-audit"])
    assert bad.exit_code == 1
    assert "BROKEN at link 7" in bad.output


def test_registry_check_command(runner, session):
    _build(session)
    result = runner.invoke(args=["registry", "check"])
    assert result.exit_code == 0, result.output
    assert "all invariants hold" in result.output


@pytest.mark.no_invariants
def test_registry_check_names_a_broken_invariant(runner, session):
    w, p, b = _build(session)
    # Forge a unit out of nothing, the way a buggy split would.
    session.execute(text('UPDATE blocks SET "end" = "end" + 1, quantity = quantity + 1 '
                         'WHERE batch_id = :b AND status = \'held\' AND "end" = 500'), {"b": b.id})
    session.commit()
    result = runner.invoke(args=["registry", "check"])
    assert result.exit_code == 1
    assert "[1 conservation]" in result.output and "[2 partition]" in result.output
