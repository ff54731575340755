"""Reliability (issue 8): bad input gets errors that name the file / key / value and say what
to do; a non-finite loss stops training with the last good checkpoint intact; SIGKILL at any
moment (also mid-save) loses nothing and ``--resume`` continues with exactly the losses of an
uninterrupted run; same seed => same losses, with seed / versions / config recorded; 2-process
gloo training saves, resumes, evaluates and does not hang when a rank dies; malicious
checkpoints never run their payload on any loading path."""
import functools
import glob
import importlib.util
import json
import os
import os.path as osp
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import convnext_dense  # noqa: F401  (registries)
from convnext_dense.datasets import build_checked_dataset
from convnext_dense.engine import find_latest_checkpoint

import helpers
from helpers import DET_DEMO, REPO, SEG_DEMO, TOOLS, free_port, toy_dataset

sys.path.insert(0, TOOLS)
import _common  # noqa: E402


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f'reliability_tool_{name}',
                                                  osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_tool = _load_tool('train')
test_tool = _load_tool('test')
convert_tool = _load_tool('convert_checkpoint')


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def toy_ade(tmp_path_factory):
    return toy_dataset(tmp_path_factory, 'ade', num_train=8, num_val=2, size=(64, 48))


@pytest.fixture(scope='module')
def toy_coco(tmp_path_factory):
    return toy_dataset(tmp_path_factory, 'coco', num_train=4, num_val=2, size=(64, 48))


SEG_TINY = f"""
_base_ = {SEG_DEMO!r}
crop_size = (64, 64)
model = dict(data_preprocessor=dict(size=crop_size))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(64, 48), ratio_range=(1.0, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False)
test_dataloader = val_dataloader
train_cfg = dict(max_iters=6, val_interval=1000)  # no validation: only losses matter
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2, max_keep_ckpts=5))
log_processor = dict(window_size=1)
randomness = dict(seed=0, deterministic=True)
"""

DET_TINY = f"""
_base_ = {DET_DEMO!r}
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoiceResize', scales=[(56, 42), (64, 48), (72, 54)], keep_ratio=True),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline, indices=2))
train_cfg = dict(max_epochs=2, val_interval=1000)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=5))
log_processor = dict(window_size=1)
randomness = dict(seed=0, deterministic=True)
"""


@pytest.fixture(scope='module')
def configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp('configs')
    (folder / 'seg_tiny.py').write_text(SEG_TINY)
    (folder / 'det_tiny.py').write_text(DET_TINY)
    # on CPU, torch's SyncBatchNorm refuses to run with 2 processes: plain BN for the heads
    (folder / 'seg_tiny_dist.py').write_text(
        "_base_ = './seg_tiny.py'\nnorm_cfg = dict(type='BN', requires_grad=True)\n"
        "model = dict(decode_head=dict(norm_cfg=norm_cfg), auxiliary_head=dict("
        "norm_cfg=norm_cfg))\n")
    return folder


@pytest.fixture
def no_deterministic_leak():
    """In-process runs may switch torch's deterministic mode on; switch it back."""
    yield
    torch.use_deterministic_algorithms(False)


def seg_args(toy_ade, work, *extra_options):
    return ['--work-dir', str(work), '--cfg-options', f'data_root={toy_ade}',
            'randomness.deterministic=False', *extra_options]


# Two threads, as in the SIGKILL test's own launch: its losses must match run for run.
run = functools.partial(helpers.run, threads='2')


def logged_losses(work_dir):
    """{iteration: {loss name: value}} from the json logs of every run in ``work_dir``."""
    losses = {}
    for path in sorted(glob.glob(osp.join(str(work_dir), '2*', 'vis_data', '2*.json'))):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if 'loss' in record:
                    losses[record['iter']] = {k: v for k, v in record.items() if 'loss' in k}
    return losses


def evil_checkpoint(path, marker):
    """A checkpoint whose unpickling would run ``touch marker`` (see tests/test_compat.py)."""

    class Payload:
        def __reduce__(self):
            return os.system, (f'touch {marker}',)

    torch.save({'state_dict': {'backbone.norm0.weight': torch.ones(40)},
                'meta': {'epoch': 1, 'iter': 2, 'note': Payload()}}, str(path))
    return str(path)


# ----------------------------------------------------------------------------- bad input
def test_missing_config_names_file_and_remedy(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'nope\.py does not exist; give the path'):
        _common.load_config(train_tool.parse_args([str(tmp_path / 'nope.py')]))


def test_unknown_arch_surfaces_through_train_tool(tmp_path):
    args = [SEG_DEMO, '--work-dir', str(tmp_path), '--cfg-options',
            'model.backbone.arch=v2-attoo']
    with pytest.raises(ValueError, match=r"Unknown ConvNeXt arch 'v2-attoo'.*v2-atto"):
        train_tool.main(args)


def test_cfg_options_typo_is_refused_with_the_closest_key():
    parse = train_tool.parse_args
    cases = {'train_dataloader.batchsize=2': 'train_dataloader.batch_size',
             'model.decode_head.num_clases=3': 'model.decode_head.num_classes',
             'data_rot=/x': 'data_root'}
    for option, suggestion in cases.items():
        with pytest.raises(_common.CfgOptionError) as info:
            _common.load_config(parse([SEG_DEMO, '--cfg-options', option]))
        message = str(info.value)
        assert f'did you mean {suggestion}?' in message and 'demo_upernet' in message, message
        assert '+' + option.split('=')[0] in message  # the escape hatch is named
    with pytest.raises(_common.CfgOptionError, match='index 9 is out of range'):
        _common.load_config(parse([SEG_DEMO, '--cfg-options', 'param_scheduler.9.end=3']))
    # deliberate new keys: '+' forces one; a key without a close sibling is accepted as it is
    cfg = _common.load_config(parse([SEG_DEMO, '--cfg-options', '+train_dataloader.batchsize=3',
                                     'log_processor.num_digits=8', 'param_scheduler.1.end=7',
                                     'model.backbone.init_cfg.type=Pretrained']))
    assert cfg.train_dataloader.batchsize == 3 and cfg.train_dataloader.batch_size == 8
    assert cfg.log_processor.num_digits == 8 and cfg.param_scheduler[1].end == 7
    assert cfg.model.backbone.init_cfg.type == 'Pretrained'


def test_missing_checkpoint_paths_are_named(tmp_path):
    missing = str(tmp_path / 'gone.pth')
    with pytest.raises(FileNotFoundError, match=r'checkpoint .*gone\.pth does not exist; give'):
        test_tool.main([SEG_DEMO, missing])
    with pytest.raises(FileNotFoundError, match=r'--resume checkpoint .*gone\.pth does not exist'):
        train_tool.main([SEG_DEMO, '--work-dir', str(tmp_path), '--resume', missing])
    with pytest.raises(FileNotFoundError, match=r'load_from checkpoint .*gone\.pth does not exist'):
        train_tool.main([SEG_DEMO, '--work-dir', str(tmp_path), '--cfg-options',
                         f'load_from={missing}'])
    from mmengine.runner.checkpoint import _load_checkpoint
    with pytest.raises(FileNotFoundError, match=r'gone\.pth does not exist; check the path'):
        _load_checkpoint(missing)


def _seg_model_state(toy_ade):
    from mmengine.registry import MODELS
    cfg = _common.load_config(train_tool.parse_args([SEG_DEMO]))
    return MODELS.build(cfg.model).state_dict()


def test_checkpoint_of_another_shape_or_model_is_an_error(toy_ade, tmp_path):
    from convnext_dense.checkpoint.fit import check_checkpoint_fits
    state = _seg_model_state(toy_ade)
    assert tuple(state['decode_head.conv_seg.weight'].shape) == (6, 64, 1, 1)
    # 7 classes instead of 6: mmengine alone would only warn and evaluate a half-loaded model
    wrong = dict(state, **{'decode_head.conv_seg.weight': torch.zeros(7, 64, 1, 1),
                           'decode_head.conv_seg.bias': torch.zeros(7)})
    torch.save({'state_dict': wrong}, tmp_path / 'classes7.pth')
    argv = [SEG_DEMO, str(tmp_path / 'classes7.pth'), '--work-dir', str(tmp_path / 'w'),
            '--cfg-options', f'data_root={toy_ade}', 'test_dataloader.num_workers=0',
            'test_dataloader.persistent_workers=False']
    with pytest.raises(ValueError) as info:
        test_tool.main(argv)
    message = str(info.value)
    assert 'classes7.pth' in message and '2 tensor(s) have another shape' in message
    assert 'decode_head.conv_seg.weight: checkpoint (7, 64, 1, 1) vs model (6, 64, 1, 1)' \
        in message
    assert 'decode_head.conv_seg.bias: checkpoint (7,) vs model (6,)' in message
    # a bare backbone state dict (no 'backbone.' prefix): another model altogether
    bare = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    torch.save(bare, tmp_path / 'bare.pth')
    argv[1] = str(tmp_path / 'bare.pth')
    with pytest.raises(ValueError, match=r'bare\.pth shares no tensor name .*convert_checkpoint'):
        test_tool.main(argv)
    # the backbone only: testing it would evaluate random heads
    torch.save({'state_dict': {k: v for k, v in state.items() if k.startswith('backbone.')}},
               tmp_path / 'backbone.pth')
    argv[1] = str(tmp_path / 'backbone.pth')
    with pytest.raises(ValueError, match=r'backbone\.pth lacks \d+ of the \d+ tensors'):
        test_tool.main(argv)
    # load_from for fine-tuning: mismatches are an error unless --skip-mismatched
    from mmengine.registry import MODELS
    model = MODELS.build(_common.load_config(train_tool.parse_args([SEG_DEMO])).model)
    with pytest.raises(ValueError, match='--skip-mismatched'):
        check_checkpoint_fits(model, {'state_dict': wrong}, 'classes7.pth')
    check_checkpoint_fits(model, {'state_dict': wrong}, 'classes7.pth', skip_mismatched=True)
    assert train_tool.parse_args([SEG_DEMO, '--skip-mismatched']).skip_mismatched
    # load_from a checkpoint that lacks tensors stops like tools/test.py, before training,
    # unless partial loading is asked for
    common = seg_args(toy_ade, tmp_path / 'ft', 'train_cfg.max_iters=1',
                      'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
                      f'load_from={tmp_path / "backbone.pth"}')
    with pytest.raises(ValueError, match=r'(?s)backbone\.pth lacks \d+ of the \d+ tensors.*'
                                         r'pass --skip-mismatched'):
        train_tool.main([SEG_DEMO, *common])
    assert not (tmp_path / 'ft' / 'iter_1.pth').exists()
    train_tool.main([SEG_DEMO, '--skip-mismatched', *common])
    assert (tmp_path / 'ft' / 'iter_1.pth').exists()


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


def test_non_finite_loss_stops_with_iteration_and_term(toy_ade, configs, tmp_path,
                                                      monkeypatch, no_deterministic_leak):
    """A NaN in the decode head's loss at iteration 3 stops training naming both; iteration 3
    is never saved; the last good checkpoint (iteration 2) stays intact and resumable."""
    from mmseg.models.decode_heads import UPerHead
    original = UPerHead.loss_by_feat
    calls = []

    def poisoned(self, *args, **kwargs):
        losses = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            losses['loss_ce'] = losses['loss_ce'] * float('nan')
        return losses

    monkeypatch.setattr(UPerHead, 'loss_by_feat', poisoned)
    work = tmp_path / 'work'
    with pytest.raises(FloatingPointError) as info:
        train_tool.main([str(configs / 'seg_tiny.py'),
                         *seg_args(toy_ade, work, 'default_hooks.checkpoint.interval=1',
                                   'train_cfg.max_iters=5')])
    message = str(info.value)
    assert 'iteration 3' in message and 'decode.loss_ce=nan' in message, message
    assert 'aux.loss_ce' not in message and 'iter_2.pth' in message and '--resume' in message
    assert sorted(n for n in os.listdir(work) if n.endswith('.pth')) == \
        ['iter_1.pth', 'iter_2.pth']
    named = (work / 'last_checkpoint').read_text().strip()
    assert named == str(work / 'iter_2.pth')
    from mmengine.runner.checkpoint import _load_checkpoint
    checkpoint = _load_checkpoint(named)
    assert checkpoint['meta']['iter'] == 2
    assert all(torch.isfinite(v).all() for v in checkpoint['state_dict'].values()
               if v.is_floating_point())


def test_runtime_configs_carry_the_reliability_hooks():
    for config in (SEG_DEMO, DET_DEMO):
        cfg = _common.load_config(train_tool.parse_args([config]))
        types = [h['type'] for h in cfg.custom_hooks]
        assert types == ['convnext_dense.StopOnNonFiniteLossHook',
                         'convnext_dense.ReproducibilityHook'], config
        assert cfg.env_cfg.dist_cfg.timeout == 1800  # no collective waits forever
        assert cfg.default_hooks.checkpoint.type == 'convnext_dense.AtomicCheckpointHook'
        assert cfg.model_wrapper_cfg.type == 'convnext_dense.AnyDeviceDistributedDataParallel'


def test_random_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random
    from convnext_dense.engine.reproducibility import get_rng_state, set_rng_state
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = get_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    torch.save({'rng_state': state}, tmp_path / 'rng.pth')
    set_rng_state(torch.load(tmp_path / 'rng.pth', weights_only=True)['rng_state'])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


# ----------------------------------------------------------------------------- untrusted files
def test_malicious_checkpoint_never_runs_on_any_loading_path(toy_ade, tmp_path):
    from convnext_dense.compat import UnsafeCheckpointError
    marker = tmp_path / 'pwned'
    evil = evil_checkpoint(tmp_path / 'evil.pth', marker)
    names_global = r"evil\.pth: it contains '(posix|os)\.system'"
    common = seg_args(toy_ade, tmp_path / 'w', 'train_dataloader.num_workers=0',
                      'train_dataloader.persistent_workers=False')
    attempts = {
        'load_from': lambda: train_tool.main([SEG_DEMO, *common, f'load_from={evil}']),
        '--resume': lambda: train_tool.main([SEG_DEMO, '--resume', evil, *common]),
        'init_cfg Pretrained': lambda: train_tool.main(
            [SEG_DEMO, *common, 'model.backbone.init_cfg.type=Pretrained',
             f'model.backbone.init_cfg.checkpoint={evil}']),
        'tools/test.py': lambda: test_tool.main([SEG_DEMO, evil, *common]),
        'tools/convert_checkpoint.py': lambda: convert_tool.main([evil,
                                                                  str(tmp_path / 'out.pth')]),
    }
    for path, attempt in attempts.items():
        with pytest.raises(UnsafeCheckpointError, match=names_global):
            attempt()
        assert not marker.exists(), f'the payload ran through {path}'
    assert not (tmp_path / 'out.pth').exists()


def test_config_text_inside_a_checkpoint_is_never_executed(toy_ade, configs, tmp_path,
                                                          no_deterministic_leak):
    """A real training checkpoint given config text that creates a file when executed: in
    ``meta['config']`` (Runner.resume executes it for its GPU-count check), ``meta['cfg']`` and
    ``message_hub.runtime_info.cfg`` (inferencers given only weights execute them). --resume,
    tools/test.py and MMSegInferencer run none of it; the resumed run saves its own config
    text; the GPU-count check still stops a resume from a 2-GPU run, read by parsing."""
    from mmseg.apis import MMSegInferencer
    marker = tmp_path / 'pwned'
    config = str(configs / 'seg_tiny.py')
    data = f'data_root={toy_ade}'
    train_tool.main([config, '--work-dir', str(tmp_path / 'a'), '--cfg-options', data,
                     'train_cfg.max_iters=2'])
    checkpoint = torch.load(tmp_path / 'a' / 'iter_2.pth', weights_only=False)  # our own file
    payload = f"import os\nos.system('touch {marker}')\n"
    checkpoint['meta']['config'] = payload
    checkpoint['meta']['cfg'] = payload + checkpoint['meta']['cfg']
    checkpoint['message_hub']['runtime_info']['cfg'] = payload
    evil = str(tmp_path / 'evil.pth')
    torch.save(checkpoint, evil)

    train_tool.main([config, '--work-dir', str(tmp_path / 'b'), '--resume', evil,
                     '--cfg-options', data, 'train_cfg.max_iters=4'])
    saved = torch.load(tmp_path / 'b' / 'iter_4.pth', weights_only=False)
    for text in (saved['meta']['cfg'], saved['message_hub']['runtime_info']['cfg']):
        assert 'os.system' not in text and 'max_iters = 4' in text.replace('max_iters=4',
                                                                          'max_iters = 4')
    test_tool.main([config, evil, '--work-dir', str(tmp_path / 't'), '--cfg-options', data])
    with pytest.raises(RuntimeError, match=r'evil\.pth carries its training config as text.*'
                                           r'pass the config file'):
        MMSegInferencer(model=None, weights=evil, device='cpu')

    checkpoint['meta']['config'] = 'gpu_ids = range(0, 2)\n' + payload
    torch.save(checkpoint, evil)
    with pytest.raises(RuntimeError, match='Number of GPUs used for current experiment is not'):
        train_tool.main([config, '--work-dir', str(tmp_path / 'c'), '--resume', evil,
                         '--cfg-options', data, 'train_cfg.max_iters=4'])
    assert not marker.exists()


# ----------------------------------------------------------------------------- end to end
DRIVER = """
import os, runpy, sys, time
# Simulates SIGKILL in the middle of writing a checkpoint: the n-th checkpoint's temporary
# file is written, then fsync blocks (forever) until the test kills the process.
block_at, marker = int(os.environ['BLOCK_AT_SAVE']), os.environ['BLOCKED_MARKER']
real_fsync, saves = os.fsync, []
def fsync(fd):
    path = os.readlink(f'/proc/self/fd/{fd}')
    if os.path.basename(path).startswith('.iter_') and path.endswith('.tmp'):
        saves.append(path)
        if len(saves) == block_at:
            with open(marker, 'w') as f:
                f.write(path)
            time.sleep(3600)
    return real_fsync(fd)
os.fsync = fsync
sys.path.insert(0, os.path.join(sys.argv[1], 'tools'))
train = os.path.join(sys.argv[1], 'tools', 'train.py')
sys.argv = [train] + sys.argv[2:]
runpy.run_path(train, run_name='__main__')
"""


@pytest.mark.slow
def test_sigkill_mid_save_then_resume_matches_an_uninterrupted_run(toy_ade, configs, tmp_path):
    """Iteration-based (segmentation demo, InfiniteSampler): run A trains 6 iterations; run B
    the same, killed with SIGKILL while writing its iteration-4 checkpoint; B resumed with
    --resume continues from iteration 2 and logs exactly A's losses for iterations 3-6."""
    config = str(configs / 'seg_tiny.py')
    options = ['--cfg-options', f'data_root={toy_ade}']
    work_a, work_b = tmp_path / 'a', tmp_path / 'b'
    run([sys.executable, osp.join(TOOLS, 'train.py'), config, '--work-dir', str(work_a),
         *options], cwd=tmp_path)
    losses_a = logged_losses(work_a)
    assert sorted(losses_a) == [1, 2, 3, 4, 5, 6]

    driver = tmp_path / 'driver.py'
    driver.write_text(DRIVER)
    marker = tmp_path / 'blocked'
    env = dict(os.environ, OMP_NUM_THREADS='2', PYTHONWARNINGS='ignore', BLOCK_AT_SAVE='2',
               BLOCKED_MARKER=str(marker))
    with open(tmp_path / 'b.log', 'w') as log:
        process = subprocess.Popen([sys.executable, str(driver), REPO, config, '--work-dir',
                                    str(work_b), *options], cwd=tmp_path, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 400
            while not marker.exists() and process.poll() is None and time.time() < deadline:
                time.sleep(0.2)
            assert marker.exists(), (tmp_path / 'b.log').read_text()[-3000:]
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    partial = marker.read_text()
    assert osp.basename(partial).startswith('.iter_4.pth') and osp.isfile(partial)
    assert not osp.exists(work_b / 'iter_4.pth')
    assert (work_b / 'last_checkpoint').read_text().strip() == str(work_b / 'iter_2.pth')
    assert find_latest_checkpoint(str(work_b)) == str(work_b / 'iter_2.pth')
    # same seed, deterministic mode: the killed run had logged A's losses exactly
    losses_b = logged_losses(work_b)
    assert sorted(losses_b) == [1, 2, 3, 4]
    assert all(losses_b[i] == losses_a[i] for i in losses_b), (losses_a, losses_b)

    output = run([sys.executable, osp.join(TOOLS, 'train.py'), config, '--work-dir',
                  str(work_b), '--resume', *options], cwd=tmp_path)
    assert re.search(r'resumed epoch: 0, iter: 2', output), output[-3000:]
    assert 'Partial checkpoint file(s) from an interrupted save' in output
    resumed = logged_losses(work_b)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for i in (3, 4, 5, 6):
        assert resumed[i] == losses_a[i], (i, resumed[i], losses_a[i])
    assert (work_b / 'last_checkpoint').read_text().strip() == str(work_b / 'iter_6.pth')

    # seed, versions and config: in the work dir and in the checkpoint meta
    infos = sorted(glob.glob(str(work_b / '2*' / 'run_info.json')))
    assert len(infos) == 2
    info = json.load(open(infos[-1]))
    assert info['seed'] == 0 and info['randomness']['deterministic'] is True
    for package in ('torch', 'mmengine', 'mmcv', 'mmdet', 'mmseg', 'convnext_dense'):
        assert info['versions'][package], package
    assert info['versions']['torch'] == str(torch.__version__)
    assert info['config'] == config and osp.isfile(info['config_dump'])
    assert '--resume' in info['command'] and info['resume'] is True
    from mmengine.runner.checkpoint import _load_checkpoint
    meta = _load_checkpoint(str(work_b / 'iter_6.pth'))['meta']  # weights-only
    assert meta['seed'] == 0 and meta['randomness']['deterministic'] is True
    assert meta['versions'] == info['versions']
    assert meta['cfg'].startswith('raise RuntimeError(')  # config text is never executed
    written = torch.load(str(work_b / 'iter_6.pth'), weights_only=False)  # our own file
    assert 'crop_size = (\n    64,\n    64,\n)' in written['meta']['cfg']  # the config, as run


@pytest.mark.slow
def test_epoch_based_resume_matches_an_uninterrupted_run(toy_coco, configs, tmp_path):
    """Epoch-based (detection demo, DefaultSampler): resuming from the epoch-1 checkpoint
    gives epoch 2 the uninterrupted run's losses; without the saved random states (no
    ReproducibilityHook) they differ, because flips, resizes and RoI sampling draw from the
    global random generators."""
    config = str(configs / 'det_tiny.py')
    options = ['--cfg-options', f'data_root={toy_coco}']
    train = [sys.executable, osp.join(TOOLS, 'train.py'), config]
    run([*train, '--work-dir', str(tmp_path / 'a'), *options], cwd=tmp_path)
    losses_a = logged_losses(tmp_path / 'a')
    assert sorted(losses_a) == [1, 2]
    output = run([*train, '--work-dir', str(tmp_path / 'r'), '--resume',
                  str(tmp_path / 'a' / 'epoch_1.pth'), *options], cwd=tmp_path)
    assert 'resumed epoch: 1, iter: 1' in output
    assert logged_losses(tmp_path / 'r') == {2: losses_a[2]}


def _children(pid):
    found = []
    for stat in glob.glob('/proc/[0-9]*/stat'):
        try:
            fields = open(stat).read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.split('/')[2]))
    return found


def _rank_of(pid):
    try:
        environ = open(f'/proc/{pid}/environ', 'rb').read().split(b'\0')
    except OSError:
        return None
    for item in environ:
        if item.startswith(b'RANK='):
            return int(item[5:])
    return None


@pytest.mark.slow
def test_two_process_gloo_train_save_resume_evaluate_and_rank_death(toy_ade, configs,
                                                                    tmp_path):
    config = str(configs / 'seg_tiny_dist.py')
    work = tmp_path / 'dist'
    env = dict(PORT=str(free_port()), PYTHON=sys.executable, OMP_NUM_THREADS='1')
    dist_train = ['bash', osp.join(TOOLS, 'dist_train.sh'), config, '2', '--work-dir',
                  str(work)]
    options = ['--cfg-options', f'data_root={toy_ade}', 'train_cfg.max_iters=4',
               'train_cfg.val_interval=4', 'randomness.deterministic=False']
    output = run([*dist_train, *options], cwd=tmp_path, env=env)
    assert re.search(r'Iter\(train\) \[4/4\]', output), output[-3000:]
    assert re.search(r'mIoU: \d+\.\d+', output)  # evaluated after training
    from mmengine.runner.checkpoint import _load_checkpoint
    checkpoint = _load_checkpoint(str(work / 'iter_4.pth'))
    assert checkpoint['meta']['iter'] == 4
    # every rank's random state went into the checkpoint
    assert checkpoint['rng_state']['world_size'] == 2
    assert len(checkpoint['rng_state']['ranks']) == 2

    # resume with 2 processes, then kill rank 1 mid-training: the launcher must end the job
    options[2:4] = ['train_cfg.max_iters=400', 'train_cfg.val_interval=400']
    env['PORT'] = str(free_port())
    log_path = tmp_path / 'resume.log'
    with open(log_path, 'w') as log:
        process = subprocess.Popen([*dist_train, '--resume', *options], cwd=tmp_path,
                                   env={**os.environ, 'PYTHONWARNINGS': 'ignore', **env},
                                   stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and process.poll() is None and \
                    not re.search(r'Iter\(train\) \[\s*6/400\]', log_path.read_text()):
                time.sleep(0.5)
            text = log_path.read_text()
            assert 'resumed epoch: 0, iter: 4' in text, text[-3000:]
            assert re.search(r'Iter\(train\) \[\s*6/400\]', text), text[-3000:]
            ranks = {_rank_of(pid): pid for pid in _children(process.pid)}
            assert sorted(ranks) == [0, 1], ranks
            os.kill(ranks[1], signal.SIGKILL)
            killed_at = time.time()
            process.wait(timeout=180)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    took = time.time() - killed_at
    text = log_path.read_text()
    assert process.returncode != 0
    assert took < 120, f'the surviving rank took {took:.0f} s to stop'
    assert 'ChildFailedError' in text and 'Signal 9 (SIGKILL)' in text, text[-3000:]
    for pid in ranks.values():  # no worker is left behind
        assert not osp.exists(f'/proc/{pid}') or \
            open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[0] == 'Z'
