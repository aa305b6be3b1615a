"""bench.workload.paced: the same messages at another length per month (bench-levers)."""

from __future__ import annotations

import pytest

from bench.workload import build_workload, messages_per_month, paced


@pytest.mark.parametrize("per_month", [30, 100, 300])
def test_pacing_changes_the_length_per_month_and_nothing_else(per_month: int) -> None:
    users = build_workload(6, 10, 20261127)
    out = paced(users, per_month)
    assert messages_per_month(out) == pytest.approx(per_month, rel=0.03)
    for before, after in zip(users, out, strict=True):
        assert [(m.kind, m.text, m.local_hour) for m in before.messages] == [
            (m.kind, m.text, m.local_hour) for m in after.messages]
        times = [m.at_s for m in after.messages]
        assert times == sorted(times) and len(set(times)) == len(times)
        # a reply within a session keeps its minutes
        for i in range(1, len(times)):
            gap = before.messages[i].at_s - before.messages[i - 1].at_s
            if gap <= 600:
                assert times[i] - times[i - 1] == gap
