"""One GluonCV detector (SSD, MobileNet 0.25, 300 px, 3 classes) with GluonCV's SSD loss: the
overhead of heads-only fine-tuning by tunespec against the same by hand, and heads-only against
full fine-tuning."""

from __future__ import annotations

import json
import statistics
import warnings

from common import BATCH, LR, WD, Context, ratio, rounds, row, tag
from steps import MXNetSteps

FAMILY = "detector"
FRAMEWORKS = ("mxnet",)


def rows(ctx: Context) -> list[dict]:
    a = MXNetSteps(ctx.threads)
    return tag(ssd_rows(a, ctx.step_rounds), a.name, a.device)


def ssd_rows(a: MXNetSteps, n: int) -> list[dict]:
    """The heads read six feature maps, so there is no single cut: no cached prefix and no lower
    bound. Every net starts from the same weights (the first one built)."""
    import numpy as np

    import tunespec

    mx, gluon = a.mx, a.gluon
    size, classes = 300, 3
    proto: dict = {}

    def fresh():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = a.gcv.model_zoo.get_model("ssd_300_mobilenet0.25_voc", pretrained=False,
                                            pretrained_base=False)
            net.initialize()
            net.reset_class([f"c{i}" for i in range(classes)])
            with mx.autograd.train_mode():
                net(mx.nd.zeros((1, 3, size, size)))
        params = net._collect_params_with_prefix()
        if not proto:
            proto.update({k: v.data().copy() for k, v in params.items()})
        for k, v in params.items():
            v.set_data(proto[k])
        return net

    rng = np.random.default_rng(0)
    x = mx.nd.array(rng.standard_normal((BATCH, 3, size, size)))
    with mx.autograd.train_mode():
        anchors = fresh()(x)[2].shape[1]
    cls_t = mx.nd.array(np.where(rng.random((BATCH, anchors)) < 0.02,
                                 rng.integers(1, classes + 1, (BATCH, anchors)), 0))
    box_t = mx.nd.array(rng.standard_normal((BATCH, anchors, 4)))
    multibox = a.gcv.loss.SSDMultiBoxLoss()

    def step(net, trainer):
        def run() -> None:
            with mx.autograd.record():
                cls_p, box_p, _ = net(x)
                total, _, _ = multibox(cls_p, box_p, cls_t, box_t)
            mx.autograd.backward(total)
            trainer.step(BATCH)
            mx.nd.waitall()
        return run

    heads = {"freeze": [r"features\..*"], "lr_mult": {r"(class|box)_predictors\..*": 10},
             "wd_mult": {"@bias": 0, "@norm": 0}}

    def with_tunespec(spec):
        net = fresh()
        trainer = tunespec.optimizer(net, spec, "sgd", lr=LR, momentum=0.9, weight_decay=WD,
                                     semantics="native")
        net.hybridize()
        return step(net, trainer)

    def by_hand():
        """grad_req on the feature extractor, use_global_stats on its BatchNorm graph nodes."""
        net = fresh()
        trained = {id(p) for b in (net.class_predictors, net.box_predictors)
                   for p in b.collect_params().values()}
        keep = []
        for p in net.collect_params().values():
            if id(p) not in trained:
                p.grad_req = "null"
            elif p.grad_req != "null":
                p.lr_mult, p.wd_mult = 10, 0 if len(p.shape) == 1 else 1
                keep.append(p)
        graph = net.features._cached_graph[1]
        internals = graph.get_internals()
        for node in json.loads(graph.tojson())["nodes"]:
            if node["op"] == "BatchNorm":
                internals[node["name"] + "_output"]._set_attr(use_global_stats="True")
        net.features._clear_cached_op()
        net.hybridize()
        return step(net, gluon.Trainer(keep, "sgd", {"learning_rate": LR, "momentum": 0.9, "wd": WD}))

    t = rounds({"tunespec": with_tunespec(heads), "hand": by_hand(), "full": with_tunespec(
        {"wd_mult": {"@bias": 0, "@norm": 0}})}, 4 * n)  # short steps: more rounds
    name = "mxnet: SSD mobilenet0.25 300px"
    return [row(f"{name}, overhead, tunespec / hand-written (heads only)",
                ratio(t["tunespec"], t["hand"]), "x", 1.02),
            row(f"{name}, heads-only step, speed-up over full fine-tuning",
                ratio(t["full"], t["tunespec"]), "x"),
            row(f"{name}, step time, heads only", statistics.median(t["tunespec"]), "s")]
