"""The supervisor: runs the whole suite as processes (``make up``), and checks its health.

    from services.suite import Suite, SuiteSettings, free_port_env
    env = {**os.environ, **free_port_env(), "COACH_POLICY": "baseline",
           "COACH_DATA_DIR": ".coach/bench-baseline"}
    async with Suite(SuiteSettings.from_env(env), log_dir=Path(".coach/bench-baseline/logs")) as suite:
        ...   # suite.addresses["router"], suite.child_env, suite.status()
"""

from services.suite.config import SERVICES, SuiteSettings, free_port_env
from services.suite.ports import free_port, free_ports
from services.suite.suite import Suite, SuiteError

__all__ = ["SERVICES", "Suite", "SuiteError", "SuiteSettings", "free_port", "free_port_env",
           "free_ports"]
