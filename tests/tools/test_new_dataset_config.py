"""tools/new_dataset_config.py: a child config for your own COCO / ADE20K-format dataset,
trained and tested end to end; the class checks that stop a mismatched config before the first
iteration, each one line with exit status 2."""
import json
import re
import os.path as osp

import pytest
import torch

from helpers import DET_DEMO, REPO, SHARED_DATA, run_tool, toy_dataset
from test_tool_errors import assert_one_line_error, tool

CONFIGS = osp.join(REPO, 'configs')


@pytest.fixture(scope='module')
def toy_coco(tmp_path_factory):
    return toy_dataset(tmp_path_factory, 'coco', num_train=8, num_val=4, size=(96, 64))


def _write(*args):
    """tools/new_dataset_config.py in this process (the subprocess tests cover the CLI)."""
    import new_dataset_config
    new_dataset_config.main([str(a) for a in args])


def _load(path):
    import convnext_dense  # noqa: F401
    from mmengine.config import Config
    return Config.fromfile(str(path))


def test_three_class_subset_trains_and_tests_end_to_end(toy_coco, tmp_path):
    out = tmp_path / 'my_shapes.py'
    printed = run_tool('new_dataset_config.py', DET_DEMO, '--data-root', str(toy_coco),
                       '--classes', 'star', 'circle', 'triangle', '--train-ann',
                       'annotations/instances_train.json', '--train-images', 'train',
                       '--val-ann', 'annotations/instances_val.json', '--val-images', 'val',
                       '--out', str(out), cwd=str(tmp_path))
    # kept in the annotation file's category order (mmdet numbers labels in that order)
    assert 'note: classes kept in the order of the categories of' in printed
    assert f'wrote {out}: 3 classes (circle, triangle, star) in 4 head(s)' in printed
    cfg = _load(out)
    heads = cfg.model.roi_head.bbox_head
    assert [h.num_classes for h in heads] == [3, 3, 3]
    assert cfg.model.roi_head.mask_head.num_classes == 3
    # the cascade stages keep everything else of the recipe
    assert [h.bbox_coder.target_stds for h in heads] == \
        [h.bbox_coder.target_stds for h in _load(DET_DEMO).model.roi_head.bbox_head]
    for split in ('train', 'val', 'test'):
        dataset = cfg[f'{split}_dataloader'].dataset
        assert dataset.metainfo.classes == ('circle', 'triangle', 'star')
        assert dataset.data_root == str(toy_coco) + '/'
    assert cfg.val_evaluator.ann_file == cfg.test_evaluator.ann_file == \
        f'{toy_coco}/annotations/instances_val.json'

    work = tmp_path / 'work'
    run_tool('train.py', str(out), '--work-dir', str(work), '--cfg-options',
             'train_cfg.max_epochs=1', 'train_dataloader.batch_size=2',
             'default_hooks.checkpoint.interval=1', cwd=str(tmp_path))
    checkpoint = torch.load(work / 'epoch_1.pth', map_location='cpu', weights_only=False)
    weights = checkpoint['state_dict']
    for stage in range(3):  # 3 classes + background; one mask head per stage
        assert weights[f'roi_head.bbox_head.{stage}.fc_cls.weight'].shape[0] == 4
        assert weights[f'roi_head.mask_head.{stage}.conv_logits.weight'].shape[0] == 3
    assert checkpoint['meta']['dataset_meta']['classes'] == ('circle', 'triangle', 'star')
    printed = run_tool('test.py', str(out), str(work / 'epoch_1.pth'), '--work-dir',
                       str(work), cwd=str(tmp_path))
    assert 'coco/bbox_mAP' in printed and 'coco/segm_mAP' in printed


def test_class_count_mismatch_stops_before_the_first_iteration(toy_coco, tmp_path):
    config = tmp_path / 'three_of_five.py'
    config.write_text(
        f'_base_ = {DET_DEMO!r}\n'
        f"data_root = '{toy_coco}/'\n"
        "metainfo = dict(classes=('circle', 'square', 'triangle'))\n"
        'train_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo))\n'
        'val_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo))\n'
        'test_dataloader = val_dataloader\n')
    result = tool('train.py', str(config), '--work-dir', str(tmp_path / 'work'))
    lines = assert_one_line_error(result)
    assert lines == [
        'error: train_dataloader.dataset has 3 classes (metainfo classes: circle, square, '
        'triangle) but model.roi_head.bbox_head.0.num_classes is 5 (and 3 more head(s)); set '
        'num_classes=3 in every head (model.roi_head.bbox_head.0.num_classes, '
        'model.roi_head.bbox_head.1.num_classes, model.roi_head.bbox_head.2.num_classes, '
        'model.roi_head.mask_head.num_classes) or change the classes (metainfo) of the '
        'datasets; tools/new_dataset_config.py RECIPE --data-root DIR --classes ... writes a '
        'config where both agree.']
    assert not (tmp_path / 'work').exists() or not list((tmp_path / 'work').rglob('*.log'))


def test_classes_absent_from_or_misordered_against_the_annotations(toy_coco, tmp_path):
    base = (f'_base_ = {DET_DEMO!r}\n'
            f"data_root = '{toy_coco}/'\n"
            'metainfo = dict(classes={classes!r})\n'
            'num_classes = 5\n'
            'train_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo))\n'
            'val_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo))\n'
            'test_dataloader = val_dataloader\n'
            "val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')\n"
            'test_evaluator = val_evaluator\n')
    config = tmp_path / 'order.py'
    config.write_text(base.format(classes=('square', 'circle', 'triangle', 'star', 'cross')))
    lines = assert_one_line_error(tool('train.py', str(config), '--work-dir',
                                       str(tmp_path / 'work')))
    assert lines[-1] == (
        'error: CocoDataset: the classes are listed in another order than the categories of '
        f'{toy_coco}/annotations/instances_train.json (mmdet numbers the labels in the file '
        'order, so the names would be wrong): list them as circle square triangle star cross.')
    config.write_text(base.format(classes=('circle', 'sqare', 'triangle', 'star', 'cross')))
    lines = assert_one_line_error(tool('train.py', str(config), '--work-dir',
                                       str(tmp_path / 'work')))
    assert lines[-1] == (
        "error: CocoDataset: 1 of the 5 classes are not categories of "
        f"{toy_coco}/annotations/instances_train.json ('sqare'): 'sqare': did you mean "
        "'square'?; its 5 categories are circle, square, triangle, star, cross; use the names "
        'in the file for metainfo classes.')


def test_tool_errors_are_one_line(toy_coco, tmp_path):
    recipe = osp.join(CONFIGS, 'detection', 'cascade_convnext_t_coco.py')
    lines = assert_one_line_error(tool('new_dataset_config.py', recipe, '--data-root',
                                       str(toy_coco)))
    assert lines[-1] == (
        f'error: {toy_coco}/annotations/instances_train2017.json does not exist (the '
        "recipe's train annotation file); give --train-ann PATH relative to --data-root "
        f'{toy_coco}.')
    lines = assert_one_line_error(tool(
        'new_dataset_config.py', recipe, '--data-root', str(toy_coco), '--train-ann',
        'annotations/instances_train.json', '--train-images', 'train', '--val-ann',
        'annotations/instances_val.json', '--val-images', 'val', '--classes', 'circel'))
    assert lines[-1] == (
        "error: --classes: 'circel' not among the 5 categories of "
        f"{toy_coco}/annotations/instances_train.json ('circel': did you mean 'circle'?); "
        'they are: circle, square, triangle, star, cross.')
    seg = osp.join(CONFIGS, 'segmentation', 'upernet_convnext_t_512_160k_ade20k.py')
    lines = assert_one_line_error(tool('new_dataset_config.py', seg, '--data-root',
                                       str(toy_coco), '--classes', 'a'))
    assert lines[-1] == (
        f'error: {toy_coco}/images/training does not exist (ADE20K layout); give '
        f'--train-split / --val-split PATH relative to --data-root {toy_coco}.')


@pytest.mark.parametrize('recipe, heads', [
    ('detection/mask2former_convnext_t_lsj_50e_coco.py',
     ['panoptic_head.num_things_classes', 'panoptic_fusion_head.num_things_classes']),
    ('detection/dino_4scale_convnext_t_12e_coco.py', ['bbox_head.num_classes']),
    ('detection/mask_rcnn_convnext_v2_t_coco.py',
     ['roi_head.bbox_head.num_classes', 'roi_head.mask_head.num_classes']),
])
def test_every_head_type_gets_the_class_count(recipe, heads, toy_coco, tmp_path):
    from convnext_dense.datasets.classes import head_class_counts
    out = tmp_path / 'child.py'
    _write(osp.join(CONFIGS, recipe), '--data-root', toy_coco, '--classes', 'circle', 'star',
           '--train-ann', 'annotations/instances_train.json', '--train-images', 'train',
           '--val-ann', 'annotations/instances_val.json', '--val-images', 'val',
           '--no-pretrained', '--workers', '0', '--out', out)
    cfg = _load(out)
    assert head_class_counts(cfg.model) == [(f'model.{h}', 2) for h in heads]
    assert cfg.model.backbone.init_cfg is None
    assert (cfg.train_dataloader.num_workers, cfg.train_dataloader.persistent_workers) == \
        (0, False)
    if 'mask2former' in recipe:
        assert cfg.model.panoptic_head.loss_cls.class_weight == [1.0, 1.0, 0.1]
        assert cfg.model.panoptic_head.num_stuff_classes == 0


def test_ade20k_format_child(tmp_path_factory, tmp_path):
    root = toy_dataset(tmp_path_factory, 'ade', num_train=2, num_val=2, size=(64, 48))
    out = tmp_path / 'seg.py'
    _write(osp.join(CONFIGS, 'segmentation', 'mask2former_convnext_t_512_160k_ade20k.py'),
           '--data-root', root, '--classes', 'background', 'circle', 'square', 'triangle',
           'star', 'cross', '--zero-label', 'class', '--out', out)
    cfg = _load(out)
    assert cfg.model.decode_head.num_classes == 6
    assert len(cfg.model.decode_head.loss_cls.class_weight) == 7
    dataset = cfg.train_dataloader.dataset
    assert (dataset.type, dataset.reduce_zero_label, dataset.metainfo.classes[0]) == \
        ('BaseSegDataset', False, 'background')
    assert dataset.data_prefix == dict(img_path='images/training',
                                       seg_map_path='annotations/training')


@pytest.mark.skipif(not osp.isdir(osp.join(SHARED_DATA, 'tiny_coco')),
                    reason='needs ../shared/data/tiny_coco')
def test_real_coco_subset_config(tmp_path):
    root = osp.join(SHARED_DATA, 'tiny_coco')
    with open(osp.join(root, 'annotations', 'instances_train2017.json')) as f:
        ids = {c['name']: c['id'] for c in json.load(f)['categories']}
    out = tmp_path / 'tiny.py'
    _write(osp.join(CONFIGS, 'detection', 'cascade_convnext_t_coco.py'), '--data-root', root,
           '--classes', 'spoon', 'person', 'bottle', '--val-ann',
           'annotations/instances_train2017.json', '--val-images', 'train2017', '--out', out)
    cfg = _load(out)
    assert ids['person'] < ids['bottle'] < ids['spoon']
    assert cfg.classes == ('person', 'bottle', 'spoon')
    assert cfg.val_evaluator.ann_file == f'{root}/annotations/instances_train2017.json'


def test_label_maps_with_more_labels_than_classes_stop_before_training(tmp_path_factory,
                                                                         tmp_path, capsys):
    import _common
    import train
    root = toy_dataset(tmp_path_factory, 'ade', num_train=2, num_val=2, size=(64, 48))
    out = tmp_path / 'three.py'
    _write(osp.join(CONFIGS, 'segmentation', 'demo_upernet_convnext_atto_toy.py'),
           '--data-root', root, '--classes', 'background', 'circle', 'square',
           '--zero-label', 'class', '--workers', '0', '--out', out)
    with pytest.raises(SystemExit) as exit_info:
        _common.run_tool(train.main, [str(out), '--work-dir', str(tmp_path / 'work')])
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(
        rf'error: BaseSegDataset: {re.escape(str(root))}/annotations/training/\S+\.png holds '
        r'label [345]( \(and \d more values\))?, but the dataset has 3 classes; give every '
        r'class \(or map the labels to 0\.\.2 and 255 for ignored pixels\)\.', line), line
    assert not list((tmp_path / 'work').rglob('*.pth'))
