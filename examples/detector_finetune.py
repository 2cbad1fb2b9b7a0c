"""Fine-tune a detector on new classes with one recipe: GluonCV SSD or torchvision SSDlite.

1. Draw two synthetic VOC data sets (shapes on noise): A = circle/square/triangle,
   B = square/triangle/cross (two classes carried over, one new).
2. "Pretrain" the detector on A (all layers train) and save it; later runs reuse the file.
3. Reload it, swap its classes for B's (GluonCV's ``reset_class``, keeping the weights of
   the two shared classes), and report VOC07 mAP on B's test split.
4. Apply examples/detector_finetune.yaml (preset + lr multipliers, no weight decay on biases
   and norms, BatchNorm frozen), build the Trainer / optimizer from it, fine-tune on B.
5. Report mAP again and verify that every frozen tensor is bit-identical.

Nothing is downloaded: models are built without pretrained weights, data is generated.
Run: python examples/detector_finetune.py [--backend mxnet|torch] [--epochs N] [--workdir DIR] [--smoke]
(on a CPU shared with other work, OMP_NUM_THREADS=1 is faster: two threads wait on each other).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

import tunespec

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_voc import read_voc, write_voc  # noqa: E402
from voc_metric import voc07_map  # noqa: E402

RECIPE = Path(__file__).with_name("detector_finetune.yaml")
CLASSES_A = ("circle", "square", "triangle")
CLASSES_B = ("square", "triangle", "cross")
SIZE = 160


def progress(it, total: int, label: str):
    """One tqdm progress bar per training phase."""
    return tqdm(it, total=total, desc=f"  {label}", unit="step", file=sys.stdout, mininterval=1.0)


# Images per split: the demo's, and a CI smoke run's (a few batches: it checks the path, not the mAP).
FULL = {"a_train": 600, "b_train": 300, "b_test": 100}
SMOKE = {"a_train": 16, "b_train": 16, "b_test": 16}


def data(workdir: Path, counts: dict[str, int] = FULL) -> tuple[Path, Path]:
    a, b = workdir / "voc_a", workdir / "voc_b"
    if not (a / "VOC2007/ImageSets/Main/train.txt").exists():
        write_voc(a, CLASSES_A, {"train": counts["a_train"]}, SIZE, seed=1)
    if not (b / "VOC2007/ImageSets/Main/test.txt").exists():
        write_voc(b, CLASSES_B, {"train": counts["b_train"], "test": counts["b_test"]}, SIZE, seed=2)
    return a, b


def pretrain_schedule(samples: int, epochs: int) -> dict:
    """Warm up, then cosine decay: training a detector from scratch needs both."""
    steps = epochs * -(-samples // 16)
    warmup = min(50, steps // 4)
    schedule = {"type": "cosine", "total_steps": steps, "warmup_steps": warmup}
    return schedule | ({"warmup_start_factor": 0.1} if warmup else {})  # a smoke run is too short for one


def chunks(items: list, size: int, rng: np.random.Generator | None = None):
    order = rng.permutation(len(items)) if rng is not None else np.arange(len(items))
    for i in range(0, len(items), size):
        yield [items[j] for j in order[i:i + size]]


# --- MXNet Gluon: GluonCV SSD --------------------------------------------------------------
class GluonSSD:
    name = tag = "mxnet"
    model = "ssd_300_mobilenet0.25_voc"
    pretrain_epochs = 12

    def __init__(self) -> None:
        import mxnet as mx

        from tunespec.backends.mxnet import import_gluoncv

        self.mx = mx
        self.gcv = import_gluoncv()
        mx.random.seed(0)

    def build(self, classes: tuple[str, ...]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = self.gcv.model_zoo.get_model(self.model, pretrained=False, pretrained_base=False)
            net.initialize()
            net.reset_class(classes)
        net.hybridize()
        self._anchors(net)
        for p in net.collect_params().values():  # He init: deep MobileNets need it from scratch
            if p.name.endswith("weight") and len(p.shape) > 1:
                p.initialize(self.mx.init.MSRAPrelu("in", 0.0), force_reinit=True)
        return net

    def _anchors(self, net) -> None:
        """A training-mode forward: finishes deferred shapes and gives the SSD's anchors."""
        with self.mx.autograd.train_mode():
            _, _, anchors = net(self.mx.nd.zeros((1, 3, SIZE, SIZE)))
        from gluoncv.model_zoo.ssd.target import SSDTargetGenerator

        self.target = SSDTargetGenerator(
            iou_thresh=0.5, stds=(0.1, 0.1, 0.2, 0.2), negative_mining_ratio=-1)
        self.anchors = anchors

    def tensors(self, batch: list, rng: np.random.Generator):
        """Normalised images (random horizontal flips) and SSD training targets."""
        mx, images, cls_t, box_t = self.mx, [], [], []
        for image, boxes in batch:
            if rng.random() < 0.5:
                image = image[:, ::-1]
                boxes = boxes.copy()
                boxes[:, [0, 2]] = SIZE - 1 - boxes[:, [2, 0]]
            images.append(self._normalise(image))
            c, b, _ = self.target(self.anchors, None, mx.nd.array(boxes[None, :, :4]),
                                  mx.nd.array(boxes[None, :, 4:5]))
            cls_t.append(c[0])
            box_t.append(b[0])
        return mx.nd.stack(*images), mx.nd.stack(*cls_t), mx.nd.stack(*box_t)

    def _normalise(self, image: np.ndarray):
        x = (image.astype("float32") / 255 - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)
        return self.mx.nd.array(x.transpose(2, 0, 1))

    def train(self, net, trainer, samples: list, epochs: int, batch_size: int, label: str,
              scheduler=None) -> None:
        """Train with SSD's multibox loss (a Trainer's lr scheduler runs inside the Trainer)."""
        mx, loss_fn = self.mx, self.gcv.loss.SSDMultiBoxLoss()
        rng = np.random.default_rng(0)
        steps = epochs * -(-len(samples) // batch_size)
        batches = (b for _ in range(epochs) for b in chunks(samples, batch_size, rng))
        for batch in progress(batches, steps, label):
            x, cls_t, box_t = self.tensors(batch, rng)
            with mx.autograd.record():
                cls_preds, box_preds, _ = net(x)
                total, _, _ = loss_fn(cls_preds, box_preds, cls_t, box_t)
            mx.autograd.backward(total)
            trainer.step(1)  # SSDMultiBoxLoss already averages over positives

    def evaluate(self, net, samples: list, classes: tuple[str, ...]) -> float:
        """VOC07 mAP with GluonCV's own metric."""
        metric = self.gcv.utils.metrics.voc_detection.VOC07MApMetric(iou_thresh=0.5, class_names=classes)
        net.set_nms(0.45, 400, 100)  # also drops the hybridized training graph
        for batch in chunks(samples, 25):
            x = self.mx.nd.stack(*(self._normalise(image) for image, _ in batch))
            ids, scores, boxes = net(x)
            for i, (_, truth) in enumerate(batch):
                metric.update(boxes[i:i + 1], ids[i:i + 1], scores[i:i + 1],
                              truth[None, :, :4], truth[None, :, 4])
        net.set_nms(0.45, 400, 100)
        self._anchors(net)  # back to the training graph
        names, values = metric.get()
        print("  AP per class: " + ", ".join(f"{n} {v:.2f}" for n, v in zip(names[:-1], values[:-1], strict=True)))
        return values[-1]

    def pretrain(self, samples: list, path: Path, epochs: int):
        net = self.build(CLASSES_A)
        trainer = self.mx.gluon.Trainer(net.collect_params(), "sgd",
                                        {"learning_rate": 0.05, "momentum": 0.9, "wd": 5e-4})
        tunespec.scheduler(trainer, pretrain_schedule(len(samples), epochs))
        self.train(net, trainer, samples, epochs, 16, "pretrain on A")
        net.save_parameters(str(path))

    def reload_for(self, path: Path):
        net = self.build(CLASSES_A)
        net.load_parameters(str(path))
        shared = {c: c for c in CLASSES_B if c in CLASSES_A}
        net.reset_class(CLASSES_B, reuse_weights=shared)
        self._anchors(net)
        return net


# --- PyTorch: torchvision SSDlite ----------------------------------------------------------
class TorchSSDlite:
    """torchvision's SSDlite: its MobileNetV3-Large backbone, extra layers and head, built at
    the data's own size instead of 320 px (upscaling 160 px shapes adds nothing but 4x the
    compute) and at ``width`` times the channels, so the demo trains in minutes on a CPU."""

    name = "torch"
    pretrain_epochs = 5

    def __init__(self, width: float = 0.5) -> None:
        import torch
        import torchvision

        self.torch, self.tv, self.width = torch, torchvision, width
        self.model = f"SSDlite, MobileNetV3-Large x{width} at {SIZE} px"
        self.tag = f"torch_ssdlite_x{width}_{SIZE}"  # a pretrained file fits one architecture
        torch.manual_seed(0)

    def build(self, classes: tuple[str, ...]):
        """What ``ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)`` builds
        (same layers, names, anchors, initialisation and thresholds), with the input size and
        the width as parameters: its builder fixes both."""
        from functools import partial

        from torchvision.models.detection import anchor_utils, ssd, ssdlite

        torch = self.torch
        norm = partial(torch.nn.BatchNorm2d, eps=0.001, momentum=0.03)
        mobilenet = self.tv.models.mobilenet_v3_large(weights=None, norm_layer=norm, reduced_tail=True,
                                                      width_mult=self.width)
        layers = mobilenet.features
        c4 = [i for i, layer in enumerate(layers) if getattr(layer, "_is_cn", False)][-1]
        backbone = ssdlite.SSDLiteFeatureExtractorMobileNet(layers, c4, norm, width_mult=self.width)
        self._init(backbone)
        anchors = anchor_utils.DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)
        with torch.no_grad():  # the channels of the six feature maps the head reads
            channels = [f.shape[1] for f in backbone.eval()(torch.zeros(1, 3, SIZE, SIZE)).values()]
        k = len(classes) + 1  # class 0 is the background
        head = ssdlite.SSDLiteHead(channels, anchors.num_anchors_per_location(), k, norm)
        return ssd.SSD(backbone.train(), anchors, (SIZE, SIZE), k, head=head, score_thresh=0.001,
                       nms_thresh=0.55, detections_per_img=300, topk_candidates=300,
                       image_mean=[0.5] * 3, image_std=[0.5] * 3)

    def _init(self, module) -> None:
        """torchvision's initialisation of an SSDlite trained from scratch (its ``_normal_init``)."""
        nn = self.torch.nn
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, mean=0.0, std=0.03)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _images(self, batch: list) -> list:
        return [self.torch.from_numpy(image.transpose(2, 0, 1).astype("float32") / 255) for image, _ in batch]

    def train(self, net, optimizer, samples: list, epochs: int, batch_size: int, label: str,
              scheduler=None) -> None:
        torch, rng = self.torch, np.random.default_rng(0)
        net.train()
        steps = epochs * -(-len(samples) // batch_size)
        batches = (b for _ in range(epochs) for b in chunks(samples, batch_size, rng))
        for batch in progress(batches, steps, label):
            targets = [{"boxes": torch.from_numpy(b[:, :4]), "labels": torch.from_numpy(b[:, 4]).long() + 1}
                       for _, b in batch]  # label 0 is the background
            losses = net(self._images(batch), targets)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()

    def evaluate(self, net, samples: list, classes: tuple[str, ...]) -> float:
        net.eval()
        detections = []
        with self.torch.no_grad():
            for batch in chunks(samples, 25):
                for out in net(self._images(batch)):
                    detections.append((out["boxes"].numpy(), out["labels"].numpy() - 1, out["scores"].numpy()))
        net.train()
        return voc07_map(detections, [(b[:, :4], b[:, 4]) for _, b in samples], len(classes))[0]

    def pretrain(self, samples: list, path: Path, epochs: int) -> None:
        net = self.build(CLASSES_A)
        optimizer = self.torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        scheduler = tunespec.scheduler(optimizer, pretrain_schedule(len(samples), epochs))
        self.train(net, optimizer, samples, epochs, 16, "pretrain on A", scheduler)
        self.torch.save(net.state_dict(), path)

    def reload_for(self, path: Path):
        """Load the A detector, then swap its classes for B's like GluonCV's reset_class: new
        class convolutions whose rows for the shared classes (and the background) are copied.
        Seeded, so a run that reuses the pretrained file starts from the net the first run had."""
        torch = self.torch
        torch.manual_seed(1)
        net = self.build(CLASSES_A)
        net.load_state_dict(torch.load(path, weights_only=True))
        head = net.head.classification_head
        old_k, new_k = head.num_columns, len(CLASSES_B) + 1
        keep = [(0, 0)] + [(j + 1, CLASSES_A.index(c) + 1) for j, c in enumerate(CLASSES_B) if c in CLASSES_A]
        for seq in head.module_list:
            old = seq[1]
            anchors = old.out_channels // old_k  # channels are laid out anchor-major: a * K + class
            new = torch.nn.Conv2d(old.in_channels, anchors * new_k, 1)
            torch.nn.init.normal_(new.weight, std=0.03)  # as torchvision initialises SSDlite heads
            torch.nn.init.zeros_(new.bias)
            with torch.no_grad():
                for a in range(anchors):
                    for j, i in keep:
                        new.weight[a * new_k + j] = old.weight[a * old_k + i]
                        new.bias[a * new_k + j] = old.bias[a * old_k + i]
            seq[1] = new
        head.num_columns = new_k
        return net


@dataclass
class Result:
    """What a run leaves, for tests: mAP on B before and after fine-tuning, the fine-tuned net,
    its plan and optimizer / Trainer, and the pretrained file (``run.reload_for(weights)``
    rebuilds the net as fine-tuning found it)."""

    run: GluonSSD | TorchSSDlite
    weights: Path
    net: object
    plan: tunespec.Plan
    trainer: object
    before: float
    after: float


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["mxnet", "torch"], default="mxnet")
    parser.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs on B")
    parser.add_argument("--pretrain-epochs", type=int, default=None,
                        help="pretraining epochs on A (default: 12 for mxnet, 5 for torch)")
    parser.add_argument("--workdir", type=Path, default=Path(".tunespec-demo"))
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--smoke", action="store_true",
                        help="a CI-sized run (a few images, one epoch each, in WORKDIR/smoke): "
                             "checks the path end to end, not the mAP")
    args = parser.parse_args(argv)
    if args.smoke:
        args.workdir, args.epochs, args.pretrain_epochs = args.workdir / "smoke", 1, 1
    return args


def main(argv: list[str] | None = None) -> Result:
    args = parse(argv)
    started = time.perf_counter()
    run = GluonSSD() if args.backend == "mxnet" else TorchSSDlite()
    pretrain_epochs = args.pretrain_epochs or run.pretrain_epochs
    args.workdir.mkdir(parents=True, exist_ok=True)
    voc_a, voc_b = data(args.workdir, SMOKE if args.smoke else FULL)
    train_a = read_voc(voc_a, "train", CLASSES_A)
    train_b, test_b = read_voc(voc_b, "train", CLASSES_B), read_voc(voc_b, "test", CLASSES_B)
    print(f"{run.name}: {run.model}; data: A {len(train_a)} train images ({', '.join(CLASSES_A)}), "
          f"B {len(train_b)} train / {len(test_b)} test ({', '.join(CLASSES_B)})")
    weights = args.workdir / f"pretrained_{run.tag}_{pretrain_epochs}.params"
    if weights.exists():
        print(f"reusing the detector pretrained on A: {weights}")
    else:
        run.pretrain(train_a, weights, pretrain_epochs)
    net = run.reload_for(weights)
    before = run.evaluate(net, test_b, CLASSES_B)
    print(f"mAP on B before fine-tuning (classes swapped, shared ones kept): {before:.3f}")
    recipe = tunespec.load_recipe(args.recipe)
    plan = tunespec.apply(net, recipe)
    trainer = tunespec.optimizer(net, recipe)  # from the applied plan: frozen tensors left out
    scheduler = tunespec.scheduler(trainer, recipe, steps_per_epoch=-(-len(train_b) // 16))
    print(plan.table(full=False))
    run.train(net, trainer, train_b, args.epochs, 16, "fine-tune on B", scheduler)
    after = run.evaluate(net, test_b, CLASSES_B)
    print(f"mAP on B after fine-tuning: {after:.3f} (before: {before:.3f})")
    print(plan.verify())
    print(f"wall time {time.perf_counter() - started:.0f}s")
    return Result(run, weights, net, plan, trainer, before, after)


if __name__ == "__main__":
    main()
