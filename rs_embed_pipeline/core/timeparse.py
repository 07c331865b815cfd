"""ISO date / datetime parsing shared by the providers and the tensor backend (no dependencies).

Naive values are taken as UTC; the result is always timezone-aware UTC.
"""

import datetime as dt
from typing import Any


def parse_utc(value: Any) -> dt.datetime:
    """A date, datetime or ISO string (``Z`` allowed) as an aware UTC datetime; ValueError otherwise."""
    if isinstance(value, dt.datetime):
        t = value
    elif isinstance(value, dt.date):
        t = dt.datetime(value.year, value.month, value.day)
    else:
        try:
            t = dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO date / datetime") from None
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)
