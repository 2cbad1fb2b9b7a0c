"""Synthetic detection data in Pascal VOC layout: coloured shapes drawn on noise, with boxes.

Nothing is downloaded: ``write_voc`` draws a data set and writes it the way VOC does
(``VOC2007/JPEGImages``, ``Annotations/*.xml``, ``ImageSets/Main/<split>.txt``), so GluonCV's
``VOCDetection`` reads it; ``read_voc`` reads it back without any framework.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross", "diamond")


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple) -> None:
    x1, y1, x2, y2 = box
    cx, cy, w = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, y1), (x2, y2), (x1, y2)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], fill=colour)
    elif shape == "cross":
        t = w / 3
        draw.rectangle((x1, cy - t / 2, x2, cy + t / 2), fill=colour)
        draw.rectangle((cx - t / 2, y1, cx + t / 2, y2), fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}; shapes: {', '.join(SHAPES)}")


def draw_sample(rng: np.random.Generator, classes: tuple[str, ...], size: int,
                max_objects: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """One image (size x size x 3, uint8) and its boxes (N x 5: x1, y1, x2, y2, class index)."""
    noise = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
    image = Image.fromarray(noise).resize((size, size), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    boxes: list[list[float]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):  # place without heavy overlap, so every object stays visible
            w = int(rng.integers(size // 5, size // 2))
            x1, y1 = (int(v) for v in rng.integers(0, size - w, 2))
            box = (x1, y1, x1 + w, y1 + w)
            if all(_iou(box, b) < 0.1 for b in boxes):
                break
        else:
            continue
        label = int(rng.integers(len(classes)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        _draw(draw, classes[label], box, colour)
        boxes.append([*box, label])
    return np.asarray(image), np.asarray(boxes, dtype=np.float32).reshape(-1, 5)


def _iou(a: tuple, b: list) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def write_voc(root: str | Path, classes: tuple[str, ...], splits: dict[str, int], size: int = 160,
              seed: int = 0) -> Path:
    """Draw ``splits`` ({'train': 200, 'test': 50}) and write them under ``root/VOC2007``."""
    base = Path(root) / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, count in splits.items():
        ids = [f"{split}_{i:05d}" for i in range(count)]
        for image_id in ids:
            image, boxes = draw_sample(rng, classes, size)
            Image.fromarray(image).save(base / "JPEGImages" / f"{image_id}.jpg", quality=95)
            _write_annotation(base / "Annotations" / f"{image_id}.xml", image_id, size, boxes, classes)
        (base / "ImageSets/Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return base.parent


def _write_annotation(path: Path, image_id: str, size: int, boxes: np.ndarray, classes: tuple) -> None:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    dims = ET.SubElement(root, "size")
    for key, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(dims, key).text = str(value)
    for x1, y1, x2, y2, label in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[int(label)]
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        # VOC boxes are 1-based pixel indices; GluonCV's reader subtracts 1 again.
        for key, value in (("xmin", x1), ("ymin", y1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(bndbox, key).text = str(int(value) + 1)
    ET.ElementTree(root).write(path)


def read_voc(root: str | Path, split: str, classes: tuple[str, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, boxes) pairs of one split, boxes as written by ``write_voc`` (0-based)."""
    base = Path(root) / "VOC2007"
    out = []
    for image_id in (base / "ImageSets/Main" / f"{split}.txt").read_text().split():
        image = np.asarray(Image.open(base / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
        boxes = []
        for obj in ET.parse(base / "Annotations" / f"{image_id}.xml").findall("object"):
            bb = obj.find("bndbox")
            coords = [float(bb.find(k).text) - 1 for k in ("xmin", "ymin", "xmax", "ymax")]
            boxes.append([*coords, classes.index(obj.find("name").text)])
        out.append((image, np.asarray(boxes, dtype=np.float32).reshape(-1, 5)))
    return out
