"""Inference the way mmdet and mmseg users run it, on every shipped config: DetInferencer /
MMSegInferencer and init_detector + inference_detector / init_model + inference_model.

Every config: the inferencer builds (on the meta device: the pipeline is what is tested, the
model's size does not matter) and its test pipeline runs on one real-sized image; mmdet's and
mmseg's array-input pipelines (LoadImageFromNDArray) too. One config per head type (Cascade
Mask R-CNN, Mask R-CNN, Mask2Former, DINO, UperNet): the whole inference on a small image with
random weights, the prediction's structure and the written picture asserted.
"""
import glob
import os.path as osp
import warnings

import numpy as np
import pytest
import torch

from helpers import DET_DEMO, REPO, SEG_DEMO, SHARED_DATA

DET_CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', 'detection', '*.py')))
SEG_CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', 'segmentation', '*.py')))


def _name(path):
    return osp.splitext(osp.basename(path))[0]


@pytest.fixture(scope='module')
def image_path(tmp_path_factory):
    """A real photo when ../shared/data is there, else a synthetic 640x480 JPEG."""
    real = osp.join(SHARED_DATA, 'tiny_coco', 'train2017', '000000079841.jpg')
    if osp.isfile(real):
        return real
    import cv2
    path = str(tmp_path_factory.mktemp('img') / 'synthetic.jpg')
    rng = np.random.default_rng(0)
    cv2.imwrite(path, rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    return path


def _config(path):
    import convnext_dense  # noqa: F401
    from mmengine.config import Config
    cfg = Config.fromfile(path)
    cfg.model.backbone.init_cfg = None  # no ImageNet download
    return cfg


def _inferencer(cfg, device='cpu'):
    if cfg.default_scope == 'mmdet':
        from mmdet.apis import DetInferencer
        return DetInferencer(model=cfg, weights=None, device=device, show_progress=False)
    from mmseg.apis import MMSegInferencer
    return MMSegInferencer(model=cfg, weights=None, device=device)


@pytest.mark.parametrize('path', DET_CONFIGS + SEG_CONFIGS, ids=_name)
def test_inferencer_pipeline_runs_on_every_config(path, image_path):
    import cv2
    cfg = _config(path)
    with warnings.catch_warnings(), torch.device('meta'):
        warnings.simplefilter('ignore')  # "weights is None": random weights are the point
        inferencer = _inferencer(cfg, device='meta')
    # the stock loader became the inferencer's, which reads paths and arrays alike
    assert inferencer.pipeline.transforms[0].__class__.__name__ == 'InferencerLoader'
    height, width = cv2.imread(image_path).shape[:2]
    for item in (image_path, cv2.imread(image_path)):
        data = inferencer.pipeline(item)
        inputs, sample = data['inputs'], data['data_samples']
        assert inputs.dtype in (torch.uint8, torch.float32) and inputs.shape[0] == 3
        assert sample.ori_shape == (height, width)
        assert tuple(inputs.shape[1:]) == tuple(sample.img_shape)

    # init_detector / init_model + inference_*: their array path swaps the first step for
    # LoadImageFromNDArray, which needs the stock loader there too
    from mmengine.dataset import Compose
    if cfg.default_scope == 'mmdet':
        from mmdet.utils import get_test_pipeline_cfg
        steps = get_test_pipeline_cfg(cfg.copy())
        steps[0].type = 'mmdet.LoadImageFromNDArray'
    else:
        steps = [s for s in cfg.copy().test_pipeline if s.get('type') != 'LoadAnnotations']
        assert steps[0].type == 'LoadImageFromFile'
        steps[0].type = 'LoadImageFromNDArray'
    data = Compose(steps)(dict(img=cv2.imread(image_path)))
    assert data['data_samples'].ori_shape == (height, width)


def test_training_pipelines_keep_the_checked_loader():
    """Only the test pipelines use the stock name: training still names a corrupt image."""
    for path in DET_CONFIGS + SEG_CONFIGS:
        cfg = _config(path)
        first = cfg.train_dataloader.dataset.pipeline[0]
        assert first.type == 'convnext_dense.LoadImageFromFileChecked', _name(path)
        assert cfg.test_dataloader.dataset.pipeline[0].type == 'LoadImageFromFile', _name(path)


def test_tools_run_test_pipelines_with_the_checked_loader():
    import sys
    sys.path.insert(0, osp.join(REPO, 'tools'))
    from _common import select_components
    cfg = _config(SEG_DEMO)
    cfg.test_dataloader = dict(dataset=dict(type='ConcatDataset', datasets=[
        dict(cfg.test_dataloader.dataset), dict(type='RepeatDataset', times=2,
                                                dataset=dict(cfg.test_dataloader.dataset))]))
    select_components(cfg)
    assert cfg.val_dataloader.dataset.pipeline[0].type == \
        'convnext_dense.LoadImageFromFileChecked'
    inner = cfg.test_dataloader.dataset.datasets
    assert inner[0].pipeline[0].type == inner[1].dataset.pipeline[0].type == \
        'convnext_dense.LoadImageFromFileChecked'
    assert cfg.tta_pipeline[0].type == 'LoadImageFromFile'  # not a dataloader: untouched


# ----------------------------------------------------------------------------- full inference
def _small(cfg, scale):
    """The test pipeline resizing to ``scale`` (w, h), for a quick CPU forward."""
    for pipeline in (cfg.test_dataloader.dataset.pipeline, cfg.get('test_pipeline')):
        for step in pipeline or []:
            if step.type == 'Resize':
                step.scale = scale
    return cfg


def _shrink_modern(cfg):
    """Mask2Former / DINO on ConvNeXt V2-atto: the same heads, a 3.4M-parameter backbone."""
    cfg.model.backbone.arch = 'v2-atto'
    cfg.model.backbone.layer_scale_init_value = None
    cfg.model.backbone.drop_path_rate = 0.0
    dims = [40, 80, 160, 320]
    if cfg.model.type == 'DINO':
        indices = cfg.model.backbone.out_indices
        cfg.model.neck.in_channels = [dims[i] for i in indices]
    else:
        cfg.model.panoptic_head.in_channels = dims
    return cfg


HEADS = {
    'cascade': (DET_DEMO, None),
    'mask_rcnn': (osp.join(REPO, 'configs', 'detection', 'mask_rcnn_convnext_t_coco.py'),
                  None),
    'mask2former': (osp.join(REPO, 'configs', 'detection',
                             'mask2former_convnext_t_lsj_50e_coco.py'), _shrink_modern),
    'dino': (osp.join(REPO, 'configs', 'detection', 'dino_4scale_convnext_t_12e_coco.py'),
             _shrink_modern),
    'upernet': (SEG_DEMO, None),
}


@pytest.mark.parametrize('head', sorted(HEADS))
def test_whole_inference_per_head_type(head, image_path, tmp_path):
    import cv2
    import mmcv
    path, shrink = HEADS[head]
    # DINO keeps its 900 queries: the encoder needs more tokens than that (stride 8 and up)
    cfg = _small(_config(path), (400, 300) if head == 'dino' else (256, 192))
    if shrink:
        cfg = shrink(cfg)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        inferencer = _inferencer(cfg)
        # the inferencer given no weights skips init_weights, and DINO's level_embed is
        # torch.Tensor(...) until then: whatever memory held (seen as NaN boxes)
        inferencer.model.init_weights()
        result = inferencer(image_path, out_dir=str(tmp_path), return_datasamples=True)
    height, width = cv2.imread(image_path).shape[:2]
    # mmdet: {'predictions': [sample], ...}; mmseg returns the sample itself
    sample = result['predictions'][0] if cfg.default_scope == 'mmdet' else result
    if cfg.default_scope == 'mmdet':
        instances = sample.pred_instances
        n = len(instances)
        assert instances.bboxes.shape == (n, 4) and instances.scores.shape == (n,)
        assert instances.labels.shape == (n,)
        if n:
            assert 0 <= int(instances.labels.min()) and \
                int(instances.labels.max()) < len(inferencer.model.dataset_meta['classes'])
            assert float(instances.bboxes[:, 2].max()) <= width + 1
        if head != 'dino':  # instance masks at the original size
            assert tuple(instances.masks.shape) == (n, height, width)
    else:
        seg = sample.pred_sem_seg.data
        assert tuple(seg.shape) == (1, height, width)
        assert int(seg.max()) < cfg.model.decode_head.num_classes
    drawn = glob.glob(str(tmp_path / 'vis' / '*'))
    assert len(drawn) == 1
    assert mmcv.imread(drawn[0]).shape[:2] == (height, width)

    # the same model through init_detector + inference_detector / init_model + inference_model
    if cfg.default_scope == 'mmdet':
        from mmdet.apis import inference_detector
        again = inference_detector(inferencer.model, cv2.imread(image_path))
        assert len(again.pred_instances) == len(sample.pred_instances)
    else:
        from mmseg.apis import inference_model
        again = inference_model(inferencer.model, image_path)
        assert torch.equal(again.pred_sem_seg.data, sample.pred_sem_seg.data)
