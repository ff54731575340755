"""The toy shapes generator: determinism, consistent COCO / ADE annotations, the learnable
ADE scenes, CLI."""
import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from convnext_dense.datasets import toy

ROOT = Path(__file__).resolve().parents[2]
SIZE = (96, 64)


def _files(root: Path):
    return sorted(p.relative_to(root) for p in root.rglob('*') if p.is_file())


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    for name, seed in (('a', 3), ('b', 3), ('c', 4)):
        toy.write_coco(str(tmp_path / name), seed=seed, num_train=4, num_val=2, size=SIZE)
    a, b, c = tmp_path / 'a', tmp_path / 'b', tmp_path / 'c'
    assert _files(a) == _files(b) == _files(c)
    assert len(_files(a)) == 4 + 2 + 2
    for rel in _files(a):
        assert filecmp.cmp(a / rel, b / rel, shallow=False), rel
    assert not filecmp.cmp(a / 'annotations/instances_train.json',
                           c / 'annotations/instances_train.json', shallow=False)


def test_more_images_keep_the_first_ones_and_splits_differ(tmp_path):
    toy.write_coco(str(tmp_path / 'small'), seed=0, num_train=2, num_val=2, size=SIZE)
    toy.write_coco(str(tmp_path / 'big'), seed=0, num_train=5, num_val=2, size=SIZE)
    for rel in ('train/000000.jpg', 'train/000001.jpg', 'val/000001.jpg'):
        assert filecmp.cmp(tmp_path / 'small' / rel, tmp_path / 'big' / rel, shallow=False)
    assert not filecmp.cmp(tmp_path / 'big/train/000000.jpg', tmp_path / 'big/val/000000.jpg',
                           shallow=False)


def test_coco_annotations_are_consistent(tmp_path):
    width, height = 128, 96
    files = toy.write_coco(str(tmp_path), seed=1, num_train=30, num_val=3, size=(width, height))
    data = json.loads(Path(files['train']).read_text())
    assert [c['name'] for c in data['categories']] == list(toy.CLASSES)
    assert [c['id'] for c in data['categories']] == list(range(1, len(toy.CLASSES) + 1))
    images = {im['id']: im for im in data['images']}
    assert len(images) == 30
    assert all(im['width'] == width and im['height'] == height for im in images.values())
    ids = [a['id'] for a in data['annotations']]
    assert len(set(ids)) == len(ids)
    per_image = {}
    for ann in data['annotations']:
        assert ann['image_id'] in images and ann['iscrowd'] == 0
        assert 1 <= ann['category_id'] <= len(toy.CLASSES)
        mask = mask_utils.decode(ann['segmentation']).astype(bool)
        assert mask.shape == (height, width)
        assert ann['area'] == mask.sum() > 0
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann['bbox']
        assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                ys.max() - ys.min() + 1)
        assert ann['area'] <= w * h
        assert 0 <= x and x + w <= width and 0 <= y and y + h <= height
        per_image.setdefault(ann['image_id'], []).append(mask)
    # every image has objects, visible masks never overlap, every class occurs
    assert set(per_image) == set(images)
    for masks in per_image.values():
        assert np.stack(masks).sum(0).max() == 1
    assert {a['category_id'] for a in data['annotations']} == set(range(1, 6))
    image = cv2.imread(str(tmp_path / 'train' / images[1]['file_name']))
    assert image.shape == (height, width, 3)


def _coco_maps(root: Path, split: str, num: int):
    """Per image, the semantic map that the COCO annotations of ``split`` describe."""
    data = json.loads((root / f'annotations/instances_{split}.json').read_text())
    maps = [np.zeros(SIZE[::-1], np.uint8) for _ in range(num)]
    for ann in data['annotations']:
        maps[ann['image_id'] - 1][mask_utils.decode(ann['segmentation']).astype(bool)] = \
            ann['category_id']
    return maps


def _read_png(path: Path) -> np.ndarray:
    png = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint8 and png.ndim == 2
    return png


def test_ade_in_coco_style_matches_the_coco_masks_of_the_same_scenes(tmp_path):
    toy.write_coco(str(tmp_path / 'coco'), seed=2, num_train=3, num_val=2, size=SIZE)
    toy.write_ade(str(tmp_path / 'ade'), seed=2, num_train=3, num_val=2, size=SIZE,
                  max_objects=6, style=toy.COCO_STYLE)
    for coco_split, ade_split, num in (('train', 'training', 3), ('val', 'validation', 2)):
        for index, expected in enumerate(_coco_maps(tmp_path / 'coco', coco_split, num)):
            png = _read_png(tmp_path / f'ade/annotations/{ade_split}/{index:06d}.png')
            np.testing.assert_array_equal(png, expected)
            assert expected.max() > 0  # some shape in every scene
            assert filecmp.cmp(tmp_path / f'ade/images/{ade_split}/{index:06d}.jpg',
                               tmp_path / f'coco/{coco_split}/{index:06d}.jpg', shallow=False)


def test_ade_scenes_are_deterministic_and_match_the_generator(tmp_path):
    for name in ('a', 'b'):
        toy.write_ade(str(tmp_path / name), seed=4, num_train=3, num_val=2, size=SIZE)
    a, b = tmp_path / 'a', tmp_path / 'b'
    assert _files(a) == _files(b) and len(_files(a)) == 2 * (3 + 2)
    for rel in _files(a):
        assert filecmp.cmp(a / rel, b / rel, shallow=False), rel
    for split, num in (('training', 3), ('validation', 2)):
        for index in range(num):
            _, instances = toy.generate_scene(toy.scene_rng(4, split, index), *SIZE, 3,
                                              toy.ADE_STYLE)
            np.testing.assert_array_equal(
                _read_png(a / f'annotations/{split}/{index:06d}.png'),
                toy.semantic_map(instances, SIZE[1], SIZE[0]))


def test_ade_scenes_have_few_large_shapes_in_their_class_colour():
    """What makes the segmentation demo learnable: at most 3 shapes per scene, each large and
    painted in a hue close to its class's palette colour, on a greyish background."""
    width, height = 256, 192
    hues, areas, counts = {k: [] for k in range(len(toy.CLASSES))}, [], []
    for index in range(40):
        image, instances = toy.generate_scene(toy.scene_rng(0, 'training', index), width,
                                              height, 3, toy.ADE_STYLE)
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
        counts.append(len(instances))
        for inst in instances:
            mask = cv2.erode(inst['mask'].astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            if mask.sum() < 50:
                continue  # mostly hidden behind a later shape
            areas.append(inst['mask'].sum() / (width * height))
            # circular mean of the hue (OpenCV: 0..180) over the shape's inner pixels
            angle = hsv[..., 0][mask] * np.pi / 90
            mean = np.degrees(np.arctan2(np.sin(angle).mean(), np.cos(angle).mean())) / 2
            hues[inst['label']].append(mean % 180)
            assert np.median(hsv[..., 1][mask]) > 0.5 * 255  # vivid, unlike the background
    assert 1 <= min(counts) and max(counts) <= 3
    assert np.median(areas) > 0.05  # 0.078 here; the COCO scenes' shapes: 0.034
    for label, found in hues.items():
        assert found, toy.CLASSES[label]
        target = cv2.cvtColor(np.uint8([[toy.PALETTE[label]]]), cv2.COLOR_RGB2HSV)[0, 0, 0]
        distance = np.abs((np.array(found) - target + 90) % 180 - 90)
        assert distance.max() < 8, (toy.CLASSES[label], found, target)


def test_cli_writes_both_formats_and_rejects_bad_sizes(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = [sys.executable, '-m', 'convnext_dense.datasets.toy']
    out = subprocess.run(run + ['ade', str(tmp_path / 'ade'), '--seed', '5', '--num-train', '2',
                                '--num-val', '1', '--size', '64', '48'],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / 'ade/annotations/training').glob('*.png'))) == 2
    assert cv2.imread(str(tmp_path / 'ade/images/validation/000000.jpg')).shape == (48, 64, 3)
    bad = subprocess.run(run + ['coco', str(tmp_path / 'x'), '--size', '8', '8'],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and 'size' in bad.stderr and '(8, 8)' in bad.stderr
