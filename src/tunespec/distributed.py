"""Start an MXNet parameter-server process (scheduler or server) that knows tunespec's optimizers.

With ``update_on_kvstore=True`` (MXNet's default for ``dist_sync``) the workers send the pickled
optimizer to the servers. A server started with ``python -c "import mxnet"`` runs its loop inside
``import mxnet`` and cannot unpickle optimizers defined elsewhere (tunespec's ``fusedtorchsgd``,
``torchsgd``, ...); it then keeps running without an optimizer and stores gradients as weights. Start
servers and the scheduler with ``python -m tunespec.distributed`` instead (same DMLC_* variables).
"""

from __future__ import annotations

import os

from .dispatch import load_backend
from .errors import SpecError


def serve() -> None:
    """Run this process's DMLC_ROLE ('server' or 'scheduler') until the workers finish."""
    role = os.environ.get("DMLC_ROLE")
    if role not in ("server", "scheduler"):
        raise SpecError(f"DMLC_ROLE is {role!r}; python -m tunespec.distributed runs a 'server' or a "
                        f"'scheduler' (workers run the training script)")
    del os.environ["DMLC_ROLE"]  # so importing mxnet does not start the loop before tunespec is loaded
    backend = load_backend("mxnet")
    os.environ["DMLC_ROLE"] = role
    backend.serve_kvstore()


if __name__ == "__main__":
    serve()
