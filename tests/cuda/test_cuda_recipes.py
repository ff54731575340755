"""The paper's recipes on the GPU, at full recipe resolution, without pretrained weights
(backbone init_cfg None):

- Cascade Mask R-CNN T (fp16 AMP, the recipe's AmpOptimWrapper) on ../shared/data/tiny_coco
  and UperNet T (``--amp bf16``) on ../shared/data/ade20k_sample, through tools/train.py:
  about 20 iterations with finite losses, a checkpoint, ``--resume`` continuing from it, then
  tools/test.py computing COCO bbox/segm mAP and mIoU. Seconds per iteration and peak memory
  are recorded (cuda_helpers.record_figure).
- Mask R-CNN T and Cascade Mask R-CNN S/B/L/XL: the whole detector builds and runs training
  steps (fp16 AMP, SyncBN reverted as in one process) on a synthetic 2-image batch.

GPU_CHECK_DET_IMAGES (default 20) sets the tiny_coco images per epoch (two epochs, the second
after the resume, two images per iteration), GPU_CHECK_DET_TEST_IMAGES (default 10) the images
tested, GPU_CHECK_SEG_ITERS (default 16) the UperNet iterations before the resume (4 after).
"""
import gc
import math
import os
import os.path as osp
import re
import time

import numpy as np
import pytest
import torch

from cuda_helpers import (SHARED_DATA, all_finite, cascade_options, log_iterations,
                          record_figure, timing, upernet_options)
from helpers import REPO, metric, run_tool

pytestmark = pytest.mark.cuda

DET = osp.join(REPO, 'configs', 'detection')
CASCADE_T = osp.join(DET, 'cascade_convnext_t_coco.py')
UPERNET_T = osp.join(REPO, 'configs', 'segmentation', 'upernet_convnext_t_512_160k_ade20k.py')
TINY_COCO = osp.join(SHARED_DATA, 'tiny_coco')
TINY_COCO_JSON = osp.join(TINY_COCO, 'annotations', 'instances_train2017.json')
ADE = osp.join(SHARED_DATA, 'ade20k_sample')
DET_IMAGES = int(os.environ.get('GPU_CHECK_DET_IMAGES', 20))
DET_TEST_IMAGES = int(os.environ.get('GPU_CHECK_DET_TEST_IMAGES', 10))
SEG_ITERS = int(os.environ.get('GPU_CHECK_SEG_ITERS', 16))


def tool(*args, cwd):
    # a few threads for the data workers and COCO evaluation; the GPU does the rest
    return run_tool(*args, cwd=cwd, threads='4', timeout=900)


# ------------------------------------------------------------------ Cascade Mask R-CNN T
@pytest.fixture(scope='module')
def cascade(tmp_path_factory):
    if not osp.isfile(TINY_COCO_JSON):
        pytest.skip(f'{TINY_COCO} is not available')
    work = tmp_path_factory.mktemp('cascade_t')
    options = cascade_options(TINY_COCO, DET_IMAGES, DET_TEST_IMAGES)
    first = tool('train.py', CASCADE_T, '--work-dir', str(work), *options,
                 'train_cfg.max_epochs=1', cwd=work)
    second = tool('train.py', CASCADE_T, '--resume', '--work-dir', str(work), *options,
                  'train_cfg.max_epochs=2', cwd=work)
    test = tool('test.py', CASCADE_T, str(work / 'epoch_2.pth'), '--work-dir',
                str(work / 'test'), *options, cwd=work)
    return work, first, second, test


def test_cascade_t_trains_with_fp16_amp_and_finite_losses(cascade):
    work, first, second, _ = cascade
    assert "type='AmpOptimWrapper'" in first
    rows = log_iterations(first)
    assert len(rows) >= DET_IMAGES // 2 - 1 and all_finite(rows), first[-3000:]
    assert osp.isfile(work / 'epoch_1.pth')
    assert 0.0 <= metric(first, 'coco/segm_mAP') <= 1.0  # the validation after the epoch
    resumed = log_iterations(second)
    assert all_finite(resumed)
    record_figure('Cascade Mask R-CNN T, train (tiny_coco, batch 2, fp16 AMP, full recipe '
                  'resolution)', **timing(rows[3:] + resumed[3:] or rows + resumed, skip=0),
                  peak_memory_all_mib=max(r['memory'] for r in rows + resumed))


def test_cascade_t_resumes_from_the_checkpoint(cascade):
    work, first, second, _ = cascade
    iters = len(log_iterations(first))
    assert re.search(rf'resumed epoch: 1, iter: {iters}\b', second), second[-3000:]
    assert re.search(r'Epoch\(train\)\s*\[2\]', second)
    assert osp.isfile(work / 'epoch_2.pth')


def test_cascade_t_test_computes_coco_bbox_and_segm_map(cascade):
    *_, test = cascade
    for name in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        value = metric(test, name)
        assert 0.0 <= value <= 1.0
        print(f'{name}: {value}')
    rows = log_iterations(test, 'test')
    if rows:
        record_figure('Cascade Mask R-CNN T, test (1333x800)', **timing(rows, skip=2))


# ------------------------------------------------------------------ UperNet T
@pytest.fixture(scope='module')
def upernet(tmp_path_factory):
    if not osp.isdir(osp.join(ADE, 'images', 'validation')):
        pytest.skip(f'{ADE} is not available')
    work = tmp_path_factory.mktemp('upernet_t')
    options = upernet_options(ADE, SEG_ITERS)
    first = tool('train.py', UPERNET_T, '--amp', 'bf16', '--work-dir', str(work), *options,
                 f'train_cfg.max_iters={SEG_ITERS}', cwd=work)
    second = tool('train.py', UPERNET_T, '--amp', 'bf16', '--resume', '--work-dir', str(work),
                  *options, f'train_cfg.max_iters={SEG_ITERS + 4}', cwd=work)
    test = tool('test.py', UPERNET_T, str(work / f'iter_{SEG_ITERS + 4}.pth'), '--work-dir',
                str(work / 'test'), *options, cwd=work)
    return work, first, second, test


def test_upernet_t_trains_with_bf16_amp_and_finite_losses(upernet):
    work, first, second, _ = upernet
    assert "dtype='bfloat16'" in first
    # one process: the heads' SyncBN was turned into BatchNorm
    assert 'SyncBatchNorm (SyncBN) layers in the model will be automatically reverted' in first
    rows = log_iterations(first)
    assert [r['iter'] for r in rows] == list(range(1, SEG_ITERS + 1))
    assert all_finite(rows), first[-3000:]
    resumed = log_iterations(second)
    assert all_finite(resumed)
    record_figure('UperNet T, train (ADE20K samples, crop 512, batch 2, bf16 AMP)',
                  **timing(rows[3:] + resumed or rows, skip=0),
                  peak_memory_all_mib=max(r['memory'] for r in rows + resumed))


def test_upernet_t_resumes_from_the_checkpoint(upernet):
    work, _, second, _ = upernet
    assert re.search(rf'resumed epoch: \d+, iter: {SEG_ITERS}\b', second), second[-3000:]
    assert [r['iter'] for r in log_iterations(second)] == list(
        range(SEG_ITERS + 1, SEG_ITERS + 5))


def test_upernet_t_test_computes_miou(upernet):
    *_, test = upernet
    for name in ('aAcc', 'mIoU', 'mAcc'):
        value = metric(test, name)
        assert 0.0 <= value <= 100.0
        print(f'{name}: {value}')


# ------------------------------------------------------------------ one step per model
STEP_CONFIGS = ['mask_rcnn_convnext_t_coco.py', 'cascade_convnext_s_coco.py',
                'cascade_convnext_b_coco.py', 'cascade_convnext_l_in22k_coco.py',
                'cascade_convnext_xl_in22k_coco.py']


def det_batch(num_images=2, size=(800, 1216), num_boxes=4, seed=0):
    """Images of recipe size with boxes and rectangular masks, as PackDetInputs gives them."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.bbox import HorizontalBoxes
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    rng = np.random.default_rng(seed)
    h, w = size
    inputs, samples = [], []
    for _ in range(num_images):
        inputs.append(torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)))
        x1, y1 = rng.uniform(0, 0.6 * w, num_boxes), rng.uniform(0, 0.6 * h, num_boxes)
        bw, bh = rng.uniform(48, 0.4 * w, num_boxes), rng.uniform(48, 0.4 * h, num_boxes)
        boxes = np.stack([x1, y1, x1 + bw, y1 + bh], axis=1).astype(np.float32)
        masks = np.zeros((num_boxes, h, w), dtype=np.uint8)
        for mask, (a, b, c, d) in zip(masks, boxes.astype(int)):
            mask[b:d, a:c] = 1
        sample = DetDataSample(metainfo=dict(img_shape=size, ori_shape=size,
                                             scale_factor=(1.0, 1.0), flip=False))
        sample.gt_instances = InstanceData(
            bboxes=HorizontalBoxes(torch.from_numpy(boxes)),
            labels=torch.from_numpy(rng.integers(0, 80, num_boxes)),
            masks=BitmapMasks(masks, h, w))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


@pytest.mark.parametrize('config', STEP_CONFIGS)
def test_detector_builds_and_trains_a_step_with_fp16_amp(config):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(osp.join(DET, config))
    cfg.model.backbone.init_cfg = None
    wrapper_cfg = cfg.optim_wrapper
    if wrapper_cfg.get('type', 'OptimWrapper') == 'OptimWrapper':  # as tools/train.py --amp
        wrapper_cfg.type, wrapper_cfg.loss_scale = 'AmpOptimWrapper', 'dynamic'
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model = MODELS.build(cfg.model)
    model.init_weights()
    model = revert_sync_batchnorm(model).cuda()
    optim_wrapper = build_optim_wrapper(model, wrapper_cfg)
    build_s = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    step_s = []
    for step in range(2):
        batch = det_batch(seed=step)
        torch.cuda.synchronize()
        start = time.perf_counter()
        log_vars = model.train_step(batch, optim_wrapper)
        torch.cuda.synchronize()
        step_s.append(time.perf_counter() - start)
        losses = {k: float(torch.as_tensor(v).detach()) for k, v in log_vars.items()
                  if 'loss' in k}
        assert losses and all(math.isfinite(v) for v in losses.values()), losses
    assert 'loss_mask' in losses or 's0.loss_mask' in losses
    record_figure(f'{config}: training step (2 images 1216x800, fp16 AMP)',
                  params_M=round(params / 1e6, 1), build_s=round(build_s, 2),
                  first_step_s=round(step_s[0], 3), second_step_s=round(step_s[1], 3),
                  peak_memory_mib=int(torch.cuda.max_memory_allocated() / 2**20))
    del model, optim_wrapper, log_vars
    gc.collect()
    torch.cuda.empty_cache()
