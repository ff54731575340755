"""Detection configs: every file builds, parameter counts and recipe settings match the paper."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config

import convnext_dense  # noqa: F401  (registers the convnext_dense scope)
from helpers import build_on_meta, v2_backbone_params_from_paper

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG_DIR = osp.join(REPO, 'configs', 'detection')
CONFIGS = sorted(osp.basename(p) for p in glob.glob(osp.join(CONFIG_DIR, '*.py')))

# config: (arch, drop_path, lr, decay_rate, num_layers, AMP, params in M (paper table), epochs,
#          lr steps)
RECIPES = {
    'cascade_convnext_t_coco.py': ('tiny', 0.4, 2e-4, 0.7, 6, True, 85.93, 36, [27, 33]),
    'cascade_convnext_s_coco.py': ('small', 0.6, 2e-4, 0.7, 12, True, 107.57, 36, [27, 33]),
    'cascade_convnext_b_coco.py': ('base', 0.7, 2e-4, 0.8, 12, True, 145.80, 36, [27, 33]),
    'cascade_convnext_b_in22k_coco.py': ('base', 0.6, 1e-4, 0.8, 12, True, 145.80, 36,
                                         [27, 33]),
    'cascade_convnext_l_in22k_coco.py': ('large', 0.7, 1e-4, 0.7, 12, False, 254.71, 36,
                                         [27, 33]),
    'cascade_convnext_xl_in22k_coco.py': ('xlarge', 0.8, 1e-4, 0.7, 12, False, 406.88, 36,
                                          [27, 33]),
    'mask_rcnn_convnext_t_coco.py': ('tiny', 0.4, 1e-4, 0.95, 6, True, 48.10, 36, [27, 33]),
    'mask_rcnn_convnext_t_1x_coco.py': ('tiny', 0.4, 1e-4, 0.95, 6, True, 48.10, 12, [8, 11]),
}

# ConvNeXt V2 Mask R-CNN 3x, the paper's COCO recipe (arXiv 2301.00808, Appendix A.3; sources
# and the choices it leaves open in each config's header).
# config: (arch, drop_path, num_layers, tolerance in M of the parameter count derived from
#          the papers' numbers (test_v2_parameter_count), paper box / mask AP (Table 6; V2-T: not in the paper)); all lr 1e-4, layer_wise
#          decay 0.95, AMP, 36 epochs, 32 images per batch, large-scale jitter, soft-NMS
V2_RECIPES = {
    'mask_rcnn_convnext_v2_t_coco.py': ('v2-tiny', 0.3, 6, 0.06, None),
    'mask_rcnn_convnext_v2_b_coco.py': ('v2-base', 0.4, 12, 0.51, (52.9, 46.6)),
    'mask_rcnn_convnext_v2_l_coco.py': ('v2-large', 0.5, 12, 0.51, (54.4, 47.7)),
    'mask_rcnn_convnext_v2_h_coco.py': ('v2-huge', 0.5, 12, 0.51, (55.7, 48.9)),
}


def load(name):
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    return Config.fromfile(osp.join(CONFIG_DIR, name))


def test_every_recipe_has_a_config():
    assert set(RECIPES) <= set(CONFIGS)
    assert 'demo_cascade_convnext_atto_toy.py' in CONFIGS


def backbone_consumer(cfg):
    """(config key, in_channels) of what reads the backbone's maps: the neck (FPN, ChannelMapper
    of DINO, ...) or, without a neck, the head (Mask2Former's panoptic_head)."""
    if cfg.model.get('neck') is not None:
        return 'neck', cfg.model.neck.in_channels
    for key in ('panoptic_head', 'bbox_head', 'rpn_head'):
        if cfg.model.get(key) is not None and 'in_channels' in cfg.model[key]:
            return key, cfg.model[key].in_channels
    raise AssertionError('no neck and no head with in_channels reads the backbone')


@pytest.mark.parametrize('name', CONFIGS)
def test_config_builds(name):
    cfg = load(name)
    assert cfg.default_scope == 'mmdet'
    assert cfg.custom_imports.imports == ['convnext_dense']
    model = build_on_meta(cfg)
    assert type(model.backbone).__name__ == 'ConvNeXt'
    assert type(model.backbone).__module__.startswith('convnext_dense.')
    # whatever reads the backbone takes exactly the channels of the maps it outputs
    out_indices = tuple(model.backbone.out_indices)
    assert out_indices == tuple(sorted(set(out_indices))) and out_indices
    key, in_channels = backbone_consumer(cfg)
    assert list(in_channels) == [model.backbone.dims[i] for i in out_indices], key
    with torch.device('meta'):
        outs = model.backbone(torch.empty(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == list(in_channels), key


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_parameter_count_matches_the_paper(name):
    expected = RECIPES[name][6]
    model = build_on_meta(load(name))
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - expected) < 0.01, f'{name}: {count:.3f}M parameters, expected {expected}M'


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_recipe_settings(name):
    arch, drop_path, lr, decay_rate, num_layers, amp, _, epochs, steps = RECIPES[name]
    cfg = load(name)
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.arch, backbone.drop_path_rate) == \
        ('convnext_dense.ConvNeXt', arch, drop_path)
    assert backbone.layer_scale_init_value == 1.0
    assert backbone.init_cfg.type == 'Pretrained'
    pre = '22k' if 'in22k' in name else '1k'
    assert osp.basename(backbone.init_cfg.checkpoint) == f'convnext_{arch}_{pre}_224.pth'

    wrapper = cfg.optim_wrapper
    assert wrapper.type == ('AmpOptimWrapper' if amp else 'OptimWrapper')
    assert wrapper.constructor == 'convnext_dense.LearningRateDecayOptimizerConstructor'
    assert dict(wrapper.optimizer) == dict(type='AdamW', lr=lr, betas=(0.9, 0.999),
                                           weight_decay=0.05)
    assert dict(wrapper.paramwise_cfg) == dict(decay_rate=decay_rate, decay_type='layer_wise',
                                               num_layers=num_layers)
    # 36 (12) epochs, x0.1 at the steps, 500 linear warm-up iterations from 0.001
    assert cfg.train_cfg.max_epochs == epochs
    warmup, steps_cfg = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.by_epoch, warmup.end) == \
        ('LinearLR', 0.001, False, 500)
    assert (steps_cfg.type, steps_cfg.milestones, steps_cfg.gamma, steps_cfg.end) == \
        ('MultiStepLR', steps, 0.1, epochs)
    # 16 images per batch: 2 per GPU on 8 GPUs; auto_scale_lr knows the base batch
    assert cfg.train_dataloader.batch_size * 8 == 16 == cfg.auto_scale_lr.base_batch_size

    # flip + RandomChoice(multi-scale resize | resize 400/500/600, crop 384..600, resize)
    pipeline = cfg.train_dataloader.dataset.pipeline
    assert [t.type for t in pipeline] == ['convnext_dense.LoadImageFromFileChecked',
                                          'LoadAnnotations', 'RandomFlip',
                                          'RandomChoice', 'PackDetInputs']
    multi, crop = pipeline[3].transforms
    short_sides = list(range(480, 801, 32))
    assert [s for s, _ in multi[0].scales] == short_sides
    assert {l for _, l in multi[0].scales} == {1333}
    assert [t.type for t in crop] == ['RandomChoiceResize', 'RandomCrop', 'RandomChoiceResize']
    assert [s for s, _ in crop[0].scales] == [400, 500, 600]
    assert (crop[1].crop_type, tuple(crop[1].crop_size)) == ('absolute_range', (384, 600))
    assert [s for s, _ in crop[2].scales] == short_sides
    assert cfg.val_evaluator.metric == ['bbox', 'segm']

    if name.startswith('cascade'):
        heads = cfg.model.roi_head.bbox_head
        assert len(heads) == 3
        for head, stds in zip(heads, ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1],
                                      [0.033, 0.033, 0.067, 0.067])):
            assert (head.type, head.num_shared_convs, head.num_shared_fcs) == \
                ('ConvFCBBoxHead', 4, 1)
            assert head.norm_cfg.type == 'SyncBN' and head.reg_decoded_bbox
            assert not head.reg_class_agnostic
            assert (head.loss_bbox.type, head.loss_bbox.loss_weight) == ('GIoULoss', 10.0)
            assert head.bbox_coder.target_stds == stds


def test_every_v2_recipe_has_a_config():
    assert set(V2_RECIPES) <= set(CONFIGS)
    assert set(V2_RECIPES) == {n for n in CONFIGS if n.startswith('mask_rcnn_convnext_v2_')}


@pytest.mark.parametrize('name', sorted(V2_RECIPES))
def test_v2_parameter_count(name):
    """The V2 paper gives no Mask R-CNN sizes: the backbone from its classifier table, plus the
    heads of the V1 paper's Mask R-CNN T (its 48.10M less ConvNeXt-T's 27.82M), whose FPN
    lateral 1x1 convs (256 outputs) take the V2 backbone's channels instead of T's."""
    tolerance = V2_RECIPES[name][3]  # the papers' rounding
    model = build_on_meta(load(name))
    count = sum(p.numel() for p in model.parameters()) / 1e6
    dims = model.backbone.dims
    heads = RECIPES['mask_rcnn_convnext_t_coco.py'][6] - 27.82 + \
        256 * (sum(dims) - sum((96, 192, 384, 768))) / 1e6
    expected = v2_backbone_params_from_paper(dims) + heads
    assert abs(count - expected) < tolerance, \
        f'{name}: {count:.3f}M, from the papers {expected:.3f}M'
    # V2 blocks: GRN gamma/beta of shape (1, 1, 1, 4 * dim), no layer-scale gamma
    block = model.backbone.stages[2][0]
    assert block.gamma is None
    assert block.grn.gamma.shape == (1, 1, 1, 4 * model.backbone.dims[2])


@pytest.mark.parametrize('name', sorted(V2_RECIPES))
def test_v2_recipe_settings(name):
    arch, drop_path, num_layers, _, paper = V2_RECIPES[name]
    cfg = load(name)
    header = open(osp.join(CONFIG_DIR, name)).read().split('\n_base_')[0]
    if paper is not None:  # the paper's numbers are in the header
        assert f'box AP {paper[0]}, mask AP {paper[1]}' in header
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.arch, backbone.drop_path_rate) == \
        ('convnext_dense.ConvNeXt', arch, drop_path)
    assert backbone.layer_scale_init_value == 0.0
    assert backbone.init_cfg.checkpoint == (
        'https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/'
        f'convnextv2_{arch[3:]}_1k_224_ema.pt')
    wrapper = cfg.optim_wrapper
    assert wrapper.type == 'AmpOptimWrapper'
    assert wrapper.constructor == 'convnext_dense.LearningRateDecayOptimizerConstructor'
    assert dict(wrapper.optimizer) == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999),
                                           weight_decay=0.05)
    # no grn_weight_decay key: GRN gamma/beta are exempt from weight decay by default
    assert dict(wrapper.paramwise_cfg) == dict(decay_rate=0.95, decay_type='layer_wise',
                                               num_layers=num_layers)
    assert cfg.model.type == 'MaskRCNN'
    assert cfg.model.roi_head.bbox_head.type == 'Shared2FCBBoxHead'
    # 3x = 36 epochs, 32 images per batch (8 GPUs x 4)
    assert cfg.train_cfg.max_epochs == 36
    warmup, steps = cfg.param_scheduler
    assert (warmup.end, steps.milestones, steps.end) == (500, [27, 33], 36)
    assert cfg.train_dataloader.batch_size * 8 == 32 == cfg.auto_scale_lr.base_batch_size
    # large-scale jittering: 1024x1024, scale range 0.1..2.0, flip
    pipeline = {t.type: t for t in cfg.train_dataloader.dataset.pipeline}
    assert tuple(pipeline['RandomResize'].scale) == (1024, 1024)
    assert tuple(pipeline['RandomResize'].ratio_range) == (0.1, 2.0)
    assert tuple(pipeline['RandomCrop'].crop_size) == (1024, 1024)
    assert pipeline['RandomFlip'].prob == 0.5
    # single-scale test with soft-NMS on the final boxes
    assert tuple(cfg.test_dataloader.dataset.pipeline[1].scale) == (1333, 800)
    assert cfg.model.test_cfg.rcnn.nms.type == 'soft_nms'
    assert cfg.model.test_cfg.rpn.nms.type == 'nms'


def test_v2_recipe_exempts_grn_from_weight_decay():
    """Built from the V2-T recipe: GRN gamma/beta at the block's lr with weight decay 0, the
    block's 2-D weights at 0.05."""
    from mmengine.optim import build_optim_wrapper
    cfg = load('mask_rcnn_convnext_v2_t_coco.py')
    model = build_on_meta(cfg)
    wrapper_cfg = cfg.optim_wrapper
    wrapper_cfg.type = 'OptimWrapper'  # AmpOptimWrapper needs a GPU to be built
    wrapper_cfg.pop('loss_scale')
    optimizer = build_optim_wrapper(model, wrapper_cfg).optimizer
    group_of = {id(p): g for g in optimizer.param_groups for p in g['params']}
    params = dict(model.named_parameters())
    grn = [n for n in params if '.grn.' in n]
    assert len(grn) == 2 * 18  # 3 + 3 + 9 + 3 blocks
    for name in grn:
        assert group_of[id(params[name])]['weight_decay'] == 0.0, name
    for name, scale in (('backbone.stages.2.4.grn.beta', 0.95 ** 3),
                        ('backbone.stages.2.4.pwconv1.weight', 0.95 ** 3),
                        ('backbone.stages.0.1.grn.gamma', 0.95 ** 6)):
        assert group_of[id(params[name])]['lr'] == pytest.approx(1e-4 * scale, rel=1e-12)
    assert group_of[id(params['backbone.stages.2.4.pwconv1.weight'])]['weight_decay'] == 0.05


def test_layer_decay_reaches_the_detector():
    """The recipe's optimizer: stem lr = lr * 0.7**7, heads at full lr, no decay on norms."""
    from mmengine.optim import build_optim_wrapper
    cfg = load('cascade_convnext_t_coco.py')
    model = build_on_meta(cfg)
    wrapper_cfg = cfg.optim_wrapper
    wrapper_cfg.type = 'OptimWrapper'  # AmpOptimWrapper needs a GPU to be built
    wrapper_cfg.pop('loss_scale')
    optimizer = build_optim_wrapper(model, wrapper_cfg).optimizer
    group_of = {}
    for group in optimizer.param_groups:
        for param in group['params']:
            group_of[id(param)] = group
    params = dict(model.named_parameters())
    assert len(group_of) == len(params)

    def lr_wd(name):
        group = group_of[id(params[name])]
        return group['lr'], group['weight_decay']

    assert lr_wd('backbone.downsample_layers.0.0.weight') == pytest.approx((2e-4 * 0.7 ** 7,
                                                                           0.05))
    assert lr_wd('backbone.stages.2.4.pwconv1.weight') == pytest.approx((2e-4 * 0.7 ** 3, 0.05))
    assert lr_wd('backbone.stages.3.0.gamma') == pytest.approx((2e-4 * 0.7, 0.0))
    assert lr_wd('roi_head.bbox_head.2.shared_convs.0.conv.weight') == pytest.approx((2e-4,
                                                                                      0.05))
    assert lr_wd('neck.fpn_convs.0.conv.bias') == pytest.approx((2e-4, 0.0))


def test_missing_pretrained_checkpoint_names_the_option(tmp_path):
    from mmengine.registry import MODELS
    cfg = load('cascade_convnext_t_coco.py')
    backbone_cfg = cfg.model.backbone
    backbone_cfg.init_cfg.checkpoint = str(tmp_path / 'convnext_tiny_1k_224.pth')
    backbone = MODELS.build(dict(backbone_cfg, arch=dict(depths=[1, 1, 1, 1],
                                                        dims=[8, 16, 24, 32])))
    with pytest.raises(FileNotFoundError) as error:
        backbone.init_weights()
    message = str(error.value)
    assert 'convnext_tiny_1k_224.pth' in message and 'init_cfg' in message
    assert 'checkpoint' in message
