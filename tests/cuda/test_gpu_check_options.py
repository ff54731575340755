"""Runs without a GPU (not marked ``cuda``): the --cfg-options that the GPU recipe runs of
test_cuda_recipes.py pass to tools/train.py and tools/test.py are accepted and give the intended
configs and datasets, so that a GPU session does not find out first."""
import os.path as osp

import pytest

from cuda_helpers import SHARED_DATA, cascade_options, upernet_options
from helpers import REPO, load_tool

TINY_COCO = osp.join(SHARED_DATA, 'tiny_coco')
ADE = osp.join(SHARED_DATA, 'ade20k_sample')
CASCADE_T = osp.join(REPO, 'configs', 'detection', 'cascade_convnext_t_coco.py')
UPERNET_T = osp.join(REPO, 'configs', 'segmentation', 'upernet_convnext_t_512_160k_ade20k.py')


_load_tool = load_tool


def _config(tool, argv):
    import _common
    return _common.load_config(tool.parse_args(argv))


@pytest.mark.skipif(not osp.isfile(osp.join(TINY_COCO, 'annotations',
                                            'instances_train2017.json')),
                    reason=f'{TINY_COCO} is not available')
def test_cascade_t_run_options(tmp_path):
    from mmdet.registry import DATASETS
    options = cascade_options(TINY_COCO, 20, 10)
    train = _config(_load_tool('train'), [CASCADE_T, '--resume', '--work-dir', str(tmp_path),
                                          *options, 'train_cfg.max_epochs=2'])
    assert train.model.backbone.init_cfg is None and train.train_cfg.max_epochs == 2
    assert train.optim_wrapper.type == 'AmpOptimWrapper'
    assert train.default_hooks.logger.interval == 1 and train.log_processor.window_size == 1
    assert len(DATASETS.build(train.train_dataloader.dataset)) == 20
    for key in ('val_evaluator', 'test_evaluator'):
        assert osp.isfile(train[key].ann_file), train[key].ann_file
    test = _config(_load_tool('test'), [CASCADE_T, 'x.pth', '--work-dir', str(tmp_path),
                                        *options])
    assert test.model.test_cfg.rcnn.score_thr == 0.0
    assert len(DATASETS.build(test.test_dataloader.dataset)) == 10
    assert len(DATASETS.build(test.val_dataloader.dataset)) == 10


@pytest.mark.skipif(not osp.isdir(osp.join(ADE, 'images', 'validation')),
                    reason=f'{ADE} is not available')
def test_upernet_t_run_options(tmp_path):
    from mmseg.registry import DATASETS
    train_tool = _load_tool('train')
    options = upernet_options(ADE, 16)
    train = _config(train_tool, [UPERNET_T, '--amp', 'bf16', '--resume', '--work-dir',
                                 str(tmp_path), *options, 'train_cfg.max_iters=20'])
    assert train.model.backbone.init_cfg is None and train.train_cfg.max_iters == 20
    assert train.default_hooks.checkpoint.interval == 16
    assert len(DATASETS.build(train.train_dataloader.dataset)) == 3
    assert len(DATASETS.build(train.test_dataloader.dataset)) == 3
