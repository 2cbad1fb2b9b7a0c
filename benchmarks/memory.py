"""Memory of frozen parameters, per framework: gradient and Adam-state bytes held for them (in the
worker), and peak process memory (peak RSS, or peak CUDA memory) of full versus layer4+fc
fine-tuning, each variant in a fresh process of its own (``run.py --peak FRAMEWORK VARIANT``)."""

from __future__ import annotations

from common import BATCH, SIZE, SPEC_FULL, SPEC_L4, Context, in_subprocess, row, tag
from steps import adapter

FAMILY = "memory"
FRAMEWORKS = ("torch", "mxnet")


def rows(ctx: Context) -> list[dict]:
    """The peak workers run first, while this process holds no model of its own."""
    fw = ctx.framework
    peaks = {v: in_subprocess(["--peak", fw, v, *ctx.worker_args()], ctx.threads)[0] for v in ("full", "l4")}
    a = adapter(ctx)
    frozen, trained = a.adam_bytes(SPEC_L4, *a.batch(SIZE))
    found = tag([row(f"{fw}: gradient + Adam state bytes held for frozen parameters", frozen, "B", 0),
                 row(f"{fw}: (control) the same for trained parameters", trained, "B")], fw, a.device)
    kind = peaks["full"]["kind"]
    return found + [
        row(f"{fw}: peak {kind}, full fine-tuning", peaks["full"]["peak"] / 2**20, "MiB", framework=fw),
        row(f"{fw}: peak {kind}, layer4+fc", peaks["l4"]["peak"] / 2**20, "MiB", framework=fw),
        row(f"{fw}: {kind} taken by training (peak - before), full",
            peaks["full"]["training"] / 2**20, "MiB", framework=fw),
        row(f"{fw}: {kind} taken by training, layer4+fc / full",
            peaks["l4"]["training"] / peaks["full"]["training"], "x", 1.0, framework=fw)]


def _proc_status(key: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key + ":"))


def peak_worker(fw: str, variant: str, threads: int) -> list[dict]:
    """Memory that three Adam steps of full or layer4+fc fine-tuning take in a fresh process: the
    peak during training above the memory held just before it (model built, plan applied).
    CPU: Linux's VmHWM, reset before the first step; CUDA: torch's peak allocation."""
    spec = SPEC_FULL if variant == "full" else SPEC_L4
    cuda = False
    if fw == "torch":
        import torch
        import torchvision

        import tunespec

        torch.set_num_threads(threads)
        cuda = torch.cuda.is_available()
        dev = "cuda" if cuda else "cpu"
        model = torchvision.models.resnet50(weights=None).to(dev).train()
        opt = tunespec.optimizer(model, spec, "adam", lr=1e-3)
        x, y = torch.randn(BATCH, 3, SIZE, SIZE, device=dev), torch.randint(0, 1000, (BATCH,), device=dev)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    else:
        import mxnet as mx

        import tunespec
        from tunespec.backends.mxnet import import_gluoncv

        net = import_gluoncv().model_zoo.get_model("resnet50_v1b", pretrained=False)
        net.initialize(mx.init.Xavier())
        x, y = mx.nd.random.normal(shape=(BATCH, 3, SIZE, SIZE)), mx.nd.zeros((BATCH,))
        net(x)
        trainer = tunespec.optimizer(net, spec, "adam", lr=1e-3, semantics="native")
        net.hybridize()
        mx.nd.waitall()

        def step() -> None:
            with mx.autograd.record():
                loss = mx.gluon.loss.SoftmaxCrossEntropyLoss()(net(x), y)
            loss.backward()
            trainer.step(BATCH)
            mx.nd.waitall()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _proc_status("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:  # resets VmHWM to the current RSS
            fh.write("5")
    for _ in range(3):
        step()
    peak = torch.cuda.max_memory_allocated() if cuda else _proc_status("VmHWM")
    return [{"peak": peak, "training": peak - before,
             "kind": "CUDA memory" if cuda else "RSS"}]
