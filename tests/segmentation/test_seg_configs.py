"""The segmentation configs build, have the paper's parameter counts and the official recipe."""
import glob
import os.path as osp

import pytest
import torch

import convnext_dense  # noqa: F401
from mmengine.config import Config

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG_DIR = osp.join(REPO, 'configs', 'segmentation')
CONFIGS = sorted(osp.basename(p) for p in glob.glob(osp.join(CONFIG_DIR, '*.py')))

# name: (arch, drop_path, lr, num_layers, crop, AMP, params in millions as the paper reports)
RECIPES = {
    'upernet_convnext_t_512_160k_ade20k.py': ('tiny', 0.4, 1e-4, 6, 512, True, 60.24),
    'upernet_convnext_s_512_160k_ade20k.py': ('small', 0.3, 1e-4, 12, 512, True, 81.88),
    'upernet_convnext_b_512_160k_ade20k.py': ('base', 0.4, 1e-4, 12, 512, True, 122.10),
    'upernet_convnext_b_640_160k_in22k_ade20k.py': ('base', 0.4, 1e-4, 12, 640, True, 122.10),
    'upernet_convnext_l_640_160k_in22k_ade20k.py': ('large', 0.4, 1e-4, 12, 640, False, 234.99),
    'upernet_convnext_xl_640_160k_in22k_ade20k.py': ('xlarge', 0.4, 8e-5, 12, 640, False, 391.14),
}


def load(name: str) -> Config:
    return Config.fromfile(osp.join(CONFIG_DIR, name))


def build_on_meta(cfg: Config) -> torch.nn.Module:
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    with torch.device('meta'):
        return MODELS.build(cfg.model)


def test_every_recipe_has_a_config():
    assert set(RECIPES) <= set(CONFIGS), sorted(set(RECIPES) - set(CONFIGS))


@pytest.mark.parametrize('name', CONFIGS)
def test_config_builds(name):
    cfg = load(name)
    assert cfg.default_scope == 'mmseg'
    assert cfg.custom_imports['imports'] == ['convnext_dense']
    model = build_on_meta(cfg)
    assert type(model).__name__ == 'EncoderDecoder'
    assert isinstance(model.backbone, convnext_dense.ConvNeXt)
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader', 'tta_pipeline',
                'tta_model', 'optim_wrapper', 'param_scheduler'):
        assert key in cfg, f'{name} lacks {key}'


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_recipe_matches_the_paper(name):
    arch, drop_path, lr, num_layers, crop, amp, params = RECIPES[name]
    cfg = load(name)
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.arch) == ('convnext_dense.ConvNeXt', arch)
    assert backbone.drop_path_rate == drop_path and backbone.layer_scale_init_value == 1.0
    assert tuple(backbone.out_indices) == (0, 1, 2, 3)
    head, aux = cfg.model.decode_head, cfg.model.auxiliary_head
    assert head.type == 'UPerHead' and list(head.in_index) == [0, 1, 2, 3]
    assert aux.type == 'FCNHead' and aux.in_index == 2 and aux.loss_decode.loss_weight == 0.4
    assert head.num_classes == aux.num_classes == 150
    assert head.norm_cfg.type == 'SyncBN'

    wrapper = cfg.optim_wrapper
    assert wrapper.type == ('AmpOptimWrapper' if amp else 'OptimWrapper')
    assert wrapper.constructor == 'convnext_dense.LearningRateDecayOptimizerConstructor'
    assert wrapper.optimizer.type == 'AdamW' and wrapper.optimizer.lr == lr
    assert wrapper.optimizer.weight_decay == 0.05
    assert dict(wrapper.paramwise_cfg) == dict(decay_rate=0.9, decay_type='stage_wise',
                                               num_layers=num_layers)
    assert cfg.train_cfg.max_iters == 160000
    # 8 GPUs x 2 images
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 16

    assert tuple(cfg.crop_size) == (crop, crop)
    assert cfg.model.test_cfg.mode == 'slide'
    assert tuple(cfg.model.test_cfg.stride) == ((341, 341) if crop == 512 else (426, 426))
    assert cfg.tta_test_cfg.mode == 'whole'
    train = cfg.train_dataloader.dataset
    assert train.type == 'ADE20KDataset' and train.reduce_zero_label
    assert cfg.val_dataloader.dataset.reduce_zero_label
    resize = train.pipeline[2]
    assert tuple(resize.scale) == (4 * crop, crop) and tuple(resize.ratio_range) == (0.5, 2.0)
    tta = cfg.tta_pipeline[1].transforms
    assert [tuple(t.scale) for t in tta[0]] == [
        (int(4 * crop * r), int(crop * r)) for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)]
    assert [t.prob for t in tta[1]] == [0.0, 1.0]


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_parameter_count(name):
    expected = RECIPES[name][-1]
    model = build_on_meta(load(name))
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - expected) < 0.1, f'{name}: {count:.2f}M parameters, paper {expected}M'


def test_schedule_is_the_official_poly_with_warmup():
    """lr(t) = lr * (1 - t/160000) * (1e-6 + (1 - 1e-6) * min(t, 1500) / 1500)."""
    from mmengine.optim.scheduler import LinearLR, PolyLR
    cfg = load('upernet_convnext_t_512_160k_ade20k.py')
    base_lr = cfg.optim_wrapper.optimizer.lr
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    kinds = dict(LinearLR=LinearLR, PolyLR=PolyLR)
    schedulers = []
    for item in cfg.param_scheduler:
        item = dict(item)
        schedulers.append(kinds[item.pop('type')](optimizer, **item))

    def official(t):
        return base_lr * (1 - t / 160000) * (1e-6 + (1 - 1e-6) * min(t, 1500) / 1500)

    # mmengine counts end - begin - 1 steps: warm-up ends at 1500, poly reaches 0 at 160000
    assert [s.total_iters for s in schedulers] == [1500, 160000]
    seen = {}
    for t in range(3001):
        seen[t] = optimizer.param_groups[0]['lr']
        for scheduler in schedulers:
            scheduler.step()
    for t in (0, 1, 2, 750, 1499, 1500, 1501, 3000):
        assert seen[t] == pytest.approx(official(t), rel=1e-9, abs=1e-15), t
