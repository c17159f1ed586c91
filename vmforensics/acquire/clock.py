"""Clock skew: the hypervisor's clock against the examiner's, measured across one round trip."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from vmforensics.custody.models import ClockReading


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def measure_clock(read_source_clock: Callable[[], dt.datetime | None], method: str) -> ClockReading:
    """Ask the source for its time once; skew = source time - midpoint of the examiner's clock.

    ``read_source_clock`` returns an aware datetime (naive ones are taken as UTC) or None when
    the source cannot tell its time; the round trip bounds the measurement's uncertainty.
    """
    before_wall = dt.datetime.now(dt.UTC)
    before = time.monotonic()
    source = read_source_clock()
    round_trip = time.monotonic() - before
    midpoint = before_wall + dt.timedelta(seconds=round_trip / 2)
    if source is None:
        return ClockReading(_iso(midpoint), None, None, round(round_trip, 6), method)
    if source.tzinfo is None:
        source = source.replace(tzinfo=dt.UTC)
    skew = (source - midpoint).total_seconds()
    return ClockReading(_iso(midpoint), _iso(source), round(skew, 6), round(round_trip, 6), method)
