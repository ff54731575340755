"""The paper's recipes on the GPU, at full recipe resolution, without pretrained weights
(backbone init_cfg None):

- Cascade Mask R-CNN T (fp16 AMP, the recipe's AmpOptimWrapper) on ../shared/data/tiny_coco
  and UperNet T (``--amp bf16``) on ../shared/data/ade20k_sample, through tools/train.py:
  about 20 iterations with finite losses, a checkpoint, ``--resume`` continuing from it, then
  tools/test.py computing COCO bbox/segm mAP and mIoU. Seconds per iteration and peak memory
  are recorded (cuda_helpers.record_figure).
- Mask R-CNN T and Cascade Mask R-CNN S/B/L/XL: the whole detector builds and runs training
  steps (fp16 AMP, SyncBN reverted as in one process) on a synthetic 2-image batch.
- The newer recipes (RECIPES: Mask R-CNN V2 T/B/L/H, Mask2Former and DINO T/B on COCO, UperNet
  V2 T/B/L/H and Mask2Former T/B on ADE20K): each builds and runs two fp16 AMP training steps
  (cuda_helpers.amp_train_steps) on synthetic batches at its training size, with finite losses
  of the names its heads give; seconds per step, peak memory and the loss scale are recorded.
  amp_train_steps takes a device, so its logic can be tried on a CPU (bf16 autocast there).

GPU_CHECK_DET_IMAGES (default 20) sets the tiny_coco images per epoch (two epochs, the second
after the resume, two images per iteration), GPU_CHECK_DET_TEST_IMAGES (default 10) the images
tested, GPU_CHECK_SEG_ITERS (default 16) the UperNet iterations before the resume (4 after),
GPU_CHECK_STEP_IMAGES (default 2) the images per batch of the newer recipes' steps.
"""
import math
import os
import os.path as osp
import re

import numpy as np
import pytest
import torch

from cuda_helpers import (SHARED_DATA, all_finite, amp_train_steps, cascade_options,
                          log_iterations, record_figure, timing, upernet_options)
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
# images per synthetic batch of the newer recipes' steps (RECIPES); the recipes themselves train
# 2 per GPU, the Mask R-CNN V2 ones 4
STEP_IMAGES = int(os.environ.get('GPU_CHECK_STEP_IMAGES', 2))


def det_batch(num_images=2, size=(800, 1216), num_boxes=4, seed=0, masks=True):
    """Images of size (h, w) with boxes and (``masks``) rectangular BitmapMasks filling them, as
    PackDetInputs gives them: uint8 (3, h, w) inputs, DetDataSamples with gt_instances."""
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
        low = min(48, 0.06 * h, 0.06 * w)  # 48 pixels at recipe sizes
        bw, bh = rng.uniform(low, 0.4 * w, num_boxes), rng.uniform(low, 0.4 * h, num_boxes)
        boxes = np.stack([x1, y1, x1 + bw, y1 + bh], axis=1).astype(np.float32)
        sample = DetDataSample(metainfo=dict(img_shape=size, ori_shape=size,
                                             scale_factor=(1.0, 1.0), flip=False))
        instances = InstanceData(bboxes=HorizontalBoxes(torch.from_numpy(boxes)),
                                 labels=torch.from_numpy(rng.integers(0, 80, num_boxes)))
        if masks:
            bitmaps = np.zeros((num_boxes, h, w), dtype=np.uint8)
            for bitmap, (a, b, c, d) in zip(bitmaps, boxes.astype(int)):
                bitmap[b:d, a:c] = 1
            instances.masks = BitmapMasks(bitmaps, h, w)
        sample.gt_instances = instances
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def seg_batch(num_images=2, size=(512, 512), num_classes=150, seed=0):
    """Images of size (h, w) with label maps as PackSegInputs gives them: uint8 (3, h, w)
    inputs, SegDataSamples whose gt_sem_seg is an int64 (1, h, w) map of one background class,
    three rectangles of other classes and an ignored (255) strip along the bottom."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    rng = np.random.default_rng(seed)
    h, w = size
    inputs, samples = [], []
    for _ in range(num_images):
        inputs.append(torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)))
        classes = rng.choice(num_classes, 4, replace=False)
        label = np.full((h, w), classes[0], dtype=np.int64)
        for cls in classes[1:]:
            y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
            label[y:y + rng.integers(h // 8, h // 2), x:x + rng.integers(w // 8, w // 2)] = cls
        label[-h // 16:] = 255
        sample = SegDataSample(metainfo=dict(img_shape=size, ori_shape=size, pad_shape=size,
                                             scale_factor=(1.0, 1.0), flip=False))
        sample.gt_sem_seg = PixelData(data=torch.from_numpy(label)[None])
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def assert_finite_losses(losses, expected, context):
    """Every step's losses finite, and the names ``expected`` among them."""
    for step, values in enumerate(losses):
        assert values and all(math.isfinite(v) for v in values.values()), (context, step, values)
        missing = [name for name in expected if name not in values]
        assert not missing, f'{context}: no {missing} among {sorted(values)}'


@pytest.mark.parametrize('config', STEP_CONFIGS)
def test_detector_builds_and_trains_a_step_with_fp16_amp(config):
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(DET, config))
    result = amp_train_steps(cfg, [det_batch(seed=step) for step in range(2)])
    assert result['wrapper'] == 'AmpOptimWrapper'
    assert_finite_losses(result['losses'], (), config)
    assert 'loss_mask' in result['losses'][-1] or 's0.loss_mask' in result['losses'][-1]
    record_figure(f'{config}: training step (2 images 1216x800, fp16 AMP)',
                  params_M=result['params_M'], build_s=result['build_s'],
                  first_step_s=result['step_s'][0], second_step_s=result['step_s'][1],
                  peak_memory_mib=result['peak_memory_mib'])


# ------------------------------------------------------------------ the newer recipes
# Two fp16 AMP training steps each on a synthetic batch of STEP_IMAGES images at the recipe's
# training size: the LSJ crop (Mask R-CNN V2, Mask2Former COCO: 1024x1024), the largest image
# of DETR's multi-scale resize (DINO: short side 800, long side <= 1333), the crop (ADE20K).
# T before B before L before H: the larger the model, the later (V2-H: about 680M parameters).
LSJ = (1024, 1024)
DETR_LARGEST = (800, 1333)
MASK_RCNN_LOSSES = ('loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask')
MASK2FORMER_LOSSES = ('loss_cls', 'loss_mask', 'loss_dice',  # the last decoder layer
                      'd0.loss_cls', 'd8.loss_mask', 'd8.loss_dice')  # the 9 before it
DINO_LOSSES = ('loss_cls', 'loss_bbox', 'loss_iou', 'd4.loss_iou',  # 6 decoder layers
               'enc_loss_cls', 'dn_loss_cls', 'dn_loss_bbox')  # encoder proposals, denoising
UPERNET_LOSSES = ('decode.loss_ce', 'aux.loss_ce')
RECIPES = [  # (config under configs/, batch, (h, w), losses expected)
    ('detection/mask_rcnn_convnext_v2_t_coco.py', 'instances', LSJ, MASK_RCNN_LOSSES),
    ('detection/mask2former_convnext_t_lsj_50e_coco.py', 'instances', LSJ, MASK2FORMER_LOSSES),
    ('detection/dino_4scale_convnext_t_12e_coco.py', 'boxes', DETR_LARGEST, DINO_LOSSES),
    ('segmentation/upernet_convnext_v2_t_512_160k_ade20k.py', 'semantic', (512, 512),
     UPERNET_LOSSES),
    ('segmentation/mask2former_convnext_t_512_160k_ade20k.py', 'semantic', (512, 512),
     tuple(f'decode.{name}' for name in MASK2FORMER_LOSSES)),
    ('detection/mask_rcnn_convnext_v2_b_coco.py', 'instances', LSJ, MASK_RCNN_LOSSES),
    ('detection/mask2former_convnext_b_in22k_lsj_50e_coco.py', 'instances', LSJ,
     MASK2FORMER_LOSSES),
    ('detection/dino_4scale_convnext_b_in22k_12e_coco.py', 'boxes', DETR_LARGEST, DINO_LOSSES),
    ('segmentation/upernet_convnext_v2_b_512_160k_ade20k.py', 'semantic', (512, 512),
     UPERNET_LOSSES),
    ('segmentation/mask2former_convnext_b_640_160k_in22k_ade20k.py', 'semantic', (640, 640),
     tuple(f'decode.{name}' for name in MASK2FORMER_LOSSES)),
    ('detection/mask_rcnn_convnext_v2_l_coco.py', 'instances', LSJ, MASK_RCNN_LOSSES),
    ('segmentation/upernet_convnext_v2_l_512_160k_ade20k.py', 'semantic', (512, 512),
     UPERNET_LOSSES),
    ('detection/mask_rcnn_convnext_v2_h_coco.py', 'instances', LSJ, MASK_RCNN_LOSSES),
    ('segmentation/upernet_convnext_v2_h_512_160k_ade20k.py', 'semantic', (512, 512),
     UPERNET_LOSSES),
    ('segmentation/upernet_convnext_v2_h_640_160k_in22k_ade20k.py', 'semantic', (640, 640),
     UPERNET_LOSSES),
]


def recipe_batch(kind, size, num_images=STEP_IMAGES, seed=0):
    """A synthetic training batch of ``kind``: 'instances' (boxes and masks), 'boxes' (boxes
    only) or 'semantic' (label maps)."""
    if kind == 'semantic':
        return seg_batch(num_images, size, seed=seed)
    return det_batch(num_images, size, seed=seed, masks=kind == 'instances')


def recipe_steps(config, kind, size, device='cuda', dtype='float16', num_images=STEP_IMAGES,
                 edit=None):
    """:func:`cuda_helpers.amp_train_steps` for ``config`` (a path under configs/) on two
    synthetic batches; ``edit(cfg)`` may change the loaded config first."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(REPO, 'configs', config))
    if edit is not None:
        edit(cfg)
    batches = [recipe_batch(kind, size, num_images, seed) for seed in range(2)]
    return amp_train_steps(cfg, batches, device=device, dtype=dtype)


@pytest.mark.parametrize('config,kind,size,expected', RECIPES,
                         ids=[osp.basename(r[0])[:-3] for r in RECIPES])
def test_recipe_builds_and_trains_two_steps_with_fp16_amp(config, kind, size, expected):
    result = recipe_steps(config, kind, size)
    assert result['wrapper'] == 'AmpOptimWrapper'
    assert_finite_losses(result['losses'], expected, config)
    h, w = size
    record_figure(f'{osp.basename(config)}: 2 training steps ({STEP_IMAGES} images {w}x{h}, '
                  f'fp16 AMP)', params_M=result['params_M'], build_s=result['build_s'],
                  first_step_s=result['step_s'][0], second_step_s=result['step_s'][1],
                  peak_memory_mib=result['peak_memory_mib'], loss_scale=result['loss_scale'],
                  losses=[round(step['loss'], 3) for step in result['losses']])
