"""What the core knows about PyTorch, declared without importing torch."""

from tunespec.backend_api import FrameworkFacts

FACTS = FrameworkFacts(
    name="torch",
    framework="torch",
    backend="tunespec.backends.torch.backend:BACKEND",
    extra="torch",
    model_type="a torch.nn.Module",
    optimizer_type="a torch optimizer",
    # torch.save writes any suffix; these are the usual ones, and unclaimed suffixes come here too.
    file_suffixes=(".pt", ".pth", ".bin", ".ckpt", ".tar"),
    reads_other_files=True,
    # DDP / DataParallel prefix their module's names with 'module.'; torch.compile, FSDP1 and
    # activation checkpointing insert an attribute segment.
    wrapper_prefixes=("module",),
    wrapper_segments=("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"),
    # BatchNorm's batch counter: no other framework has it, so it is never ported nor missed.
    ignored_state=r"(.*\.)?num_batches_tracked",
    semantics=("portable",),  # torch's own update rules are the portable ones
    former_semantics={"torch": "portable", "torch-exact": "portable-exact"},
    zoos=("torchvision",),
    # (out, in / groups, *kernel); torch.nn.init reads transposed convolutions' weights the same
    # way, and tunespec's init follows torch's own.
    weight_layouts={"default": ("out", "in", "spatial")},
)
