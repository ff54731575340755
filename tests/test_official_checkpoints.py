"""The official trained COCO / ADE20K checkpoints of facebookresearch/ConvNeXt load with our
tools: synthetic files with their layout and bookkeeping (tests/official_layouts.py) go through
tools/_common's Runner (as tools/test.py and ``load_from``), tools/convert_checkpoint.py and the
weights-only loader. The real files cannot be downloaded here."""
import argparse
import importlib.util
import os.path as osp
import re
import struct
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch

import official_layouts as layouts
from convnext_dense.compat import UnsafeCheckpointError, load_checkpoint
from convnext_dense.checkpoint import official as official_dense
from helpers import REPO, TOOLS
from test_checkpoint_attacks import (BINPERSID, BUILD, EMPTY_TUPLE, FALSE, MA, NEWOBJ, NONE, call,
                                     dict_, dtype, glob, i, raw, s, tup, wrap, write_zip)

sys.path.insert(0, TOOLS)
import _common  # noqa: E402

RECIPES = {'cascade': 'configs/detection/cascade_convnext_t_coco.py',
           'mask_rcnn': 'configs/detection/mask_rcnn_convnext_t_coco.py',
           'upernet': 'configs/segmentation/upernet_convnext_t_512_160k_ade20k.py'}
SMALL_TEST = ['model.backbone.init_cfg=None', 'model.test_cfg.rpn.nms_pre=100',
              'model.test_cfg.rpn.max_per_img=20']


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f'official_tool_{name}',
                                                  osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convert_tool = _load_tool('convert_checkpoint')


def build_runner(family, work_dir, options=(), **fits):
    """The Runner tools/test.py (``require_all=True``) or tools/train.py builds for the
    recipe, without its datasets (``splits=()``) and without the ImageNet download."""
    opts = list(SMALL_TEST if family != 'upernet' else SMALL_TEST[:1]) + list(options)
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = argparse.Namespace(config=osp.join(REPO, RECIPES[family]), work_dir=str(work_dir),
                              launcher='none', local_rank=0,
                              cfg_options=parser.parse_args(['--cfg-options', *opts]).cfg_options)
    cfg = _common.load_config(args)
    return _common.build_runner(cfg, splits=(), **fits), cfg


def forward(model, family):
    """Every output tensor of the model's ``mode='tensor'`` forward on a fixed small input."""
    model.eval()
    g = torch.Generator().manual_seed(0)
    if family == 'upernet':
        with torch.no_grad():
            out = model(torch.randn(1, 3, 64, 64, generator=g), mode='tensor')
    else:
        from mmdet.structures import DetDataSample
        meta = dict(img_shape=(128, 160), ori_shape=(128, 160), pad_shape=(128, 160),
                    batch_input_shape=(128, 160), scale_factor=(1.0, 1.0))
        with torch.no_grad():
            out = model(torch.randn(1, 3, 128, 160, generator=g), [DetDataSample(metainfo=meta)],
                        mode='tensor')
    flat = []

    def walk(x):
        if isinstance(x, torch.Tensor):
            flat.append(x)
        elif isinstance(x, (list, tuple)):
            for y in x:
                walk(y)
        elif isinstance(x, dict):
            for y in x.values():
                walk(y)
    walk(out)
    assert flat, 'the forward returned no tensor'
    return flat


def _log_text(runner):
    path = osp.join(runner.log_dir, f'{runner.timestamp}.log')
    with open(path) as f:
        return f.read()


# ----------------------------------------------------------------------------- loading
@pytest.mark.parametrize('family', list(RECIPES))
def test_official_layout_loads_through_the_runner(family, tmp_path):
    """load_from / tools/test.py's path: no missing or unexpected key, every tensor the
    file's, and the same outputs as a model given the same tensors directly."""
    path = tmp_path / f'official_{family}.pth'
    written = layouts.write(path, family)
    runner, cfg = build_runner(family, tmp_path / 'work', require_all=True)
    runner._load_from = str(path)
    runner.load_checkpoint(str(path))
    own = runner.model.state_dict()
    assert set(own) == set(written['state_dict'])
    for key, value in written['state_dict'].items():
        assert torch.equal(own[key], value), key

    from mmengine.registry import MODELS
    direct = MODELS.build(cfg.model)
    before = forward(direct, family)
    direct.load_state_dict(written['state_dict'], strict=True)  # our names = the official ones
    expected, got = forward(direct, family), forward(runner.model, family)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(before, expected))

    log = _log_text(runner)
    assert f'Official ConvNeXt checkpoint {path}' in log
    dtypes = 'float32' if family == 'mask_rcnn' else 'float32, int64'  # no BN, no counters
    assert f'Mapped {len(written["state_dict"])} tensors ({dtypes}) to this ' in log
    assert '0 missing in the checkpoint; 0 unexpected in the checkpoint' in log
    what = dict(cascade='Cascade Mask R-CNN ConvNeXt-tiny, 80 classes (mmdet 2.11.0',
                mask_rcnn='Mask R-CNN ConvNeXt-tiny, 80 classes (mmdet 2.11.0',
                upernet='UperNet ConvNeXt-tiny, 150 classes (mmseg 0.11.0')[family]
    assert what in log


def test_tools_test_py_evaluates_an_official_file(tmp_path):
    """The user's first command, ``tools/test.py CONFIG official.pth``, on a one-image
    ADE20K-format set (at 128 px, whole-image inference, to stay fast)."""
    from helpers import run_tool
    from convnext_dense.datasets.toy import write_ade
    write_ade(str(tmp_path / 'ade'), seed=0, num_train=1, num_val=1, size=(64, 48))
    layouts.write(tmp_path / 'official.pth', 'upernet')
    output = run_tool('test.py', osp.join(REPO, RECIPES['upernet']), str(tmp_path / 'official.pth'),
                      '--work-dir', str(tmp_path / 'work'), '--cfg-options',
                      f'data_root={tmp_path / "ade"}', 'test_dataloader.num_workers=0',
                      'test_dataloader.persistent_workers=False', 'model.backbone.init_cfg=None',
                      'test_dataloader.dataset.pipeline.1.scale=(128,128)',
                      'model.test_cfg.mode=whole', cwd=str(tmp_path))
    assert 'UperNet ConvNeXt-tiny, 150 classes (mmseg 0.11.0+a4a4d6a, mmcv 1.3.0' in output
    assert 'Mapped 268 tensors (float32, int64) to this EncoderDecoder' in output
    assert '0 missing in the checkpoint; 0 unexpected in the checkpoint.' in output
    assert re.search(r'Iter\(test\) \[1/1\] +aAcc: ', output)


def test_fine_tuning_with_other_classes_skips_exactly_the_class_tensors(tmp_path):
    """load_from an official COCO model into a 5-class Cascade: --skip-mismatched leaves the
    18 class-dependent tensors at their initial values, loads the rest and names each."""
    path = tmp_path / 'official_cascade.pth'
    written = layouts.write(path, 'cascade')
    options = [f'model.roi_head.bbox_head.{n}.num_classes=5' for n in range(3)] + \
        ['model.roi_head.mask_head.num_classes=5']
    runner, _ = build_runner('cascade', tmp_path / 'work', options, skip_mismatched=True)
    runner._load_from = str(path)
    initial = {k: v.clone() for k, v in runner.model.state_dict().items()}
    runner.load_checkpoint(str(path))
    hook = next(h for h in runner.hooks if type(h).__name__ == 'CheckpointFitsModelHook')
    expected = []
    for stage in range(3):
        p = f'roi_head.bbox_head.{stage}.'
        expected += [(p + 'fc_cls.weight', (81, 1024), (6, 1024)),
                     (p + 'fc_cls.bias', (81,), (6,)),
                     (p + 'fc_reg.weight', (320, 1024), (20, 1024)),
                     (p + 'fc_reg.bias', (320,), (20,))]
    for stage in range(3):
        p = f'roi_head.mask_head.{stage}.conv_logits.'
        expected += [(p + 'weight', (80, 256, 1, 1), (5, 256, 1, 1)), (p + 'bias', (80,), (5,))]
    assert sorted(hook.skipped) == sorted(expected)
    own = runner.model.state_dict()
    skipped = {k for k, _, _ in expected}
    for key, value in written['state_dict'].items():
        if key in skipped:
            assert torch.equal(own[key], initial[key]), key
        else:
            assert torch.equal(own[key], value), key
    log = _log_text(runner)
    assert '--skip-mismatched: 18 tensor(s)' in log
    assert 'roi_head.bbox_head.2.fc_reg.weight: checkpoint (320, 1024) vs model (20, 1024)' in log

    # without --skip-mismatched the same load is an error naming the shapes
    hook.skip_mismatched = False
    again = load_checkpoint(str(path))
    with pytest.raises(ValueError, match=r'18 tensor\(s\) have another shape'):
        hook.after_load_checkpoint(runner, again)


def _meta_state(keys):
    return OrderedDict((k, torch.empty(s, device='meta')) for k, s in keys)


def test_wrong_layout_is_a_clear_error():
    """A Cascade file given to Mask R-CNN, an S file given to T: the error lists what is
    missing and unexpected and names the config the file belongs to; resume is refused."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    import mmdet.utils
    mmdet.utils.register_all_modules(init_default_scope=False)
    init_default_scope('mmdet')
    cfg = Config.fromfile(osp.join(REPO, RECIPES['mask_rcnn']))
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    cascade = dict(meta=layouts.meta('cascade'), state_dict=_meta_state(layouts.layout('cascade')))
    with pytest.raises(ValueError) as error:
        official_dense.adapt_checkpoint(model, cascade, 'cascade.pth')
    text = str(error.value)
    assert 'Cascade Mask R-CNN ConvNeXt-tiny, 80 classes' in text
    # Mask R-CNN's roi_head: 8 bbox-head tensors (2 shared fcs, fc_cls, fc_reg) + 12 of the mask
    # head (4 convs, upsample, conv_logits); Cascade's: 3 x (4 x (conv + 5 BN) + 6) + 3 x 12
    assert re.search(r'\b20 missing in the checkpoint: roi_head\.bbox_head\.', text)
    assert re.search(r'\b126 unexpected in the checkpoint: roi_head\.bbox_head\.0\.', text)
    assert 'It belongs to configs/detection/cascade_convnext_t_coco.py.' in text

    small = dict(meta=layouts.meta('mask_rcnn', 'small'),
                 state_dict=_meta_state(layouts.layout('mask_rcnn', 'small')))
    with pytest.raises(ValueError, match=r'(?s)162 unexpected in the checkpoint: '
                       r'backbone\.stages\.2\.9\..*matches none of our recipes'):
        official_dense.adapt_checkpoint(model, small, 'mask_rcnn_s.pth')

    own = dict(meta=layouts.meta('mask_rcnn'), state_dict=_meta_state(layouts.layout('mask_rcnn')),
               optimizer=dict(state={}, param_groups=[]), amp=OrderedDict())
    with pytest.raises(ValueError, match=r'mmcv 1\.3\.1 runner .* cannot be resumed'):
        official_dense.adapt_checkpoint(model, own, 'mask_rcnn_t.pth', resume=True)
    report = official_dense.adapt_checkpoint(model, own, 'mask_rcnn_t.pth')
    assert '0 renamed' in report and '228 tensors' in report
    assert sorted(own) == ['meta', 'state_dict']  # the mmcv 1.x runner state is dropped
    # anything that is not an mmcv 1.x checkpoint is left alone
    mmengine_ckpt = dict(meta=dict(epoch=1), state_dict=dict(own['state_dict']))
    assert official_dense.adapt_checkpoint(model, mmengine_ckpt, 'x.pth') is None


def test_every_recipe_model_has_its_official_layout():
    """All 13 recipes with an official model (built on the meta device: no memory, no
    values) have exactly the official key names and shapes; the mapping reports them clean."""
    import importlib
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    for official in official_dense.OFFICIAL_MODELS:
        cfg = Config.fromfile(osp.join(REPO, 'configs', official.config))
        importlib.import_module(f'{cfg.default_scope}.utils').register_all_modules(
            init_default_scope=False)
        init_default_scope(cfg.default_scope)
        cfg.model.backbone.init_cfg = None
        with torch.device('meta'):
            model = MODELS.build(cfg.model)
        own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        keys = layouts.layout(official.family, official.arch)
        assert own == dict(keys), official.config
        file = dict(meta=layouts.meta(official.family, official.arch), state_dict=_meta_state(keys))
        report = official_dense.adapt_checkpoint(model, file, official.url)
        assert f'Mapped {len(keys)} tensors' in report and '0 missing' in report, report


def test_every_official_model_is_recognised_and_named_in_its_config():
    """identify() tells family, arch and classes of all 13 official layouts (shapes only);
    each recipe header names the URL and the metric; the 1x recipe says it has none."""
    assert len(official_dense.OFFICIAL_MODELS) == 13
    for model in official_dense.OFFICIAL_MODELS:
        classes = 150 if model.family == 'upernet' else 80
        found = official_dense.identify(_meta_state(layouts.layout(model.family, model.arch)))
        assert found == dict(family=model.family, arch=model.arch, num_classes=classes)
        assert model.config in official_dense.matching_configs(model.family, model.arch)
        with open(osp.join(REPO, 'configs', model.config)) as f:
            header = ''.join(line for line in f if line.startswith('#'))
        assert model.url in header, model.config
        for number in re.findall(r'\d+\.\d', model.metric):
            assert number in header, (model.config, number)
    with open(osp.join(REPO, 'configs/detection/mask_rcnn_convnext_t_1x_coco.py')) as f:
        assert 'no trained checkpoint' in f.read()


# ----------------------------------------------------------------------------- conversion
def test_convert_tool_writes_the_whole_mapped_model(tmp_path, capsys):
    src, dst = tmp_path / 'official.pth', tmp_path / 'ours.pth'
    written = layouts.write(src, 'upernet')
    convert_tool.main([str(src), str(dst)])  # auto: an official dense file -> full
    out = capsys.readouterr().out
    assert 'UperNet ConvNeXt-tiny, 150 classes' in out
    assert 'configs/segmentation/upernet_convnext_t_512_160k_ade20k.py' in out
    converted = torch.load(dst, weights_only=True)  # plain data only: loads with torch's list
    assert sorted(converted) == ['meta', 'state_dict']
    assert list(converted['state_dict']) == list(written['state_dict'])
    assert all(torch.equal(converted['state_dict'][k], v)
               for k, v in written['state_dict'].items())
    official = converted['meta']['official']
    assert official['mmseg_version'] == '0.11.0+a4a4d6a' and len(official['CLASSES']) == 150
    assert official['PALETTE'][0] == [120, 120, 120]

    backbone = tmp_path / 'backbone.pth'
    convert_tool.main([str(src), str(backbone), '--mode', 'backbone'])
    keys = list(torch.load(backbone, weights_only=True)['state_dict'])
    assert len(keys) == 186 and keys[0] == 'downsample_layers.0.0.weight'
    with pytest.raises(ValueError, match='not an official trained ConvNeXt'):
        convert_tool.main([str(backbone), str(tmp_path / 'x.pth'), '--mode', 'full'])


# ----------------------------------------------------------------------------- safe loading
def test_safe_loader_reads_the_old_bookkeeping(tmp_path):
    path = tmp_path / 'official.pth'
    layouts.write(path, 'cascade')
    loaded = load_checkpoint(str(path))
    meta = loaded['meta']
    assert meta['mmcv_version'] == '1.3.1' and meta['epoch'] == 36
    assert type(meta['CLASSES']) is tuple and meta['CLASSES'][0] == 'person'
    assert type(meta['hook_msgs']['best_score']) is np.float64
    assert meta['hook_msgs']['best_score'] == 0.504
    assert type(loaded['amp']) is OrderedDict and loaded['amp']['loss_scaler0']['unskipped'] == 1523
    assert type(loaded['state_dict']) is OrderedDict and loaded['state_dict']._metadata
    assert loaded['optimizer']['param_groups'][0]['betas'] == (0.9, 0.999)
    assert loaded['optimizer']['state'][0]['step'] == 263844

    # NumPy 1.x names its scalar numpy.core.multiarray.scalar; protocol 2 writes bytes through
    # _codecs.encode: the meta of a 2021 file, built from opcodes
    # _codecs.encode; the optimizer state was saved from the GPU (storage location cuda:0):
    # the meta and optimizer of a 2021 file, built from opcodes, read on this CPU machine
    on_gpu = tup(s('storage'), glob('torch.FloatStorage'), s('0'), s('cuda:0'), i(4)) + \
        BINPERSID
    exp_avg = call('torch._utils._rebuild_tensor_v2', on_gpu, i(0), tup(i(4)), tup(i(1)),
                   FALSE, call('collections.OrderedDict'))
    old = dict_(meta=dict_(mmcv_version=s('1.3.0'), seed=NONE, hook_msgs=dict_(
        best_score=call(f'{MA}.scalar', dtype('f8'), raw(struct.pack('<d', 0.46))))),
        state_dict=dict_(), optimizer=dict_(state=dict_(exp_avg=exp_avg)))
    write_zip(str(tmp_path / 'numpy1.pth'), wrap(old, 2),
              {'0': struct.pack('<4f', 1.0, 2.0, 3.0, 4.0)})
    from mmengine.runner.checkpoint import _load_checkpoint
    loaded = _load_checkpoint(str(tmp_path / 'numpy1.pth'), map_location='cpu')
    assert loaded['meta']['hook_msgs']['best_score'] == np.float64(0.46)
    assert loaded['optimizer']['state']['exp_avg'].tolist() == [1.0, 2.0, 3.0, 4.0]


def _instance(path):  # what pickle writes for an object of class ``path`` with a dict state
    return glob(path) + EMPTY_TUPLE + NEWOBJ + dict_(x=s('y')) + BUILD


BEYOND = {  # what an mmcv 1.x era file could hold beyond plain data -> the global named
    'mmcv ConfigDict as config': (lambda m: _instance('mmcv.utils.config.ConfigDict'),
                                  'mmcv.utils.config.ConfigDict'),
    'mmcv Config object': (lambda m: _instance('mmcv.utils.config.Config'),
                           'mmcv.utils.config.Config'),
    'apex loss scaler object': (lambda m: _instance('apex.amp.scaler.LossScaler'),
                                'apex.amp.scaler.LossScaler'),
    'DataContainer': (lambda m: _instance('mmcv.parallel.data_container.DataContainer'),
                      'DataContainer'),
    'a whole nn.Module': (lambda m: _instance('torch.nn.modules.linear.Linear'), 'Linear'),
    'numpy object array in hook_msgs': (
        lambda m: call(f'{MA}._reconstruct', glob('numpy.ndarray'), tup(b'K\x00'), raw(b'b'))
        + tup(b'K\x01', tup(b'K\x01'), dtype('O'), b'\x89', raw(b'\0' * 8)) + BUILD, "'O'"),
    'os.system in config text': (lambda m: call('os.system', s(f'touch {m}')), 'system'),
}


@pytest.mark.parametrize('name', list(BEYOND))
def test_safe_loader_refuses_anything_beyond_the_old_meta(name, tmp_path):
    marker = tmp_path / 'ran'
    build, named = BEYOND[name]
    body = dict_(meta=dict_(mmcv_version=s('1.3.1'), config=build(marker)), state_dict=dict_())
    path = str(tmp_path / 'hostile.pth')
    write_zip(path, wrap(body, 2))
    from mmengine.runner.checkpoint import _load_checkpoint
    for attempt in (lambda: load_checkpoint(path), lambda: _load_checkpoint(path, 'cpu'),
                    lambda: convert_tool.main([path, path + '.out', '--mode', 'full'])):
        with pytest.raises(UnsafeCheckpointError) as error:
            attempt()
        assert named in str(error.value)
    assert not marker.exists()
    assert not osp.exists(path + '.out')
