"""coach-suite: the router, llm, threads and ledger services and their shared plumbing.

gRPC's fork support is turned off for every process of the suite (unless the environment
says otherwise), before any of them imports grpc. No process here uses gRPC in a forked
child: every child execs at once. With fork support on, gRPC's fork handlers run in the
child of a plain ``fork()`` (which Python uses instead of vfork for ``subprocess`` with
``user=``, as for ``pg_ctl`` run as the database's owner), and that child then died of
SIGSEGV in gRPC's event engine thread about one time in three under load, before exec.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
