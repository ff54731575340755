"""The segmentation configs build, have the paper's parameter counts and the official recipe."""
import glob
import os.path as osp

import pytest
import torch

import convnext_dense  # noqa: F401
from helpers import build_on_meta, v2_backbone_params_from_paper
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

# ConvNeXt V2 UperNet 160k, the paper's ADE20K recipe (arXiv 2301.00808, Appendix A.4; sources
# and the choices it leaves open in each config's header).
# name: (arch, crop, checkpoint, num_layers, paper (Table 7) multi-scale mIoU and params in M;
#        V2-T: not in the paper); all lr 1e-4, stage_wise
#        decay 0.9, drop path 0.4, AMP
V2_IM1K = 'https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_{}_1k_224_ema.pt'
V2_IM22K = 'https://dl.fbaipublicfiles.com/convnext/convnextv2/im22k/convnextv2_{}_22k_384_ema.pt'
V2_RECIPES = {
    'upernet_convnext_v2_t_512_160k_ade20k.py': ('v2-tiny', 512, V2_IM1K, 6, None),
    'upernet_convnext_v2_b_512_160k_ade20k.py': ('v2-base', 512, V2_IM1K, 12, (52.1, 122)),
    'upernet_convnext_v2_l_512_160k_ade20k.py': ('v2-large', 512, V2_IM1K, 12, (53.7, 235)),
    'upernet_convnext_v2_h_512_160k_ade20k.py': ('v2-huge', 512, V2_IM1K, 12, (55.0, 707)),
    'upernet_convnext_v2_h_640_160k_in22k_ade20k.py': ('v2-huge', 640, V2_IM22K, 12,
                                                       (57.0, 707)),
}


def load(name: str) -> Config:
    return Config.fromfile(osp.join(CONFIG_DIR, name))


def test_every_recipe_has_a_config():
    assert set(RECIPES) <= set(CONFIGS), sorted(set(RECIPES) - set(CONFIGS))


def expected_in_channels(head_cfg, channels):
    """What a head reading the maps ``channels`` (one per backbone output) must take: the
    maps its ``in_index`` picks (all of them when it has none)."""
    index = head_cfg.get('in_index', list(range(len(channels))))
    if isinstance(index, int):
        return channels[index]
    return [channels[i] for i in index]


def as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize('name', CONFIGS)
def test_config_builds(name):
    cfg = load(name)
    assert cfg.default_scope == 'mmseg'
    assert cfg.custom_imports['imports'] == ['convnext_dense']
    model = build_on_meta(cfg)
    assert type(model).__name__ == 'EncoderDecoder'
    assert isinstance(model.backbone, convnext_dense.ConvNeXt)
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader', 'optim_wrapper',
                'param_scheduler'):
        assert key in cfg, f'{name} lacks {key}'
    if name.startswith(('upernet', 'demo_upernet')) or 'tta_model' in cfg:
        assert 'tta_pipeline' in cfg and 'tta_model' in cfg, f'{name}: tta_pipeline + tta_model'
    # whatever reads the backbone (a neck, else the decode and auxiliary heads) takes exactly
    # the channels of the maps it outputs
    out_indices = tuple(model.backbone.out_indices)
    channels = [model.backbone.dims[i] for i in out_indices]
    with torch.device('meta'):
        outs = model.backbone(torch.empty(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == channels
    if cfg.model.get('neck') is not None:
        assert as_list(cfg.model.neck.in_channels) == channels
        return
    aux = cfg.model.get('auxiliary_head') or []
    for head in [cfg.model.decode_head] + (list(aux) if isinstance(aux, list) else [aux]):
        assert as_list(head.in_channels) == expected_in_channels(head, channels), head.type


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


def test_every_v2_recipe_has_a_config():
    assert set(V2_RECIPES) <= set(CONFIGS)
    assert set(V2_RECIPES) == {n for n in CONFIGS if n.startswith('upernet_convnext_v2_')}


@pytest.mark.parametrize('name', sorted(V2_RECIPES))
def test_v2_parameter_count(name):
    """The V2 paper's UperNet sizes (rounded to 1M); V2-T, which it does not give: its
    backbone from the paper's classifier table plus the heads of the V1 paper's UperNet T
    (60.24M less ConvNeXt-T's 27.82M; the same channels)."""
    paper = V2_RECIPES[name][4]
    model = build_on_meta(load(name))
    count = sum(p.numel() for p in model.parameters()) / 1e6
    if paper is not None:
        assert abs(count - paper[1]) < 0.5, f'{name}: {count:.3f}M, paper {paper[1]}M'
    else:
        heads = RECIPES['upernet_convnext_t_512_160k_ade20k.py'][6] - 27.82
        expected = v2_backbone_params_from_paper(model.backbone.dims) + heads
        assert abs(count - expected) < 0.06, \
            f'{name}: {count:.3f}M, from the papers {expected:.3f}M'
    block = model.backbone.stages[3][0]  # V2: GRN (1, 1, 1, 4 * dim), no layer-scale gamma
    assert block.gamma is None
    assert block.grn.beta.shape == (1, 1, 1, 4 * model.backbone.dims[3])


@pytest.mark.parametrize('name', sorted(V2_RECIPES))
def test_v2_recipe_settings(name):
    arch, crop, checkpoint, num_layers, paper = V2_RECIPES[name]
    cfg = load(name)
    header = open(osp.join(CONFIG_DIR, name)).read().split('\n_base_')[0]
    if paper is not None:  # the paper's number is in the header
        assert f'multi-scale mIoU {paper[0]}' in header
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.arch, backbone.drop_path_rate) == \
        ('convnext_dense.ConvNeXt', arch, 0.4)
    assert backbone.layer_scale_init_value == 0.0
    assert backbone.init_cfg.checkpoint == checkpoint.format(arch[3:])
    head, aux = cfg.model.decode_head, cfg.model.auxiliary_head
    assert head.type == 'UPerHead' and list(head.in_index) == [0, 1, 2, 3]
    assert aux.type == 'FCNHead' and aux.in_index == 2 and aux.loss_decode.loss_weight == 0.4
    assert head.num_classes == aux.num_classes == 150
    wrapper = cfg.optim_wrapper
    assert wrapper.type == 'AmpOptimWrapper'
    assert wrapper.constructor == 'convnext_dense.LearningRateDecayOptimizerConstructor'
    assert (wrapper.optimizer.type, wrapper.optimizer.lr, wrapper.optimizer.weight_decay) == \
        ('AdamW', 1e-4, 0.05)
    # no grn_weight_decay key: GRN gamma/beta are exempt from weight decay by default
    assert dict(wrapper.paramwise_cfg) == dict(decay_rate=0.9, decay_type='stage_wise',
                                               num_layers=num_layers)
    assert cfg.train_cfg.max_iters == 160000
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 16
    assert tuple(cfg.crop_size) == (crop, crop)
    assert tuple(cfg.model.test_cfg.stride) == ((341, 341) if crop == 512 else (426, 426))
    resize = cfg.train_dataloader.dataset.pipeline[2]
    assert tuple(resize.scale) == (4 * crop, crop) and tuple(resize.ratio_range) == (0.5, 2.0)
    # the paper's multi-scale test: 0.75 .. 1.25 of 2048x512 (x 1.25 at crop 640), plus flip
    assert cfg.tta_test_cfg.mode == 'whole'
    tta = cfg.tta_pipeline[1].transforms
    assert [tuple(t.scale) for t in tta[0]] == [
        (int(4 * crop * r), int(crop * r)) for r in (0.75, 0.875, 1.0, 1.125, 1.25)]
    assert [t.prob for t in tta[1]] == [0.0, 1.0]
    v1 = load('upernet_convnext_t_512_160k_ade20k.py')  # the same schedule as V1
    assert cfg.param_scheduler == v1.param_scheduler
