"""Our ADE20K pipelines read the official layout and shift labels as reduce_zero_label must:
raw 0 ("other") -> 255 (ignored), raw k -> k - 1."""
import os.path as osp

import cv2
import numpy as np
import pytest

import convnext_dense  # noqa: F401
from helpers import REPO, SHARED_DATA
from mmengine.config import Config

SAMPLE = osp.join(SHARED_DATA, 'ade20k_sample')
CONFIG = osp.join(REPO, 'configs', 'segmentation', 'upernet_convnext_t_512_160k_ade20k.py')
NAMES = ['ADE_val_00000001', 'ADE_val_00000002', 'ADE_val_00000003']

pytestmark = pytest.mark.skipif(not osp.isdir(SAMPLE),
                                reason=f'{SAMPLE} (the shared ADE20K sample) is absent')


def build_dataset(pipeline_key: str, **overrides):
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    init_default_scope('mmseg')
    cfg = Config.fromfile(CONFIG)
    dataset = cfg.val_dataloader.dataset
    dataset.update(data_root=SAMPLE, pipeline=cfg[pipeline_key], **overrides)
    return DATASETS.build(dataset)


def raw_label(name: str) -> np.ndarray:
    return cv2.imread(osp.join(SAMPLE, 'annotations', 'validation', f'{name}.png'),
                      cv2.IMREAD_UNCHANGED)


def test_reads_the_three_images_with_shifted_labels():
    dataset = build_dataset('test_pipeline')
    assert len(dataset) == 3
    assert len(dataset.metainfo['classes']) == 150
    for index, name in enumerate(NAMES):
        sample = dataset[index]
        meta = sample['data_samples']
        assert osp.basename(meta.img_path) == f'{name}.jpg'
        raw = raw_label(name)
        assert raw.dtype == np.uint8 and raw.ndim == 2
        gt = meta.gt_sem_seg.data.numpy()[0]
        assert gt.shape == raw.shape == tuple(meta.ori_shape)
        # short side resized to 512 (long side at most 2048) for the network input
        height, width = sample['inputs'].shape[1:]
        assert min(height, width) == 512 or max(height, width) == 2048
        expected = np.where(raw == 0, 255, raw.astype(np.int64) - 1)
        np.testing.assert_array_equal(gt, expected)
        # by hand: a few pixels of every value present
        for value in np.unique(raw)[:5]:
            y, x = np.argwhere(raw == value)[0]
            assert gt[y, x] == (255 if value == 0 else value - 1), (name, value)
        assert (raw == 0).any() and gt.max() == 255 and gt[raw > 0].max() <= 149


def test_train_pipeline_crops_and_keeps_the_shift():
    dataset = build_dataset('train_pipeline')
    sample = dataset[0]
    gt = sample['data_samples'].gt_sem_seg.data.numpy()[0]
    assert gt.shape == tuple(sample['inputs'].shape[1:])
    assert max(gt.shape) <= 512
    allowed = set((raw_label(NAMES[0]).astype(np.int64) - 1).ravel()) - {-1} | {255}
    assert set(np.unique(gt)) <= allowed
