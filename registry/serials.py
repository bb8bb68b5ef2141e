"""Serial numbers: `THR-<project>-<vintage>-<batch>-<start>-<end>` for a range, `...-<n>` for one unit."""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.errors import InvalidInput

_SERIAL = re.compile(r"^THR-(\d{1,12})-(\d{4})-(\d{1,9})-(\d{1,15})(?:-(\d{1,15}))?$")


@dataclass(frozen=True, slots=True)
class SerialRange:
    project_id: int
    vintage: int
    batch_number: int
    start: int
    end: int

    @property
    def quantity(self) -> int:
        return self.end - self.start + 1

    def overlaps(self, other: SerialRange) -> bool:
        return (self.project_id, self.batch_number) == (other.project_id, other.batch_number) and (
            self.start <= other.end and other.start <= self.end)


def format_serial(project_id: int, vintage: int, batch_number: int, start: int, end: int) -> str:
    return f"THR-{project_id:05d}-{vintage}-{batch_number}-{start}-{end}"


def parse_serial(text: str, field: str = "serial") -> SerialRange:
    """Parse a range or a single-unit serial. Raises InvalidInput naming `field` when malformed."""
    m = _SERIAL.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise InvalidInput(
            "not a serial number: expected THR-<project>-<vintage>-<batch>-<start>[-<end>]",
            field=field, code="bad_serial")
    project, vintage, batch, start, end = m.groups()
    s = int(start)
    e = int(end) if end is not None else s
    if s < 1 or e < s:
        raise InvalidInput("a serial range needs 1 <= start <= end", field=field, code="bad_serial")
    return SerialRange(int(project), int(vintage), int(batch), s, e)
