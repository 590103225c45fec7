"""The ``weir`` command line: one command group per module, each a thin layer over the library.

Errors a user can fix (bad flags, files, values) exit 2 with one line on stderr naming what
was wrong; failures of the system exit 1.
"""

import os

# gRPC's fork handlers abort a child forked while a channel is busy (the sidecar agent's CA and
# name-table streams are, when it starts Envoy). weir never uses gRPC in a forked child: turn
# them off before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
