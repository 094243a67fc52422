"""`loyalty load-statuses`: a CSV of status assignments turned into `set_status` commands.

Every row is validated exactly as the worker validates a command, so a row that is
accepted here is applied there; a bad row is reported with its line number and
never stops the good ones. Command ids are derived from the file's content and the
line, so loading the same file twice assigns nothing twice.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from models.errors import InvalidInput
from models.inputs import parse_command
from models.schema import LoyaltyConfig

COLUMNS = ("customer_id", "status_system", "status", "valid_until", "reason")
REQUIRED = COLUMNS[:3]


@dataclass(frozen=True, slots=True)
class Accepted:
    line: int
    customer_id: str
    command: bytes  # the set_status command, as the worker reads it


@dataclass(frozen=True, slots=True)
class Rejected:
    line: int
    reason: str


def read_rows(data: bytes, config: LoyaltyConfig, now: datetime, operator: str) -> Iterator[Accepted | Rejected]:
    """Validates every row of the file. A first row naming the columns may order them freely;
    without one the columns are taken in the contract's order."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        yield Rejected(0, f"the file is not UTF-8 text: {exc}")
        return
    rows = csv.reader(io.StringIO(text, newline=""))
    columns: tuple[str, ...] = COLUMNS
    for index, row in enumerate(rows):
        line = rows.line_num
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if index == 0 and "customer_id" in cells:
            unknown = [c for c in cells if c not in COLUMNS]
            missing = [c for c in REQUIRED if c not in cells]
            if unknown or missing:
                yield Rejected(line, f"header: unknown columns {unknown}, missing {missing}; expected {COLUMNS}")
                return
            columns = tuple(cells)
            continue
        if len(cells) > len(columns):
            yield Rejected(line, f"{len(cells)} columns, at most {len(columns)} expected ({', '.join(columns)})")
            continue
        values = dict(zip(columns, cells, strict=False))
        command = {
            "command_id": f"batch-{digest}-{line}",
            "type": "set_status",
            "source": "batch",
            "operator": operator,
            "requested_at": now.isoformat(),
            **{k: v for k, v in values.items() if v},
        }
        raw = json.dumps(command).encode()
        try:
            parse_command(raw, config, now)
        except InvalidInput as exc:
            yield Rejected(line, str(exc))
            continue
        yield Accepted(line, values["customer_id"], raw)
