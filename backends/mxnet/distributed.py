"""Distribution: Gluon has no model wrapper (kvstores live in the Trainer); parameter servers."""

from __future__ import annotations

from typing import Any


class MXNetDistributed:
    def is_distributed_wrapper(self, model: Any) -> bool:
        return False

    def rewrap(self, model: Any) -> Any:
        return model


    def serve_kvstore(self) -> None:
        """Run the parameter-server loop of this process's DMLC_ROLE, with tunespec's optimizers loaded."""
        from mxnet.kvstore import kvstore_server

        kvstore_server._init_kvstore_server_module()

