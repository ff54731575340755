"""Small synthetic datasets of shapes, for the demos and the tests (no download needed).

One scene generator, two on-disk formats: ``coco`` (COCO instance segmentation with exact RLE
masks of the visible pixels, as mmdet's ``CocoDataset`` reads it) and ``ade`` (ADE20K-style
semantic maps, uint8, 0 = background, as mmseg's ``ADE20KDataset`` reads it). Scenes are
deterministic functions of ``(seed, split, index)``: regenerating gives byte-identical files,
train and val never share a scene. Layouts and scene styles: docs/datasets.md.

    python -m convnext_dense.datasets.toy {coco,ade} OUT_DIR --seed 0 \\
        --num-train 200 --num-val 50 --size 256 192
"""
import argparse
import json
import os
import os.path as osp
import sys
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

from ..errors import ConfigError

CLASSES: Tuple[str, ...] = ('circle', 'square', 'triangle', 'star', 'cross')
# Visualisation colours (RGB) of the classes, for dataset metainfo.
PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (220, 20, 60), (0, 130, 230), (250, 170, 30), (0, 170, 80), (160, 60, 200))
# their hues on OpenCV's 0..180 scale (the ADE scenes paint each class in its own hue)
_PALETTE_HUES: Tuple[float, ...] = tuple(
    float(cv2.cvtColor(np.uint8([[c]]), cv2.COLOR_RGB2HSV)[0, 0, 0]) for c in PALETTE)
SPLITS = {'coco': ('train', 'val'), 'ade': ('training', 'validation')}
_SPLIT_IDS = {'train': 0, 'val': 1, 'training': 0, 'validation': 1}
_SUBPIXEL = 4  # cv2.fillPoly shift: vertices at 1/16 pixel


# ----------------------------------------------------------------------------- scene
def _shape_polygon(label: int, radius: float, aspect: float, angle: float) -> np.ndarray:
    """Vertices (V, 2) of class ``label`` around the origin, before translation."""
    name = CLASSES[label]
    if name == 'circle':
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif name == 'square':
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) / np.sqrt(2)
    elif name == 'triangle':
        t = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif name == 'star':
        t = np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    elif name == 'cross':
        a, b = 1.0, 0.3
        pts = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a],
                        [-b, b], [-a, b], [-a, -b], [-b, -b]], float)
    else:  # pragma: no cover - CLASSES and this function change together
        raise ValueError(f'no polygon for class {name!r}')
    pts = pts * radius * np.array([aspect, 1.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return pts @ rotation.T


def _fill(shape_hw: Tuple[int, int], pts: np.ndarray) -> np.ndarray:
    mask = np.zeros(shape_hw, np.uint8)
    cv2.fillPoly(mask, [np.round(pts * (1 << _SUBPIXEL)).astype(np.int32)], 1,
                 lineType=cv2.LINE_8, shift=_SUBPIXEL)
    return mask.astype(bool)


def _random_color(rng: np.random.Generator, saturation: Tuple[float, float],
                  value: Tuple[float, float]) -> np.ndarray:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*saturation) * 255,
                      rng.uniform(*value) * 255]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted textured background, float32 (H, W, 3) in 0..255."""
    c1 = _random_color(rng, (0.0, 0.35), (0.25, 0.85))
    c2 = _random_color(rng, (0.0, 0.35), (0.25, 0.85))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    kind = rng.integers(4)
    if kind == 0:  # linear gradient
        angle = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(angle) + yy * np.sin(angle)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    elif kind == 1:  # stripes
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 24)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    elif kind == 2:  # checkerboard
        cell = int(rng.integers(8, 32))
        t = ((xx // cell + yy // cell) % 2).astype(np.float32)
    else:  # smooth noise
        small = rng.random((max(height // 16, 2), max(width // 16, 2))).astype(np.float32)
        t = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


@dataclass(frozen=True)
class SceneStyle:
    """How :func:`generate_scene` draws its shapes.

    Args:
        radius: range of a shape's radius, as a fraction of the shorter image side.
        class_colours: paint every shape in the hue of its class (:data:`PALETTE`, jittered by
            up to ``hue_jitter`` degrees, saturation and brightness random but clearly above
            the muted background's), so that colour and outline both say the class, as in a
            real scene where sky is blue and grass green. Off: any vivid colour, and only the
            outline tells the class.
        hue_jitter: see ``class_colours``; degrees of the 0..360 hue circle.
    """
    radius: Tuple[float, float] = (0.07, 0.28)
    class_colours: bool = False
    hue_jitter: float = 10.0


#: The COCO scenes: many small shapes of any colour (an instance-recognition problem).
COCO_STYLE = SceneStyle()
#: The ADE scenes: a few large shapes in their class colour (a scene-parsing problem that a
#: small network trained from scratch for minutes on a CPU can learn, not only memorise).
ADE_STYLE = SceneStyle(radius=(0.16, 0.34), class_colours=True)


def _class_colour(rng: np.random.Generator, label: int, hue_jitter: float) -> np.ndarray:
    """A vivid RGB colour (float32) near the hue of ``PALETTE[label]``."""
    hue = _PALETTE_HUES[label] + rng.uniform(-hue_jitter, hue_jitter) / 2  # OpenCV: 0..180
    hsv = np.array([[[hue % 180, rng.uniform(0.6, 1.0) * 255, rng.uniform(0.55, 1.0) * 255]]],
                   np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def generate_scene(rng: np.random.Generator, width: int, height: int, max_objects: int = 6,
                   style: SceneStyle = COCO_STYLE) -> Tuple[np.ndarray, List[Dict]]:
    """Draw one scene.

    Returns ``(image, instances)``: ``image`` uint8 (H, W, 3) RGB; ``instances`` a list (back to
    front) of ``dict(label=0..K-1, mask=bool (H, W) of the visible pixels)``.
    """
    image = _background(rng, height, width)
    full_masks: List[np.ndarray] = []
    labels: List[int] = []
    colors: List[np.ndarray] = []
    min_side = min(width, height)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(10):
            label = int(rng.integers(len(CLASSES)))
            radius = min_side * rng.uniform(*style.radius)
            aspect = rng.uniform(0.75, 1.33) if CLASSES[label] != 'circle' else 1.0
            center = np.array([rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height])
            mask = _fill((height, width), _shape_polygon(
                label, radius, aspect, rng.uniform(0, 2 * np.pi)) + center)
            if mask.sum() < 30:
                continue
            # keep every existing shape more than half visible
            if all((m & ~mask & ~_union_after(full_masks, i)).sum() > 0.5 * m.sum()
                   for i, m in enumerate(full_masks)):
                break
        else:
            continue
        full_masks.append(mask)
        labels.append(label)
        colors.append(_class_colour(rng, label, style.hue_jitter) if style.class_colours
                      else _random_color(rng, (0.5, 1.0), (0.45, 1.0)))

    instances = []
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i, (mask, label, color) in enumerate(zip(full_masks, labels, colors)):
        # object shading: a gentle linear gradient across the shape
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (xx * np.cos(angle) + yy * np.sin(angle)) / max(width, height)
        image[mask] = (color * (1.0 + 0.3 * (ramp[mask] - ramp[mask].mean()))[:, None]
                       ).clip(0, 255)
        visible = mask & ~_union_after(full_masks, i)
        instances.append(dict(label=label, mask=visible))
    image += rng.normal(0, 4, image.shape).astype(np.float32)
    return image.clip(0, 255).astype(np.uint8), instances


def _union_after(masks: Sequence[np.ndarray], index: int) -> np.ndarray:
    """Union of the masks drawn after ``masks[index]`` (its occluders)."""
    out = np.zeros_like(masks[index])
    for m in masks[index + 1:]:
        out |= m
    return out


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator of scene ``index`` of ``split`` (independent per scene)."""
    return np.random.Generator(np.random.PCG64(
        np.random.SeedSequence([int(seed), _SPLIT_IDS[split], int(index)])))


def semantic_map(instances: Sequence[Dict], height: int, width: int) -> np.ndarray:
    """uint8 (H, W) label map: 0 = background, k = ``CLASSES[k - 1]``."""
    out = np.zeros((height, width), np.uint8)
    for inst in instances:  # back to front; visible masks are disjoint anyway
        out[inst['mask']] = inst['label'] + 1
    return out


# ----------------------------------------------------------------------------- writers
def _write_jpg(path: str, image_rgb: np.ndarray) -> None:
    if not cv2.imwrite(path, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR),
                       [cv2.IMWRITE_JPEG_QUALITY, 92]):
        raise OSError(f'could not write {path}')


def _check_args(num: int, size: Tuple[int, int]) -> None:
    if num < 0:
        raise ConfigError(f'number of images must be >= 0, got {num}')
    if len(size) != 2 or min(size) < 32:
        raise ConfigError(f'size must be (width, height) with both >= 32, got {tuple(size)}')


def write_coco(out_dir: str, seed: int = 0, num_train: int = 200, num_val: int = 50,
               size: Tuple[int, int] = (256, 192), max_objects: int = 6) -> Dict[str, str]:
    """Write the COCO-format dataset; return ``{split: annotation file}``."""
    from pycocotools import mask as mask_utils
    width, height = size
    files = {}
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    for split, num in zip(SPLITS['coco'], (num_train, num_val)):
        _check_args(num, size)
        os.makedirs(osp.join(out_dir, split), exist_ok=True)
        images, annotations = [], []
        for index in range(num):
            image, instances = generate_scene(scene_rng(seed, split, index), width, height,
                                              max_objects)
            file_name = f'{index:06d}.jpg'
            _write_jpg(osp.join(out_dir, split, file_name), image)
            images.append(dict(id=index + 1, file_name=file_name, width=width, height=height))
            for inst in instances:
                rle = mask_utils.encode(np.asfortranarray(inst['mask'].astype(np.uint8)))
                bbox = [float(v) for v in mask_utils.toBbox(rle)]
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=index + 1, category_id=inst['label'] + 1,
                    segmentation=dict(size=[height, width], counts=rle['counts'].decode('ascii')),
                    area=float(mask_utils.area(rle)), bbox=bbox, iscrowd=0))
        dataset = dict(
            info=dict(description=f'convnext_dense toy shapes ({split}, seed {seed})',
                      version='1.0'),
            licenses=[],
            images=images, annotations=annotations,
            categories=[dict(id=k + 1, name=name, supercategory='shape')
                        for k, name in enumerate(CLASSES)])
        files[split] = osp.join(out_dir, 'annotations', f'instances_{split}.json')
        with open(files[split], 'w') as f:
            json.dump(dataset, f)
    return files


def write_ade(out_dir: str, seed: int = 0, num_train: int = 200, num_val: int = 50,
              size: Tuple[int, int] = (256, 192), max_objects: int = 3,
              style: SceneStyle = ADE_STYLE) -> Dict[str, str]:
    """Write the ADE20K-format dataset; return ``{split: annotation directory}``.

    By default its scenes are drawn in :data:`ADE_STYLE` (a few large shapes in their class
    colours); ``style=COCO_STYLE, max_objects=6`` gives the scenes :func:`write_coco` draws.
    """
    width, height = size
    dirs = {}
    for split, num in zip(SPLITS['ade'], (num_train, num_val)):
        _check_args(num, size)
        img_dir = osp.join(out_dir, 'images', split)
        ann_dir = osp.join(out_dir, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for index in range(num):
            image, instances = generate_scene(scene_rng(seed, split, index), width, height,
                                              max_objects, style)
            _write_jpg(osp.join(img_dir, f'{index:06d}.jpg'), image)
            if not cv2.imwrite(osp.join(ann_dir, f'{index:06d}.png'),
                               semantic_map(instances, height, width)):
                raise OSError(f'could not write {ann_dir}/{index:06d}.png')
        dirs[split] = ann_dir
    return dirs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog='python -m convnext_dense.datasets.toy',
        description='Write a small synthetic shapes dataset in COCO instance-segmentation or '
                    'ADE20K semantic-segmentation format.')
    parser.add_argument('format', choices=sorted(SPLITS), help='coco or ade')
    parser.add_argument('out_dir', help='output directory (created; files are overwritten)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--num-train', type=int, default=200)
    parser.add_argument('--num-val', type=int, default=50)
    parser.add_argument('--size', type=int, nargs=2, default=(256, 192), metavar=('W', 'H'))
    parser.add_argument('--max-objects', type=int, default=None,
                        help='most shapes per scene (default: 6 for coco, 3 for ade)')
    args = parser.parse_args(argv)
    if args.max_objects is None:
        args.max_objects = 6 if args.format == 'coco' else 3
    if args.max_objects < 1:
        parser.error(f'--max-objects must be >= 1, got {args.max_objects}')
    try:
        writer = write_coco if args.format == 'coco' else write_ade
        writer(args.out_dir, args.seed, args.num_train, args.num_val, tuple(args.size),
               args.max_objects)
    except ValueError as error:
        parser.error(str(error))
    print(f'wrote {args.format} toy dataset ({args.num_train} train / {args.num_val} val, '
          f'{args.size[0]}x{args.size[1]}, seed {args.seed}, classes {", ".join(CLASSES)}) '
          f'to {args.out_dir}')


if __name__ == '__main__':
    sys.exit(main())
