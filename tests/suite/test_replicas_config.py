"""COACH_REPLICAS: how many processes of each service `make up` runs, and where."""

from __future__ import annotations

import pytest

from services.common.errors import ConfigError
from services.suite.config import SuiteSettings, parse_replicas
from services.suite.suite import Suite


def test_replicas_are_parsed_and_checked() -> None:
    assert parse_replicas("router=2, threads=2,llm=3") == {"router": 2, "threads": 2, "llm": 3}
    assert parse_replicas("") == {}
    for bad in ("router", "router=0", "web=2", "router=two", "router=99"):
        with pytest.raises(ConfigError, match="COACH_REPLICAS"):
            parse_replicas(bad)


def test_replicas_listen_beside_the_contract_ports_and_are_dialed_as_one_list(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = SuiteSettings.from_env({"COACH_DATA_DIR": str(tmp_path),
                                       "COACH_REPLICAS": "router=3,threads=2"})
    suite = Suite(settings)
    assert suite.replicas["router"] == ["127.0.0.1:50051", "127.0.0.1:50061", "127.0.0.1:50071"]
    assert suite.targets["router"] == "ipv4:127.0.0.1:50051,127.0.0.1:50061,127.0.0.1:50071"
    assert suite.targets["llm"] == "127.0.0.1:50052"  # one replica: its address, as before
    assert [key for key, _, _ in suite.keys] == [
        "ledger", "llm", "threads", "threads-2", "router", "router-2", "router-3"]
    suite.child_env = suite._child_env()
    env = suite._replica_env("router", 2)
    assert env["COACH_ROUTER_LISTEN"] == "127.0.0.1:50071"
    assert env["COACH_ROUTER_METRICS_PORT"] == "9171"
    assert env["COACH_ROUTER_JOURNAL_DIR"].endswith("router-journal-3")
    assert env["COACH_THREADS_ADDR"] == "ipv4:127.0.0.1:50053,127.0.0.1:50063"
