"""Detection configs: every file builds, parameter counts and recipe settings match the paper."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config

import convnext_dense  # noqa: F401  (registers the convnext_dense scope)

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


def load(name):
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    return Config.fromfile(osp.join(CONFIG_DIR, name))


def build_on_meta(cfg):
    """The detector with parameters on the meta device: shapes only, no memory, no init."""
    from mmengine.registry import MODELS
    with torch.device('meta'):
        return MODELS.build(cfg.model)


def test_every_recipe_has_a_config():
    assert set(RECIPES) <= set(CONFIGS)
    assert 'demo_cascade_convnext_atto_toy.py' in CONFIGS


@pytest.mark.parametrize('name', CONFIGS)
def test_config_builds(name):
    cfg = load(name)
    assert cfg.default_scope == 'mmdet'
    assert cfg.custom_imports.imports == ['convnext_dense']
    model = build_on_meta(cfg)
    assert type(model.backbone).__name__ == 'ConvNeXt'
    assert type(model.backbone).__module__.startswith('convnext_dense.')
    dims = model.backbone.dims
    assert list(cfg.model.neck.in_channels) == dims
    assert model.backbone.out_indices == (0, 1, 2, 3)


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
