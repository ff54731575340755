"""Mask2Former on ConvNeXt in mmseg 1.2 (ADE20K semantic segmentation): the T and B recipe
configs build with their parameter counts and the stage-wise decay groups, and the head,
shrunk onto a V2-atto backbone, trains a few iterations on the toy ADE20K-format scenes
through tools/train.py and evaluates through tools/test.py."""
import math
import os.path as osp
import re

import pytest
from mmengine.config import Config

import convnext_dense  # noqa: F401  (registers the convnext_dense scope)
from convnext_dense.datasets.toy import CLASSES
from helpers import (REPO, assert_convnext_recipe, build_on_meta, metric, run_tool,
                     toy_dataset)

CONFIG_DIR = osp.join(REPO, 'configs', 'segmentation')
# config: (arch, pretrain, drop_path, num_layers of the stage-wise decay, crop, parameters)
RECIPES = {
    'mask2former_convnext_t_512_160k_ade20k.py': ('tiny', '1k', 0.4, 6, 512, 47_740_407),
    'mask2former_convnext_b_640_160k_in22k_ade20k.py': ('base', '22k', 0.4, 12, 640,
                                                        107_610_071),
}
DECAY_RATE = 0.9  # the paper's UperNet value, stage_wise


def load(name):
    return Config.fromfile(osp.join(CONFIG_DIR, name))


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_recipe_builds_with_its_parameter_count(name):
    arch, pretrain, drop_path, num_layers, crop, params = RECIPES[name]
    cfg = load(name)
    assert_convnext_recipe(cfg, 'mmseg', arch, pretrain, drop_path)
    model = build_on_meta(cfg)
    assert type(model.decode_head).__name__ == 'Mask2FormerHead'
    assert sum(p.numel() for p in model.parameters()) == params
    assert list(cfg.model.decode_head.in_channels) == model.backbone.dims
    # mmseg 1.2's mask2former_r50_8xb2-160k_ade20k-512x512.py (swin-b ...-640x640.py at 640)
    head = cfg.model.decode_head
    assert (head.num_classes, head.num_queries, head.transformer_decoder.num_layers) == \
        (150, 100, 9)
    assert tuple(cfg.crop_size) == (crop, crop) == tuple(cfg.model.data_preprocessor.size)
    resize = cfg.train_dataloader.dataset.pipeline[2]
    assert (resize.type, resize.resize_type, resize.max_size) == \
        ('RandomChoiceResize', 'ResizeShortestEdge', 4 * crop)
    assert resize.scales == [int(crop * x * 0.1) for x in range(5, 21)]
    assert cfg.train_dataloader.dataset.reduce_zero_label
    assert cfg.model.test_cfg.mode == 'whole'
    assert cfg.train_cfg.max_iters == 160000
    assert cfg.param_scheduler[0].type == 'PolyLR' and cfg.param_scheduler[0].power == 0.9
    wrapper = cfg.optim_wrapper
    assert dict(wrapper.clip_grad) == dict(max_norm=0.01, norm_type=2)
    assert (wrapper.optimizer.lr, wrapper.optimizer.weight_decay) == (1e-4, 0.05)
    assert (wrapper.paramwise_cfg.decay_rate, wrapper.paramwise_cfg.decay_type,
            wrapper.paramwise_cfg.num_layers) == (DECAY_RATE, 'stage_wise', num_layers)


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_stage_wise_decay_groups(name):
    """Stem lr = head lr * 0.9 ** (L - 1), L = num_layers + 2; stage i one step above stage
    i - 1; no weight decay on the query / level embeddings (as mmseg's embed_multi) or norms."""
    from mmengine.optim import build_optim_wrapper
    num_layers = RECIPES[name][3]
    cfg = load(name)
    model = build_on_meta(cfg)
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    group_of = {id(p): group for group in optimizer.param_groups for p in group['params']}
    named = dict(model.named_parameters())
    assert len(group_of) == len(named)
    groups = {name: group_of[id(p)] for name, p in named.items()}
    lr, wd = cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay
    head = groups['decode_head.transformer_decoder.layers.0.ffn.layers.0.0.weight']
    stem = groups['backbone.downsample_layers.0.0.weight']
    assert head['lr'] == pytest.approx(lr) and head['weight_decay'] == wd
    assert stem['lr'] / head['lr'] == pytest.approx(DECAY_RATE ** (num_layers + 1))
    for stage in range(4):
        group = groups[f'backbone.stages.{stage}.0.pwconv1.weight']
        assert group['lr'] == pytest.approx(lr * DECAY_RATE ** (num_layers - stage))
        assert group['weight_decay'] == wd
    assert groups['backbone.stages.3.0.gamma']['weight_decay'] == 0.0
    for embedding in ('query_embed', 'query_feat', 'level_embed'):
        group = groups[f'decode_head.{embedding}.weight']
        assert group['lr'] == pytest.approx(lr) and group['weight_decay'] == 0.0, embedding


# ----------------------------------------------------------------------------- toy run
TOY_CLASSES = ('background',) + CLASSES  # the toy PNGs: 0 background, k = CLASSES[k - 1]
EMBED = 32  # transformer width of the shrunk head (GN with 32 groups still fits)


def toy_mask2former(toy, work):
    """The T recipe on an atto backbone: 8 queries, width 32, 1 encoder and 3 decoder
    layers, 96x96 crops of the 128x96 scenes, 6 classes (background scored, as the seg demo),
    2 iterations of 2 images, then validation."""
    cfg = load('mask2former_convnext_t_512_160k_ade20k.py')
    cfg.model.backbone = dict(type='convnext_dense.ConvNeXt', arch='v2-atto',
                              drop_path_rate=0.0, layer_scale_init_value=None,
                              out_indices=(0, 1, 2, 3), init_cfg=None)
    cfg.model.data_preprocessor.size = (96, 96)
    head = cfg.model.decode_head
    num_classes = len(TOY_CLASSES)
    head.update(in_channels=[40, 80, 160, 320], feat_channels=EMBED, out_channels=EMBED,
                num_queries=8, num_classes=num_classes)
    head.loss_cls.class_weight = [1.0] * num_classes + [0.1]
    encoder = head.pixel_decoder.encoder
    encoder.num_layers = 1
    encoder.layer_cfg.self_attn_cfg.embed_dims = EMBED
    encoder.layer_cfg.ffn_cfg.update(embed_dims=EMBED, feedforward_channels=2 * EMBED)
    head.pixel_decoder.positional_encoding.num_feats = EMBED // 2
    head.positional_encoding.num_feats = EMBED // 2
    decoder = head.transformer_decoder
    decoder.num_layers = 3
    decoder.layer_cfg.self_attn_cfg.embed_dims = EMBED
    decoder.layer_cfg.cross_attn_cfg.embed_dims = EMBED
    decoder.layer_cfg.ffn_cfg.update(embed_dims=EMBED, feedforward_channels=2 * EMBED)
    head.train_cfg.num_points = 256

    train = cfg.train_dataloader.dataset.pipeline
    train[2].update(scales=[96, 112], max_size=160)  # RandomChoiceResize (short side)
    train[3].crop_size = (96, 96)  # RandomCrop
    cfg.val_dataloader.dataset.pipeline[1].scale = (128, 96)  # Resize
    for split, loader in (('training', cfg.train_dataloader), ('validation',
                                                              cfg.val_dataloader)):
        loader.dataset.update(
            type='BaseSegDataset', data_root=str(toy), img_suffix='.jpg',
            seg_map_suffix='.png', reduce_zero_label=False,
            metainfo=dict(classes=TOY_CLASSES),
            data_prefix=dict(img_path=f'images/{split}', seg_map_path=f'annotations/{split}'))
        loader.update(batch_size=2 if split == 'training' else 1, num_workers=0,
                      persistent_workers=False)
    cfg.test_dataloader = cfg.val_dataloader
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=2)
    cfg.default_hooks.checkpoint.interval = 2
    cfg.default_hooks.logger.interval = 1
    path = work / 'toy_mask2former_seg.py'
    cfg.dump(str(path))
    return path


@pytest.mark.slow
def test_toy_run_trains_and_evaluates(tmp_path_factory, tmp_path):
    toy = toy_dataset(tmp_path_factory, 'ade', num_train=4, num_val=2, size=(128, 96))
    config = toy_mask2former(toy, tmp_path)
    work = tmp_path / 'work'
    out = run_tool('train.py', str(config), '--work-dir', str(work), cwd=tmp_path)
    losses = [float(x) for x in re.findall(r'\bloss: (\S+?)\s', out)]
    assert len(losses) == 2 and all(math.isfinite(x) and x > 0 for x in losses), out[-3000:]
    assert re.search(r'\bloss_mask: \S+ .*\bloss_dice: ', out)
    assert re.search(r'Iter\(train\) \[2/2\]', out) and osp.isfile(work / 'iter_2.pth')
    assert 0.0 <= metric(out, 'mIoU') <= 100.0  # the validation after iteration 2
    out = run_tool('test.py', str(config), str(work / 'iter_2.pth'), '--work-dir',
                   str(tmp_path / 'test'), cwd=tmp_path)
    for name in ('aAcc', 'mIoU', 'mAcc'):
        assert 0.0 <= metric(out, name) <= 100.0, name
    for name in TOY_CLASSES:  # the per-class table
        assert re.search(rf'\|\s*{name}\s*\|', out), name
