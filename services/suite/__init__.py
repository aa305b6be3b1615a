"""The supervisor: runs the whole suite as processes (``make up``), and checks its health.

    from services.suite import Suite, SuiteSettings
    async with Suite(SuiteSettings.from_env(env)) as suite:
        ...   # suite.addresses, suite.child_env, suite.status()
"""

from services.suite.config import SERVICES, SuiteSettings
from services.suite.suite import Suite, SuiteError

__all__ = ["SERVICES", "Suite", "SuiteError", "SuiteSettings"]
