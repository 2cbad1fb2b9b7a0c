"""One MXNet worker of a dist_sync run (scheduler, server and 2 workers on 127.0.0.1), or a
single-process run over two CPU contexts with a 'local'/'device' kvstore.

``python kvstore_worker.py OUT KVSTORE UPDATE_ON_KVSTORE(1|0|default) STAGED(1|0)``; the DMLC_*
environment variables make the dist_sync roles. Writes <rank>.npz with the initial and final weights.
"""

from __future__ import annotations

import os
import sys

import mxnet as mx
import numpy as np

import tunespec
from tunespec.backends.mxnet import BACKEND, import_gluoncv


def arrays(net) -> dict[str, np.ndarray]:
    mx.nd.waitall()
    return {t.canonical: t.handle.list_data()[0].asnumpy().copy() for t in BACKEND.listing(net).tensors}


def main() -> None:
    out, kvstore, staged = sys.argv[1], sys.argv[2], sys.argv[4] == "1"
    on_kv = {"1": True, "0": False}.get(sys.argv[3])  # 'default': MXNet decides
    contexts = [mx.cpu(0)] if "dist" in kvstore else [mx.cpu(0), mx.cpu(1)]
    kv = mx.kv.create(kvstore)
    mx.random.seed(0)
    np.random.seed(0)
    net = import_gluoncv().model_zoo.get_model("resnet18_v1b", pretrained=False, classes=5)
    net.initialize(mx.init.Xavier(), ctx=contexts)  # seeded: the same weights on every worker
    net(mx.nd.zeros((1, 3, 32, 32), ctx=contexts[0]))
    # multipliers matter: a server must apply them too (the optimizer reaches it pickled)
    recipe = {"preset": "heads", "lr_mult": {"@heads": 4}, "wd_mult": {"@bias": 0},
              "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 0.01,
                            "kvstore": kv, "update_on_kvstore": on_kv}}
    if staged:
        recipe["stages"] = [{"at_epoch": 1, "preset": "5+", "lr_factor": 0.5}]
    initial = arrays(net)
    schedule = tunespec.StageRunner(recipe)
    net, trainer = schedule.start(net)
    rng = np.random.default_rng(kv.rank)  # each worker sees different data
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    for epoch in range(2):
        for _ in range(2):
            x = mx.nd.array(rng.standard_normal((4, 3, 32, 32)))
            y = mx.nd.array(rng.integers(0, 5, 4))
            xs = mx.gluon.utils.split_and_load(x, contexts)
            ys = mx.gluon.utils.split_and_load(y, contexts)
            with mx.autograd.record():
                losses = [loss_fn(net(a), b) for a, b in zip(xs, ys, strict=True)]
            for loss in losses:
                loss.backward()
            trainer.step(4)
            print(f"rank {kv.rank} epoch {epoch} fc.bias {net.fc.bias.data(contexts[0]).asnumpy()[:3]}",
                  flush=True)
        net, trainer = schedule.step(epoch, net, trainer)
    schedule.plan.verify().raise_if_changed()
    copies = [{t.canonical: d.asnumpy() for t in BACKEND.listing(net).params for d in [t.handle.data(c)]}
              for c in contexts]
    same = all(np.array_equal(copies[0][k], c[k]) for c in copies[1:] for k in copies[0])
    np.savez(os.path.join(out, f"{kv.rank}.npz"), **{f"w:{k}": v for k, v in arrays(net).items()},
             **{f"init:{k}": v for k, v in initial.items()}, copies_equal=np.array(same),
             on_kvstore=np.array(bool(trainer._update_on_kvstore)))


if __name__ == "__main__":
    main()
