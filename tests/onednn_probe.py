"""One fresh-process trial of MXNet 1.9.1's oneDNN read race (run by test_onednn_guard.py).

Two same-shape ResNet-18s take an inference forward, after which oneDNN rewrites conv weights
into its own layout in place, asynchronously. Right then (the racy moment) the backbone is
snapshotted, frozen and trained 5 steps. Mode 'tunespec' snapshots with tunespec.apply (its
checksums); mode 'raw' with plain asnumpy(), as hand-written code would. Prints ok|changed.
"""

import sys

import mxnet as mx
from mxnet import autograd, gluon

import tunespec

mode = sys.argv[1]
nets = [mx.gluon.model_zoo.vision.resnet18_v1(classes=10) for _ in range(2)]
x = mx.nd.random.uniform(shape=(2, 3, 64, 64))
y = mx.nd.array([1, 2])
for net in nets:
    net.initialize(mx.init.Xavier())
    net(x)
spec = {"freeze": ["features\\..*"]}
if mode == "raw":
    backbone = [p for p in nets[0].features.collect_params().values() if p._differentiable]
    before = {p.name: p.data().asnumpy().tobytes() for p in backbone}
plan = tunespec.apply(nets[0], spec)
trainers = [plan.optimizer("sgd", lr=0.1, momentum=0.9),
            gluon.Trainer(nets[1].collect_params(), "sgd", {"learning_rate": 0.1})]
loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
for _ in range(5):
    for net, trainer in zip(nets, trainers, strict=True):
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(2)
if mode == "raw":
    mx.nd.waitall()
    changed = [p.name for p in backbone if p.data().asnumpy().tobytes() != before[p.name]]
else:
    changed = plan.verify().changed_params
print(f"{mode}=" + ("ok" if not changed else "changed:" + ",".join(changed)))
