"""The customer's status as the outside world sees it: the `customer-status` snapshot.

The same view is stored in Redis, upserted into PostgreSQL's `customers` table and
answered by `GET /customers/{id}/status`. Its `counter` is the true one, below zero
while returns of earlier periods' receipts outweigh this period's sales: the value
the close decides by and `remaining` is measured from, for operators and sinks.
Receipt messages, which customers read, never show it below zero (models/messages).
"""

from __future__ import annotations

from typing import Any

from models import events
from models.events import Output, OutputKind
from models.levels import level_facts, next_target
from models.messages import counter_value, format_counter
from models.schema import LoyaltyConfig
from models.state import OUTSIDE_PROGRAMME, CustomerState


def status_view(state: CustomerState, config: LoyaltyConfig, *, caused_by: str, occurred_at: str) -> Output:
    statuses: list[dict[str, Any]] = []
    for system in config.status_systems if state.client_state not in OUTSIDE_PROGRAMME else ():
        sys_state = state.systems.get(system.id)
        if sys_state is None:
            continue
        level = level_facts(system)[sys_state.level]
        counter = counter_value(system, sys_state)
        target = next_target(system, sys_state.level, sys_state.base_level, counter)
        statuses.append(
            {
                "status_system": system.id,
                "status": level.id,
                "name": level.name,
                "privileges": dict(level.privileges),
                "valid_until": sys_state.valid_until,
                "period": sys_state.period,
                "counter": format_counter(system, counter),
                "next_status": target.level.id if target else None,
                "remaining": format_counter(system, target.remaining) if target else None,
            }
        )
    profile = {"birth_date": state.birth_date, "registered_at": state.registered_at}
    return Output(
        OutputKind.CUSTOMER_STATUS,
        state.customer_id,
        {
            **{k: v for k, v in profile.items() if v is not None},
            "event_id": events.event_id("customer-status", state.customer_id, str(state.version)),
            "customer_id": state.customer_id,
            "client_state": state.client_state.value,
            "version": state.version,
            "statuses": statuses,
            "caused_by": caused_by,
            "occurred_at": occurred_at,
        },
    )
