"""Start a parameter-server process (server or scheduler) that knows tunespec's optimizers.

With MXNet's ``update_on_kvstore=True`` (its default for ``dist_sync``) the workers send the pickled
optimizer to the servers. A server started with ``python -c "import mxnet"`` runs its loop inside
the import and cannot unpickle optimizers defined elsewhere (tunespec's ``fusedtorchsgd``,
``torchsgd``, ...); it then keeps running without an optimizer and stores gradients as weights. Start
servers and the scheduler with ``python -m tunespec.lifecycle.distributed`` instead (same environment).

Which backend serves is read from the facts: the one whose ``server_role_variable`` is set. The
variable is hidden while the framework is imported, so the import does not start the loop before
tunespec's optimizers are registered, then put back for the backend's own loop.
"""

from __future__ import annotations

import os

from tunespec.backend_api import ParameterServer, require
from tunespec.errors import SpecError
from tunespec.registry import load_backend, registered

ROLES = ("server", "scheduler")


def serve() -> None:
    """Run this process's role ('server' or 'scheduler') until the workers finish."""
    servers = [f for f in registered().values() if f.server_role_variable]
    chosen = [f for f in servers if os.environ.get(f.server_role_variable) in ROLES]
    if not chosen:
        told = ", ".join(f"{f.server_role_variable}={os.environ.get(f.server_role_variable)!r}" for f in servers)
        raise SpecError(f"python -m tunespec.lifecycle.distributed runs a 'server' or a 'scheduler' (workers run the "
                        f"training script); the role variables say {told or 'nothing: no backend serves'}")
    facts = chosen[0]
    role = os.environ.pop(facts.server_role_variable)
    try:
        backend = require(load_backend(facts.name), ParameterServer, "python -m tunespec.lifecycle.distributed")
    finally:
        os.environ[facts.server_role_variable] = role
    backend.serve_parameters()


if __name__ == "__main__":
    serve()
