"""LearningRateDecayOptimizerConstructor: equality with mmdet's / mmseg's rule on real
Cascade Mask R-CNN and UperNet models, hand-computed scales, custom_keys, DDP, defaults, errors."""
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.optim import AmpOptimWrapper, OptimWrapper, build_optim_wrapper
from mmengine.registry import DefaultScope

import convnext_dense
from convnext_dense import ConvNeXt, LearningRateDecayOptimizerConstructor
from convnext_dense.engine import get_layer_id

ROOT = Path(__file__).resolve().parents[2]
CONSTRUCTOR = 'convnext_dense.LearningRateDecayOptimizerConstructor'
LR, WD = 2e-4, 0.05
OPTIMIZER = dict(type='AdamW', lr=LR, betas=(0.9, 0.999), weight_decay=WD)
DET_CFG = ROOT / 'configs/detection/cascade_convnext_t_coco.py'
SEG_CFG = ROOT / 'configs/segmentation/upernet_convnext_t_512_160k_ade20k.py'


def _build(package: str, cfg: Config):
    registry = __import__(f'{package}.registry', fromlist=['MODELS']).MODELS
    with DefaultScope.overwrite_default_scope(package):
        model = registry.build(cfg.model)
    # The comparisons below are only meaningful on our backbone, which mmdet's / mmseg's
    # constructor accepts because they test `'ConvNeXt' in type(model.backbone).__name__`.
    assert type(model.backbone) is ConvNeXt
    assert 'ConvNeXt' in type(model.backbone).__name__
    assert model.backbone.depths == [3, 3, 9, 3]
    return model, cfg.optim_wrapper


@pytest.fixture(scope='module')
def det_recipe():
    return _build('mmdet', Config.fromfile(str(DET_CFG)))


@pytest.fixture(scope='module')
def seg_recipe():
    return _build('mmseg', Config.fromfile(str(SEG_CFG)))


@pytest.fixture(scope='module')
def det_model(det_recipe):
    return det_recipe[0]


@pytest.fixture(scope='module')
def seg_model(seg_recipe):
    return seg_recipe[0]


def allow_amp_without_gpu(monkeypatch):
    """AmpOptimWrapper refuses to exist without an accelerator (its GradScaler would then
    disable itself); only the construction path is under test, so let it."""
    if not torch.cuda.is_available():
        monkeypatch.setattr('mmengine.optim.optimizer.amp_optimizer_wrapper.is_cuda_available',
                            lambda: True)


class Toy(nn.Module):
    """A backbone plus a head, the shape of a detector as far as parameter names go."""

    def __init__(self, arch='v2-atto', **kwargs):
        super().__init__()
        self.backbone = ConvNeXt(arch, **kwargs)
        dim = self.backbone.dims[-1]
        self.head = nn.Sequential(nn.Conv2d(dim, 4, 1), nn.BatchNorm2d(4))


class FakeDDP(nn.Module):
    """Holds the model as ``.module`` like (MM)DistributedDataParallel does."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def build(model, paramwise_cfg, wrapper='OptimWrapper', optimizer=OPTIMIZER):
    constructor = LearningRateDecayOptimizerConstructor(
        dict(type=wrapper, optimizer=dict(optimizer)), paramwise_cfg)
    return constructor(model)


def settings(optim_wrapper, model):
    """{parameter name: (lr, weight_decay)} for every trainable parameter, each in one group."""
    by_id = {}
    for group in optim_wrapper.optimizer.param_groups:
        for param in group['params']:
            assert id(param) not in by_id, 'a parameter is in two groups'
            by_id[id(param)] = (group['lr'], group['weight_decay'])
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert len(by_id) == len(named)
    return {name: by_id[id(param)] for name, param in named.items()}


def group_signature(optim_wrapper, model):
    """Groups as comparable tuples: (layer_id, lr, weight_decay, parameter names)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [(g['layer_id'], g['lr'], g['weight_decay'], tuple(names[id(p)] for p in g['params']))
            for g in optim_wrapper.optimizer.param_groups]


def assert_same(ours, theirs):
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert math.isclose(ours[name][0], theirs[name][0], rel_tol=1e-12), name
        assert ours[name][1] == theirs[name][1], name


# ------------------------------------------------------------------ equality with mmdet / mmseg
@pytest.mark.parametrize('decay_type', ['layer_wise', 'stage_wise'])
def test_matches_mmdet_on_cascade_mask_rcnn(det_model, decay_type):
    from mmdet.engine.optimizers import LearningRateDecayOptimizerConstructor as MMDetLRD
    cfg = dict(decay_rate=0.7, decay_type=decay_type, num_layers=6)
    ours = settings(build(det_model, cfg), det_model)
    theirs = settings(MMDetLRD(dict(type='OptimWrapper', optimizer=dict(OPTIMIZER)),
                               dict(cfg))(det_model), det_model)
    assert_same(ours, theirs)
    assert any(name.startswith('roi_head.bbox_head.2') for name in ours)  # really Cascade
    assert any(name.startswith('roi_head.mask_head') for name in ours)
    # Not vacuous: ids 0..7 (layer_wise) / 0..4 and 7 (stage_wise) all occur.
    assert len({lr for lr, _ in ours.values()}) == (8 if decay_type == 'layer_wise' else 6)
    assert {wd for _, wd in ours.values()} == {0.0, WD}


@pytest.mark.parametrize('decay_type', ['layer_wise', 'stage_wise'])
def test_matches_mmseg_on_upernet(seg_model, decay_type):
    from mmseg.engine.optimizers import LearningRateDecayOptimizerConstructor as MMSegLRD
    cfg = dict(decay_rate=0.9, decay_type=decay_type, num_layers=6)  # official UperNet-T values
    ours = settings(build(seg_model, cfg), seg_model)
    theirs = settings(MMSegLRD(dict(type='OptimWrapper', optimizer=dict(OPTIMIZER)),
                               dict(cfg))(seg_model), seg_model)
    assert_same(ours, theirs)
    assert any(name.startswith('decode_head.') for name in ours)
    assert any(name.startswith('auxiliary_head.') for name in ours)
    assert len({lr for lr, _ in ours.values()}) == (8 if decay_type == 'layer_wise' else 6)


@pytest.mark.parametrize('recipe', ['det_recipe', 'seg_recipe'])
def test_recipe_optim_wrapper_matches_theirs(recipe, request, monkeypatch):
    """The recipe's own optim_wrapper (ours, or the shipped one pointed at our constructor)
    builds through mmengine's builder and gives mmdet's / mmseg's settings."""
    model, optim_wrapper = request.getfixturevalue(recipe)
    scope = 'mmdet' if recipe == 'det_recipe' else 'mmseg'
    allow_amp_without_gpu(monkeypatch)
    cfg = optim_wrapper.to_dict()
    assert cfg['constructor'] in (CONSTRUCTOR, 'LearningRateDecayOptimizerConstructor')
    assert cfg['paramwise_cfg']['decay_type'] == (
        'layer_wise' if scope == 'mmdet' else 'stage_wise')
    with DefaultScope.overwrite_default_scope(scope):
        ours = build_optim_wrapper(model, dict(cfg, constructor=CONSTRUCTOR))
        theirs = build_optim_wrapper(model, dict(cfg, constructor=f'{scope}.'
                                                 'LearningRateDecayOptimizerConstructor'))
    assert type(ours) is type(theirs)
    assert type(ours).__name__ == cfg.get('type', 'OptimWrapper')
    assert_same(settings(ours, model), settings(theirs, model))


# ------------------------------------------------------------------ hand-computed values
def test_hand_computed_layer_wise_tiny(det_model):
    got = settings(build(det_model, dict(decay_rate=0.7, decay_type='layer_wise',
                                         num_layers=6)), det_model)
    # L = 6 + 2 = 8; scale = 0.7 ** (8 - id - 1)
    expected = {
        'backbone.downsample_layers.0.0.weight': (0.7 ** 7, WD),  # stem, id 0
        'backbone.downsample_layers.0.0.bias': (0.7 ** 7, 0.0),
        'backbone.downsample_layers.0.1.weight': (0.7 ** 7, 0.0),  # stem LayerNorm
        'backbone.stages.0.2.pwconv2.weight': (0.7 ** 6, WD),  # id 1
        'backbone.downsample_layers.1.1.weight': (0.7 ** 5, WD),  # id 2
        'backbone.stages.1.0.dwconv.weight': (0.7 ** 5, WD),  # id 2
        'backbone.downsample_layers.2.1.weight': (0.7 ** 4, WD),  # id 3
        'backbone.stages.2.0.pwconv1.weight': (0.7 ** 4, WD),  # id 3 + 0 // 3 = 3
        'backbone.stages.2.5.pwconv1.weight': (0.7 ** 3, WD),  # id 3 + 5 // 3 = 4
        'backbone.stages.2.8.pwconv1.weight': (0.49, WD),  # id 3 + 8 // 3 = 5: 0.7 ** 2
        'backbone.stages.2.8.gamma': (0.49, 0.0),  # layer scale: 1-D
        'backbone.stages.2.8.pwconv1.bias': (0.49, 0.0),
        'backbone.downsample_layers.3.1.weight': (0.7, WD),  # id N = 6
        'backbone.stages.3.2.pwconv2.weight': (0.7, WD),
        'backbone.norm3.weight': (1.0, 0.0),  # id N + 1 = 7
        'backbone.norm0.bias': (1.0, 0.0),
        'neck.lateral_convs.0.conv.weight': (1.0, WD),
        'neck.lateral_convs.0.conv.bias': (1.0, 0.0),
    }
    for name, (scale, wd) in expected.items():
        assert math.isclose(got[name][0], LR * scale, rel_tol=1e-12), name
        assert got[name][1] == wd, name


def test_hand_computed_stage_wise_tiny(det_model):
    got = settings(build(det_model, dict(decay_rate=0.7, decay_type='stage_wise',
                                         num_layers=6)), det_model)
    expected = {  # ids: downsamplers 0, stages.i -> i + 1, rest 7; scale 0.7 ** (7 - id)
        'backbone.downsample_layers.0.0.weight': 0.7 ** 7,
        'backbone.downsample_layers.3.1.weight': 0.7 ** 7,
        'backbone.stages.0.0.pwconv1.weight': 0.7 ** 6,
        'backbone.stages.2.8.pwconv1.weight': 0.7 ** 4,
        'backbone.stages.3.0.pwconv1.weight': 0.7 ** 3,
        'backbone.norm2.weight': 1.0,
        'neck.fpn_convs.3.conv.weight': 1.0,
    }
    for name, scale in expected.items():
        assert math.isclose(got[name][0], LR * scale, rel_tol=1e-12), name


def test_get_layer_id_with_wrapper_prefix():
    assert get_layer_id('module.backbone.stages.2.8.pwconv1.weight', 'layer_wise', 6) == 5
    assert get_layer_id('module.module.backbone.stages.2.8.pwconv1.weight', 'layer_wise', 6) == 5
    assert get_layer_id('backbone.stages.2.26.norm.weight', 'layer_wise', 12) == 11
    assert get_layer_id('backbone.downsample_layers.3.0.weight', 'layer_wise', 12) == 12
    assert get_layer_id('backbone.downsample_layers.3.0.weight', 'stage_wise', 12) == 0
    assert get_layer_id('backbone.stages.3.0.gamma', 'stage_wise', 12) == 4
    assert get_layer_id('decode_head.conv_seg.weight', 'stage_wise', 12) == 13
    assert get_layer_id('backbone.pos_embed', 'layer_wise', 12) == 0


def test_tokens_and_non_1d_biases():
    """Names decide too, not only shapes: a 2-D ``bias`` and ``pos_embed``/``cls_token`` get no
    weight decay; the three token names take layer id 0."""
    from mmdet.engine.optimizers import LearningRateDecayOptimizerConstructor as MMDetLRD
    model = Toy(dict(depths=[1, 1, 3, 1], dims=[8, 8, 8, 8]))
    for token in ('pos_embed', 'cls_token', 'mask_token'):
        setattr(model.backbone, token, nn.Parameter(torch.zeros(1, 4, 8)))
    model.extra = nn.Module()
    model.extra.bias = nn.Parameter(torch.zeros(4, 4))
    cfg = dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6)
    got = settings(build(model, cfg), model)
    assert got['extra.bias'] == (LR, 0.0)
    assert got['backbone.pos_embed'] == (LR * 0.7 ** 7, 0.0)
    assert got['backbone.cls_token'] == (LR * 0.7 ** 7, 0.0)
    assert got['backbone.mask_token'] == (LR * 0.7 ** 7, WD)
    theirs = settings(MMDetLRD(dict(type='OptimWrapper', optimizer=dict(OPTIMIZER)),
                               dict(cfg))(model), model)
    # mmdet matches 'pos_embed'/'cls_token' only as whole names, i.e. never under backbone.
    assert theirs['backbone.pos_embed'][1] == WD
    del got['backbone.pos_embed'], got['backbone.cls_token']
    del theirs['backbone.pos_embed'], theirs['backbone.cls_token']
    assert_same(got, theirs)


# ------------------------------------------------------------------ custom_keys
def test_custom_keys_scale_exactly_the_matching_params(det_model):
    from mmengine.optim import DefaultOptimWrapperConstructor
    base_cfg = dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6)
    custom_keys = {
        'roi_head': dict(lr_mult=10.),
        'roi_head.mask_head': dict(lr_mult=3., decay_mult=0.5),  # longer key wins
        'pwconv1': dict(lr_mult=0.5),  # same length as 'stages.': alphabetically first wins
        'stages.': dict(lr_mult=7.),
    }
    base = settings(build(det_model, base_cfg), det_model)
    custom = settings(build(det_model, dict(base_cfg, custom_keys=custom_keys)), det_model)
    # mmengine's own choice of key, seen through its lr (base lr * lr_mult of the chosen key).
    plain = DefaultOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(OPTIMIZER)),
        dict(custom_keys=custom_keys))(det_model)
    mmengine_mult = {name: lr / LR for name, (lr, _) in settings(plain, det_model).items()}
    changed = 0
    for name in base:
        mult = mmengine_mult[name]
        assert math.isclose(custom[name][0], base[name][0] * mult, rel_tol=1e-12), name
        wd_mult = 0.5 if 'roi_head.mask_head' in name else 1.0
        assert custom[name][1] == base[name][1] * wd_mult, name
        changed += mult != 1.0
    assert changed == sum(any(k in n for k in custom_keys) for n in base)
    spot = {
        'roi_head.bbox_head.0.fc_cls.weight': (10., WD),
        'roi_head.mask_head.2.conv_logits.weight': (3., WD * 0.5),
        'roi_head.mask_head.2.conv_logits.bias': (3., 0.0),
        'backbone.stages.2.8.pwconv1.weight': (0.49 * 0.5, WD),
        'backbone.stages.2.8.pwconv2.weight': (0.49 * 7., WD),
        'backbone.downsample_layers.0.0.weight': (0.7 ** 7, WD),
        'neck.fpn_convs.0.conv.weight': (1., WD),
        'rpn_head.rpn_conv.weight': (1., WD),
    }
    for name, (scale, wd) in spot.items():
        assert math.isclose(custom[name][0], LR * scale, rel_tol=1e-12), name
        assert math.isclose(custom[name][1], wd, rel_tol=1e-12), name


def test_custom_keys_extra_options():
    model = Toy('v2-atto')
    cfg = dict(decay_rate=0.8, custom_keys={'head': dict(lr_mult=10., betas=(0.5, 0.9))})
    wrapper = build(model, cfg)
    head_groups = [g for g in wrapper.optimizer.param_groups
                   if any(p is model.head[0].weight for p in g['params'])]
    assert head_groups[0]['betas'] == (0.5, 0.9)
    assert math.isclose(head_groups[0]['lr'], LR * 10., rel_tol=1e-12)
    head_params = {id(p) for p in model.head.parameters()}
    for group in wrapper.optimizer.param_groups:
        is_head = {id(p) in head_params for p in group['params']}
        assert len(is_head) == 1  # head and backbone never share a group here
        assert group['betas'] == ((0.5, 0.9) if is_head == {True} else (0.9, 0.999))


# ------------------------------------------------------------------ ConvNeXt V2 GRN
def grn_names(model):
    return sorted(name for name, _ in model.named_parameters()
                  if name.endswith(('.grn.gamma', '.grn.beta')))


@pytest.mark.parametrize('decay_type', ['layer_wise', 'stage_wise'])
def test_grn_gets_no_weight_decay_by_default(decay_type):
    """V2 default: exactly the GRN gamma/beta lose weight decay, at unchanged lr; with
    grn_weight_decay=True every group is mmdet's (which decays GRN like any 4-D weight)."""
    from mmdet.engine.optimizers import LearningRateDecayOptimizerConstructor as MMDetLRD
    model = Toy('v2-atto')  # depths [2, 2, 6, 2]: 12 blocks, 24 GRN tensors
    grn = grn_names(model)
    assert len(grn) == 24 and model.backbone.stages[0][0].grn.gamma.shape == (1, 1, 1, 160)
    cfg = dict(decay_rate=0.8, decay_type=decay_type, num_layers=6)
    default = settings(build(model, cfg), model)
    decayed = settings(build(model, dict(cfg, grn_weight_decay=True)), model)
    theirs = settings(MMDetLRD(dict(type='OptimWrapper', optimizer=dict(OPTIMIZER)),
                               dict(cfg))(model), model)
    assert_same(decayed, theirs)
    for name in grn:
        assert default[name][1] == 0.0, name
        assert decayed[name][1] == WD, name
        assert default[name][0] == decayed[name][0], name
    assert {n: v for n, v in default.items() if n not in grn} == \
        {n: v for n, v in decayed.items() if n not in grn}
    # the lr is the block's: stages.2.5 is layer_wise id 3 + 5 // 3 = 4, stage_wise id 3
    layer_id = 4 if decay_type == 'layer_wise' else 3
    assert math.isclose(default['backbone.stages.2.5.grn.beta'][0],
                        LR * 0.8 ** (8 - layer_id - 1), rel_tol=1e-12)


def test_grn_default_with_custom_keys():
    """custom_keys still act on GRN: lr_mult scales its lr; decay_mult scales its weight decay,
    which stays 0 under the default and is WD * decay_mult with grn_weight_decay=True."""
    model = Toy('v2-atto')
    name = 'backbone.stages.3.1.grn.gamma'  # layer_wise id 6 of 0..7: scale 0.8
    custom = {'.grn.': dict(lr_mult=3., decay_mult=0.5)}
    base = dict(decay_rate=0.8, num_layers=6)
    got = settings(build(model, dict(base, custom_keys=custom)), model)
    assert math.isclose(got[name][0], LR * 0.8 * 3., rel_tol=1e-12) and got[name][1] == 0.0
    got = settings(build(model, dict(base, custom_keys=custom, grn_weight_decay=True)), model)
    assert math.isclose(got[name][0], LR * 0.8 * 3., rel_tol=1e-12)
    assert math.isclose(got[name][1], WD * 0.5, rel_tol=1e-12)
    # a key that does not match GRN leaves its exemption alone
    got = settings(build(model, dict(base, custom_keys={'stages.3': dict(decay_mult=2.)})), model)
    assert got[name][1] == 0.0
    assert got['backbone.stages.3.1.pwconv1.weight'][1] == WD * 2.


def test_grn_switch_leaves_v1_groups_alone(det_model):
    """A V1 model has no GRN: both settings give identical groups (and mmdet's, see
    test_matches_mmdet_on_cascade_mask_rcnn)."""
    assert grn_names(det_model) == []
    cfg = dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6)
    assert group_signature(build(det_model, cfg), det_model) == \
        group_signature(build(det_model, dict(cfg, grn_weight_decay=True)), det_model)


def test_grn_weight_decay_must_be_a_bool():
    with pytest.raises(TypeError, match='grn_weight_decay must be True or False.*got 0'):
        LearningRateDecayOptimizerConstructor(
            dict(type='OptimWrapper', optimizer=dict(OPTIMIZER)),
            dict(decay_rate=0.7, grn_weight_decay=0))


# ------------------------------------------------------------------ grouping and summary
def test_groups_are_merged_and_summarised(det_model):
    records = []

    class Capture(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger, handler = MMLogger.get_current_instance(), Capture(level=logging.INFO)
    logger.addHandler(handler)
    try:
        wrapper = build(det_model, dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6))
    finally:
        logger.removeHandler(handler)
    summaries = [r for r in records if r.startswith('LearningRateDecayOptimizerConstructor:')]
    assert len(summaries) == 1  # one message for the whole build, not one per parameter
    lines = summaries[0].splitlines()
    groups = wrapper.optimizer.param_groups
    keys = [(g['layer_id'], g['lr'], g['weight_decay']) for g in groups]
    assert len(keys) == len(set(keys)) == 16  # ids 0..7, each with decay and no-decay params
    assert [g['layer_id'] for g in groups] == sorted(g['layer_id'] for g in groups)
    trainable = [p for p in det_model.parameters() if p.requires_grad]
    assert len(lines) == 1 + 1 + len(groups) + 1  # title, header, one row per group, total
    assert lines[1].split()[:6] == ['layer_id', 'lr_scale', 'lr', 'weight_decay', 'tensors',
                                    'params']
    rows = [line.split() for line in lines[2:-1]]
    assert [int(row[0]) for row in rows] == [g['layer_id'] for g in groups]
    assert [int(row[4]) for row in rows] == [len(g['params']) for g in groups]
    assert sum(int(row[5].replace(',', '')) for row in rows) == sum(p.numel() for p in trainable)
    assert f'{len(trainable)} tensors' in lines[-1]
    assert 'num_layers=6 (from paramwise_cfg)' in lines[0]
    assert 'grn_weight_decay=False' in lines[0]


def test_frozen_parameters_are_left_out():
    model = Toy('v2-atto', frozen_stages=1)
    wrapper = build(model, dict(decay_rate=0.8))
    held = {id(p) for g in wrapper.optimizer.param_groups for p in g['params']}
    assert not any(id(p) in held for p in model.backbone.stages[1].parameters())
    assert all(id(p) in held for p in model.backbone.stages[2].parameters())
    assert min(g['layer_id'] for g in wrapper.optimizer.param_groups) == 3


# ------------------------------------------------------------------ wrappers, registry, AMP
def test_ddp_style_prefix_gives_same_groups(det_model):
    cfg = dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6)
    plain = group_signature(build(det_model, cfg), det_model)
    wrapped = FakeDDP(det_model)
    assert group_signature(build(wrapped, cfg), det_model) == plain  # __call__ unwraps
    # add_params on the wrapper itself sees `module.`-prefixed names and must ignore them.
    constructor = LearningRateDecayOptimizerConstructor(
        dict(type='OptimWrapper', optimizer=dict(OPTIMIZER)), cfg)
    assert next(iter(dict(wrapped.named_parameters()))).startswith('module.')
    groups = []
    constructor.add_params(groups, wrapped)
    names = {id(p): n for n, p in det_model.named_parameters()}
    assert [(g['layer_id'], g['lr'], g['weight_decay'], tuple(names[id(p)] for p in g['params']))
            for g in groups] == plain


def test_real_ddp_wrapper(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    model = Toy('v2-atto')
    cfg = dict(decay_rate=0.8, decay_type='stage_wise')
    expected = group_signature(build(model, cfg), model)
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0,
                            world_size=1)
    try:
        ddp = DistributedDataParallel(model)
        assert group_signature(build(ddp, cfg), model) == expected
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
@pytest.mark.parametrize('wrapper', ['OptimWrapper', 'AmpOptimWrapper'])
def test_build_from_config_through_registry(scope, wrapper, monkeypatch):
    allow_amp_without_gpu(monkeypatch)
    __import__(f'{scope}.engine')  # their registries, as a Runner of that scope has them
    model = Toy('v2-atto')
    cfg = dict(type=wrapper, constructor=CONSTRUCTOR, optimizer=dict(OPTIMIZER),
               paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6))
    with DefaultScope.overwrite_default_scope(scope):
        built = build_optim_wrapper(model, Config(dict(optim_wrapper=cfg)).optim_wrapper)
    assert type(built) is (AmpOptimWrapper if wrapper == 'AmpOptimWrapper' else OptimWrapper)
    direct = build(model, cfg['paramwise_cfg'])
    assert group_signature(built, model) == group_signature(direct, model)
    assert convnext_dense.OPTIM_WRAPPER_CONSTRUCTORS.get(
        'LearningRateDecayOptimizerConstructor') is LearningRateDecayOptimizerConstructor


# ------------------------------------------------------------------ num_layers defaults
@pytest.mark.parametrize('depth, expected', [(6, 6), (9, 6), (10, 12), (27, 12)])
def test_default_num_layers_from_depth(depth, expected):
    model = Toy(dict(depths=[1, 1, depth, 1], dims=[8, 8, 8, 8]))
    wrapper = build(model, dict(decay_rate=0.5))
    ids = {g['layer_id'] for g in wrapper.optimizer.param_groups}
    assert max(ids) == expected + 1
    top = max(wrapper.optimizer.param_groups, key=lambda g: g['layer_id'])
    assert top['lr'] == LR  # the head: scale 0.5 ** 0
    stage3 = model.backbone.stages[3][0].pwconv1.weight
    group = next(g for g in wrapper.optimizer.param_groups
                 if any(p is stage3 for p in g['params']))
    assert group['layer_id'] == expected and math.isclose(group['lr'], LR * 0.5)


def test_v2_atto_default_num_layers_is_6():
    model = Toy('v2-atto')  # depths [2, 2, 6, 2]
    got = settings(build(model, dict(decay_rate=0.7)), model)
    default = settings(build(model, dict(decay_rate=0.7, num_layers=6)), model)
    assert got == default
    assert got != settings(build(model, dict(decay_rate=0.7, num_layers=12)), model)
    assert math.isclose(got['backbone.stages.2.5.pwconv1.weight'][0], LR * 0.7 ** 3)  # id 4
    assert math.isclose(got['backbone.stages.3.1.pwconv1.weight'][0], LR * 0.7)  # id 6
    assert math.isclose(got['backbone.downsample_layers.0.0.weight'][0], LR * 0.7 ** 7)
    assert got['head.0.weight'] == (LR, WD)


# ------------------------------------------------------------------ models without a backbone
def test_model_without_backbone_gets_one_scale():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    wrapper = build(model, dict(decay_rate=0.7, num_layers=6))
    assert [(g['layer_id'], g['lr'], g['weight_decay'], len(g['params']))
            for g in wrapper.optimizer.param_groups] == [(7, LR, WD, 1), (7, LR, 0.0, 3)]


def test_non_convnext_backbone_is_refused():
    model = nn.Module()
    model.backbone = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match='ConvNeXt-like backbone.*backbone.0.weight'):
        build(model, dict(decay_rate=0.7))


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize('cfg, match', [
    (dict(decay_rate=0.7, decay_type='layerwise'), "'layerwise'.*layer_wise, stage_wise"),
    (dict(decay_type='layer_wise'), 'decay_rate is required'),
    (None, 'decay_rate is required'),
    (dict(decay_rate=0.), 'decay_rate must be a number > 0'),
    (dict(decay_rate=0.7, num_layers='6'), 'num_layers must be a positive int'),
    (dict(decay_rate=0.7, norm_decay_mult=0.), r"\['norm_decay_mult'\].*_delete_"),
    (dict(decay_rate=0.7, custom_keys={'head': dict(lr=1.)}), r"custom_keys\['head'\].*'lr'"),
])
def test_bad_config_is_refused(cfg, match):
    with pytest.raises(ValueError, match=match):
        LearningRateDecayOptimizerConstructor(
            dict(type='OptimWrapper', optimizer=dict(OPTIMIZER)), cfg)


def test_too_small_num_layers_is_refused():
    model = Toy(dict(depths=[1, 1, 27, 1], dims=[8, 8, 8, 8]))
    with pytest.raises(ValueError, match='num_layers=6 is too small.*27 blocks.*>= 12'):
        build(model, dict(decay_rate=0.7, num_layers=6))
    with pytest.raises(ValueError, match='num_layers=3 is too small for stage_wise'):
        build(model, dict(decay_rate=0.7, num_layers=3, decay_type='stage_wise'))


def test_optimizer_without_lr_is_refused():
    with pytest.raises(ValueError, match='optimizer.lr must be set'):
        LearningRateDecayOptimizerConstructor(
            dict(type='OptimWrapper', optimizer=dict(type='AdamW')), dict(decay_rate=0.7))


def test_training_step_uses_the_group_lr():
    """A real SGD step through the built wrapper moves each parameter by its group's lr."""
    torch.manual_seed(0)
    model = Toy(dict(depths=[1, 1, 6, 1], dims=[8, 8, 8, 8]))
    wrapper = build(model, dict(decay_rate=0.5),
                    optimizer=dict(type='SGD', lr=0.1, weight_decay=0.))
    out = model.head(model.backbone(torch.randn(2, 3, 32, 32))[-1])
    wrapper.backward(out.square().mean())
    checks = {'backbone.downsample_layers.0.0.weight': 0.1 * 0.5 ** 7,
              'backbone.stages.2.5.pwconv1.weight': 0.1 * 0.5 ** 3,
              'head.0.weight': 0.1}
    params = dict(model.named_parameters())
    before = {n: (params[n].detach().clone(), params[n].grad.clone()) for n in checks}
    wrapper.step()
    for name, lr in checks.items():
        value, grad = before[name]
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(params[name].detach(), value - lr * grad)
