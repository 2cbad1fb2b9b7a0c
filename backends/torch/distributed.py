"""Distributed wrappers: DDP fixes its reduced parameters at construction, so stages re-wrap."""

from __future__ import annotations

from torch import nn


class TorchDistributed:
    def is_distributed_wrapper(self, model: nn.Module) -> bool:
        return isinstance(model, nn.parallel.DistributedDataParallel)

    def rewrap(self, model: nn.Module) -> nn.Module:
        """A new DDP wrapper with the old one's settings: DDP fixes at construction which parameters
        it all-reduces (those with requires_grad), so a changed set needs a new wrapper."""
        return nn.parallel.DistributedDataParallel(
            model.module, device_ids=model.device_ids, output_device=model.output_device,
            broadcast_buffers=model.broadcast_buffers, process_group=model.process_group,
            bucket_cap_mb=model.bucket_bytes_cap / (1024 * 1024),
            find_unused_parameters=model.find_unused_parameters,
            gradient_as_bucket_view=model.gradient_as_bucket_view, static_graph=model.static_graph)

