"""Bad datasets through the tools: a missing root or annotation file, an empty or broken
annotation file, images without annotations (kept or dropped as filter_cfg says), corrupt and
truncated images: each named before or while training, not deep inside it."""
import json
import os
import shutil

import pytest
import torch

import convnext_dense  # noqa: F401  (registries)
from convnext_dense.datasets import build_checked_dataset

from helpers import DET_DEMO, SEG_DEMO, load_tool

train_tool = load_tool('train')
test_tool = load_tool('test')
_common = load_tool('_common')


def _coco_dataset(root, ann_file='annotations/instances_train.json', prefix='train/', **kw):
    """A toy CocoDataset built with the checks that tools/train.py and test.py run."""
    from mmdet.datasets import CocoDataset
    from convnext_dense.datasets import TOY_CLASSES
    return build_checked_dataset(dict(
        type=CocoDataset, data_root=str(root), ann_file=ann_file, data_prefix=dict(img=prefix),
        metainfo=dict(classes=TOY_CLASSES), pipeline=kw.pop('pipeline', []), **kw))


def test_annotation_and_root_errors_name_the_file(toy_coco, toy_ade, tmp_path):
    from convnext_dense.datasets import DatasetError
    _common.load_config(train_tool.parse_args([DET_DEMO]))  # mmdet scope
    (tmp_path / 'empty.json').write_text('')
    (tmp_path / 'cut.json').write_text('{"images": [{"id": 1, ')
    (tmp_path / 'nokeys.json').write_text('{}')
    expectations = {
        'empty.json': r'empty\.json is empty \(0 bytes\)',
        'cut.json': r'cut\.json is not valid JSON \(line 1, column 23',
        'nokeys.json': r"nokeys\.json lacks the key 'categories'",
    }
    for name, pattern in expectations.items():
        with pytest.raises(DatasetError, match=pattern):
            _coco_dataset(toy_coco, ann_file=str(tmp_path / name))
    with pytest.raises(FileNotFoundError, match=r"annotation file .*absent\.json' does not exist"):
        _coco_dataset(toy_coco, ann_file=str(tmp_path / 'absent.json'))
    with pytest.raises(FileNotFoundError, match=r"dataset root .*no_root' does not exist.*"
                                                r"--cfg-options data_root=PATH"):
        _coco_dataset(tmp_path / 'no_root')
    # images listed by the annotations but not on disk
    with pytest.raises(FileNotFoundError, match=r'4 of the 4 images of .*instances_train\.json '
                                                r'do not exist; the first: .*wrong/000000\.jpg'):
        _coco_dataset(toy_coco, prefix='wrong/')
    root = tmp_path / 'coco_missing'
    shutil.copytree(toy_coco, root)
    os.remove(root / 'train' / '000002.jpg')
    with pytest.raises(FileNotFoundError, match=r'1 of the 4 images .* the first: .*000002\.jpg'):
        _coco_dataset(root)
    # segmentation: a missing label map, a missing root
    _common.load_config(train_tool.parse_args([SEG_DEMO]))  # mmseg scope
    from mmseg.datasets import BaseSegDataset
    ade = tmp_path / 'ade'
    shutil.copytree(toy_ade, ade)
    os.remove(ade / 'annotations' / 'training' / '000003.png')
    prefixes = dict(img_path='images/training', seg_map_path='annotations/training')
    with pytest.raises(FileNotFoundError, match=r'1 of the 8 segmentation maps .* the first: '
                                                r'.*training/000003\.png'):
        build_checked_dataset(dict(type=BaseSegDataset, data_root=str(ade),
                                   data_prefix=prefixes, img_suffix='.jpg',
                                   seg_map_suffix='.png', pipeline=[]))
    with pytest.raises(FileNotFoundError, match=r"dataset root .*nowhere' does not exist"):
        build_checked_dataset(dict(type=BaseSegDataset, data_root=str(tmp_path / 'nowhere'),
                                   data_prefix=prefixes, pipeline=[]))
    # the same checks through a dataset wrapper, and on a dataset the Runner built (the hook)
    from convnext_dense.datasets import check_built_dataset, check_dataset_config
    with pytest.raises(FileNotFoundError, match=r'1 of the 8 segmentation maps'):
        check_dataset_config(dict(type='RepeatDataset', times=2, dataset=dict(
            type=BaseSegDataset, data_root=str(ade), data_prefix=prefixes, img_suffix='.jpg',
            seg_map_suffix='.png', pipeline=[])))
    built = BaseSegDataset(data_root=str(ade), data_prefix=prefixes, img_suffix='.jpg',
                           seg_map_suffix='.png', pipeline=[])  # stock mmseg: no check
    with pytest.raises(FileNotFoundError, match=r'1 of the 8 segmentation maps'):
        check_built_dataset(built)
    from types import SimpleNamespace
    from mmengine.registry import HOOKS
    hook = HOOKS.build(dict(type='convnext_dense.DatasetCheckHook'))
    with pytest.raises(FileNotFoundError, match=r'1 of the 8 segmentation maps'):
        hook.before_train(SimpleNamespace(train_dataloader=SimpleNamespace(dataset=built)))


def test_tools_check_the_data_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset root .*nowhere' does not exist"):
        train_tool.main([SEG_DEMO, '--work-dir', str(tmp_path), '--cfg-options',
                         f'data_root={tmp_path / "nowhere"}'])
    with pytest.raises(FileNotFoundError, match=r"dataset root .*nowhere' does not exist"):
        test_tool.main([SEG_DEMO, __file__, '--work-dir', str(tmp_path), '--cfg-options',
                        f'data_root={tmp_path / "nowhere"}'])


def test_images_without_annotations_follow_filter_cfg(toy_coco, tmp_path):
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import MODELS
    cfg = _common.load_config(train_tool.parse_args([DET_DEMO]))
    root = tmp_path / 'coco'
    shutil.copytree(toy_coco, root)
    ann_path = root / 'annotations' / 'instances_train.json'
    ann = json.loads(ann_path.read_text())
    shutil.copy(root / 'train' / '000000.jpg', root / 'train' / 'empty.jpg')
    ann['images'].append(dict(ann['images'][0], id=999, file_name='empty.jpg'))
    ann_path.write_text(json.dumps(ann))
    assert len(_coco_dataset(root, filter_cfg=dict(filter_empty_gt=True))) == 4
    pipeline = [dict(type='LoadImageFromFile'),
                dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                dict(type='PackDetInputs')]
    kept = _coco_dataset(root, filter_cfg=dict(filter_empty_gt=False), pipeline=pipeline)
    assert len(kept) == 5
    sample = next(kept[i] for i in range(5) if kept[i]['data_samples'].img_id == 999)
    assert len(sample['data_samples'].gt_instances) == 0
    # a training step on the image without objects works and gives finite losses
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.train()
    data = model.data_preprocessor(pseudo_collate([sample]), True)
    losses = model(**data, mode='loss')
    total = sum(v.sum() for k, v in losses.items() if 'loss' in k
                for v in (v if isinstance(v, list) else [v]))
    assert torch.isfinite(total)
    # all images without annotations and filtered away: said so, naming filter_cfg
    ann['annotations'] = []
    ann_path.write_text(json.dumps(ann))
    from convnext_dense.datasets import DatasetError
    with pytest.raises(DatasetError, match=r"no sample of .*instances_train\.json is left after "
                                           r"filter_cfg=.*filter_empty_gt"):
        _coco_dataset(root, filter_cfg=dict(filter_empty_gt=True))


def test_corrupt_and_truncated_images_are_named(toy_ade, tmp_path):
    from convnext_dense.datasets import CorruptImageError, LoadImageFromFileChecked
    good = toy_ade / 'images' / 'training' / '000000.jpg'
    data = good.read_bytes()
    png = (toy_ade / 'annotations' / 'training' / '000000.png').read_bytes()
    files = {'garbage.jpg': b'this is not an image',
             'cut.jpg': data[:len(data) * 2 // 3],  # OpenCV would decode this, grey at bottom
             'cut.png': png[:len(png) - 20],
             'empty.jpg': b''}
    reasons = {'garbage.jpg': 'cannot be decoded', 'cut.jpg': 'truncated',
               'cut.png': 'truncated', 'empty.jpg': 'empty'}
    load = LoadImageFromFileChecked()
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CorruptImageError) as info:
            load(dict(img_path=str(tmp_path / name)))
        message = str(info.value)
        assert str(tmp_path / name) in message and reasons[name] in message, message
        assert 'skip_bad_images=True' in message
    # extra bytes after the end of a JPEG (phones append videos) are not a truncation
    (tmp_path / 'trailer.jpg').write_bytes(data + b'\xff\xda trailing data \x00' * 10)
    assert load(dict(img_path=str(tmp_path / 'trailer.jpg')))['img'].shape == (48, 64, 3)
    with pytest.raises(FileNotFoundError, match=r'Image .*absent\.jpg does not exist'):
        load(dict(img_path=str(tmp_path / 'absent.jpg')))
    # opt-in skipping: a warning and a count; the dataset then draws another sample
    skipping = LoadImageFromFileChecked(skip_bad_images=True)
    before = len(LoadImageFromFileChecked.skipped)
    assert skipping(dict(img_path=str(tmp_path / 'cut.jpg'))) is None
    assert LoadImageFromFileChecked.skipped[before:] == [str(tmp_path / 'cut.jpg')]
    assert skipping(dict(img_path=str(good)))['img'].shape == (48, 64, 3)
    # in a dataset: the checked loader names the image, or skips it when asked to
    _common.load_config(train_tool.parse_args([SEG_DEMO]))  # mmseg scope
    from mmseg.datasets import BaseSegDataset
    ade = tmp_path / 'ade'
    shutil.copytree(toy_ade, ade)
    bad = ade / 'images' / 'training' / '000001.jpg'
    bad.write_bytes(bad.read_bytes()[:300])

    def dataset(loader):
        return BaseSegDataset(
            data_root=str(ade), img_suffix='.jpg', seg_map_suffix='.png',
            data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
            pipeline=[loader, dict(type='LoadAnnotations'), dict(type='PackSegInputs')])

    with pytest.raises(CorruptImageError, match=r'Image .*training/000001\.jpg is corrupt'):
        dataset(dict(type='convnext_dense.LoadImageFromFileChecked'))[1]
    skipped = dataset(dict(type='convnext_dense.LoadImageFromFileChecked',
                           skip_bad_images=True))
    before = len(LoadImageFromFileChecked.skipped)
    sample = skipped[1]
    assert sample['data_samples'].img_path != str(bad)
    assert LoadImageFromFileChecked.skipped[before:] == [str(bad)]
