"""Checks every invariant of DESIGN.md over a database and lists the violations.

Run by `flask registry check` and after every integration test. Each check is one SQL query that
returns offending rows, so a healthy registry costs a few scans however large it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from registry import audit


@dataclass(frozen=True, slots=True)
class Violation:
    invariant: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.invariant}] {self.detail}"


_CHECKS: list[tuple[str, str, str]] = [
    ("1 conservation",
     """SELECT b.id, b.quantity_kg, COALESCE(SUM(k.quantity), 0)
        FROM batches b LEFT JOIN blocks k ON k.batch_id = b.id
        GROUP BY b.id, b.quantity_kg HAVING COALESCE(SUM(k.quantity), 0) <> b.quantity_kg""",
     "batch {0} issued {1} kg but its blocks add up to {2} kg"),
    ("2 partition",
     """SELECT batch_id, start, prev_end FROM (
          SELECT batch_id, start, LAG("end") OVER (PARTITION BY batch_id ORDER BY start) AS prev_end
          FROM blocks) t
        WHERE (prev_end IS NULL AND start <> 1) OR (prev_end IS NOT NULL AND start <> prev_end + 1)""",
     "batch {0}: a block starts at {1} after a block ending at {2} (gap or overlap)"),
    ("2 partition",
     """SELECT b.id, MAX(k."end"), b.quantity_kg FROM batches b JOIN blocks k ON k.batch_id = b.id
        GROUP BY b.id, b.quantity_kg HAVING MAX(k."end") <> b.quantity_kg""",
     "batch {0}: the last serial is {1}, not {2}"),
    ("2 partition",
     """SELECT id, start, "end", quantity FROM blocks WHERE quantity <> "end" - start + 1 OR start < 1""",
     "block {0} [{1}, {2}] claims quantity {3}"),
    ("3 final blocks never move",
     """SELECT m1.id, m1.kind, m2.id, m2.kind FROM movements m1 JOIN movements m2
          ON m2.batch_id = m1.batch_id AND m2.id > m1.id AND m2.start <= m1."end" AND m2."end" >= m1.start
        WHERE m1.kind IN ('retirement', 'cancellation')""",
     "movement {2} ({3}) touched serials already final by movement {0} ({1})"),
    ("3 final blocks never move",
     """SELECT k.id, k.status FROM blocks k
        WHERE (k.status = 'retired' AND k.retirement_id IS NULL)
           OR (k.status = 'cancelled' AND k.cancellation_id IS NULL)
           OR (k.status IN ('held', 'listed') AND (k.retirement_id IS NOT NULL OR k.cancellation_id IS NOT NULL))""",
     "block {0} is {1} but its retirement/cancellation link disagrees"),
    ("3 final blocks never move",
     """SELECT id, status, hold_ref FROM blocks
        WHERE (status = 'listed') <> (hold_ref IS NOT NULL)""",
     "block {0} is {1} with hold {2}: only listed blocks carry a hold"),
    ("4 certificates",
     """SELECT r.certificate_number, r.quantity_kg, COALESCE(SUM(k.quantity), 0)
        FROM retirements r LEFT JOIN blocks k ON k.retirement_id = r.id
        GROUP BY r.id, r.certificate_number, r.quantity_kg HAVING COALESCE(SUM(k.quantity), 0) <> r.quantity_kg""",
     "certificate {0} states {1} kg but its serial ranges add up to {2} kg"),
    ("4 certificates",
     """SELECT r.certificate_number, k.id FROM retirements r JOIN blocks k ON k.retirement_id = r.id
        WHERE k.status <> 'retired' OR k.account_id <> r.account_id""",
     "certificate {0}: block {1} is not retired to its beneficiary's retirement account"),
    ("cancellations",
     """SELECT c.id, c.quantity_kg, COALESCE(SUM(k.quantity), 0)
        FROM cancellations c LEFT JOIN blocks k ON k.cancellation_id = c.id
        GROUP BY c.id, c.quantity_kg HAVING COALESCE(SUM(k.quantity), 0) <> c.quantity_kg""",
     "cancellation {0} states {1} kg but its blocks add up to {2} kg"),
    ("issuance",
     """SELECT p.id, COALESCE(SUM(b.quantity_kg), 0), COALESCE(v.verified, 0) FROM projects p
          LEFT JOIN batches b ON b.project_id = p.id
          LEFT JOIN (SELECT project_id, SUM(approved_kg) AS verified FROM monitoring_reports
                     WHERE status IN ('verified', 'issued') GROUP BY project_id) v ON v.project_id = p.id
        GROUP BY p.id, v.verified HAVING COALESCE(SUM(b.quantity_kg), 0) > COALESCE(v.verified, 0)""",
     "project {0} issued {1} kg, more than the {2} kg verified"),
]


def check(session: Session, *, include_audit: bool = True) -> list[Violation]:
    """Every violation found; an empty list means the registry is consistent."""
    found: list[Violation] = []
    for name, sql, fmt in _CHECKS:
        for row in session.execute(text(sql)).all()[:50]:
            found.append(Violation(name, fmt.format(*row)))
    if include_audit:
        report = audit.verify(session)
        if not report.ok:
            found.append(Violation("5 audit chain", report.describe()))
    return found
