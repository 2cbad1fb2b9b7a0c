"""Distribution: Gluon has no model wrapper (kvstores live in the Trainer); parameter servers."""

from __future__ import annotations


class MXNetDistributed:

    def serve_parameters(self) -> None:
        """Run the parameter-server loop of this process's DMLC_ROLE, with tunespec's optimizers loaded."""
        from mxnet.kvstore import kvstore_server

        kvstore_server._init_kvstore_server_module()

