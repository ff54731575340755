"""Mask2Former (instance segmentation) and DINO (4 scales) on ConvNeXt in mmdet 3.3: the four
recipe configs build with their parameter counts and the layer-decay groups of the rule, and
each head, shrunk onto a V2-atto backbone, trains a few iterations on the toy shapes through
tools/train.py and evaluates through tools/test.py (mmcv's PyTorch path of
MultiScaleDeformableAttention on the CPU)."""
import math
import os.path as osp
import re

import pytest
from mmengine.config import Config

import convnext_dense  # noqa: F401  (registers the convnext_dense scope)
from convnext_dense.datasets.toy import CLASSES
from helpers import (REPO, assert_convnext_recipe, build_on_meta, metric, run_tool,
                     toy_dataset)

CONFIG_DIR = osp.join(REPO, 'configs', 'detection')

# config: (arch, pretrain, drop_path, decay_rate, num_layers, parameters as built)
RECIPES = {
    'mask2former_convnext_t_lsj_50e_coco.py': ('tiny', '1k', 0.4, 0.7, 6, 47_722_417),
    'mask2former_convnext_b_in22k_lsj_50e_coco.py': ('base', '22k', 0.6, 0.8, 12, 107_592_081),
    'dino_4scale_convnext_t_12e_coco.py': ('tiny', '1k', 0.4, 0.7, 6, 48_493_100),
    'dino_4scale_convnext_b_in22k_12e_coco.py': ('base', '22k', 0.6, 0.8, 12, 108_944_332),
}
MASK2FORMER = sorted(name for name in RECIPES if name.startswith('mask2former'))
DINO = sorted(name for name in RECIPES if name.startswith('dino'))
MASK2FORMER_T = 'mask2former_convnext_t_lsj_50e_coco.py'
DINO_T = 'dino_4scale_convnext_t_12e_coco.py'


def load(name):
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    return Config.fromfile(osp.join(CONFIG_DIR, name))


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_recipe_builds_with_its_parameter_count(name):
    arch, pretrain, drop_path, decay_rate, num_layers, params = RECIPES[name]
    cfg = load(name)
    assert_convnext_recipe(cfg, 'mmdet', arch, pretrain, drop_path)
    paramwise = cfg.optim_wrapper.paramwise_cfg
    assert (paramwise.decay_rate, paramwise.decay_type, paramwise.num_layers) == \
        (decay_rate, 'layer_wise', num_layers)
    assert cfg.optim_wrapper.constructor == \
        'convnext_dense.LearningRateDecayOptimizerConstructor'
    model = build_on_meta(cfg)
    assert type(model).__name__ == ('Mask2Former' if name in MASK2FORMER else 'DINO')
    assert sum(p.numel() for p in model.parameters()) == params
    dims = model.backbone.dims
    if name in MASK2FORMER:
        assert list(cfg.model.panoptic_head.in_channels) == dims
        assert model.backbone.out_indices == (0, 1, 2, 3)
    else:
        assert list(cfg.model.neck.in_channels) == dims[1:]
        assert model.backbone.out_indices == (1, 2, 3)


def test_reference_settings():
    """What mmdet 3.3's reference configs set, kept (mask2former_r50_8xb2-lsj-50e_coco.py,
    dino-4scale_r50_8xb2-12e_coco.py)."""
    m2f = load(MASK2FORMER_T)
    assert m2f.train_cfg.max_iters == 368750
    assert m2f.param_scheduler.milestones == [327778, 355092]
    assert dict(m2f.optim_wrapper.clip_grad) == dict(max_norm=0.01, norm_type=2)
    assert (m2f.optim_wrapper.optimizer.lr, m2f.optim_wrapper.optimizer.weight_decay) == \
        (1e-4, 0.05)
    head = m2f.model.panoptic_head
    assert (head.num_queries, head.num_things_classes, head.num_stuff_classes) == (100, 80, 0)
    assert head.transformer_decoder.num_layers == 9
    assert head.pixel_decoder.encoder.num_layers == 6
    assert not m2f.model.test_cfg.panoptic_on and m2f.model.test_cfg.instance_on
    assert [t.type for t in m2f.train_pipeline][2:6] == [
        'RandomFlip', 'RandomResize', 'RandomCrop', 'FilterAnnotations']
    assert tuple(m2f.train_pipeline[3].ratio_range) == (0.1, 2.0)
    assert tuple(m2f.model.data_preprocessor.batch_augments[0].size) == (1024, 1024)
    assert m2f.val_evaluator.metric == ['bbox', 'segm']

    dino = load(DINO_T)
    assert dino.model.num_queries == 900
    assert dino.model.neck.num_outs == 4
    assert dino.model.encoder.layer_cfg.self_attn_cfg.num_levels == 4
    assert dino.model.decoder.layer_cfg.cross_attn_cfg.num_levels == 4
    assert dino.train_cfg.max_epochs == 12 and dino.param_scheduler[0].milestones == [11]
    assert dict(dino.optim_wrapper.clip_grad) == dict(max_norm=0.1, norm_type=2)
    assert (dino.optim_wrapper.optimizer.lr, dino.optim_wrapper.optimizer.weight_decay) == \
        (1e-4, 1e-4)
    assert dino.model.dn_cfg.group_cfg.num_dn_queries == 100
    assert not dino.train_dataloader.dataset.filter_cfg.filter_empty_gt
    assert dino.val_evaluator.metric == 'bbox'


def optimizer_groups(cfg):
    """{parameter name: its param group} of the recipe's optimizer, built on the meta model."""
    from mmengine.optim import build_optim_wrapper
    model = build_on_meta(cfg)
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    group_of = {id(p): group for group in optimizer.param_groups for p in group['params']}
    named = dict(model.named_parameters())
    assert len(group_of) == len(named)  # every parameter in exactly one group
    return {name: group_of[id(p)] for name, p in named.items()}


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_layer_decay_groups(name):
    """Stem lr = head lr * decay_rate ** (L - 1), L = num_layers + 2; the last stage one step
    below the head; no weight decay on norms, biases and (Mask2Former, as its reference) the
    query and level embeddings; DINO's reference decays its embeddings."""
    _, _, _, decay_rate, num_layers, _ = RECIPES[name]
    cfg = load(name)
    lr = cfg.optim_wrapper.optimizer.lr
    wd = cfg.optim_wrapper.optimizer.weight_decay
    groups = optimizer_groups(cfg)
    stem = groups['backbone.downsample_layers.0.0.weight']
    if name in MASK2FORMER:
        head = groups['panoptic_head.transformer_decoder.layers.0.ffn.layers.0.0.weight']
        embeddings = ['panoptic_head.query_embed.weight', 'panoptic_head.query_feat.weight',
                      'panoptic_head.level_embed.weight']
        embedding_wd = 0.0
    else:
        head = groups['bbox_head.cls_branches.0.weight']
        embeddings = ['query_embedding.weight', 'level_embed']
        embedding_wd = wd
    assert head['lr'] == pytest.approx(lr) and head['weight_decay'] == wd
    assert stem['lr'] / head['lr'] == pytest.approx(decay_rate ** (num_layers + 1))
    assert stem['weight_decay'] == wd
    last = groups['backbone.stages.3.0.pwconv1.weight']
    assert last['lr'] == pytest.approx(lr * decay_rate)
    assert groups['backbone.stages.3.0.gamma']['weight_decay'] == 0.0
    assert groups['backbone.norm3.weight']['lr'] == pytest.approx(lr)  # outside the stages
    for embedding in embeddings:
        assert groups[embedding]['lr'] == pytest.approx(lr), embedding
        assert groups[embedding]['weight_decay'] == embedding_wd, embedding


# ----------------------------------------------------------------------------- toy runs
SMALL_BACKBONE = dict(type='convnext_dense.ConvNeXt', arch='v2-atto', drop_path_rate=0.0,
                      layer_scale_init_value=None, init_cfg=None)
ATTO_DIMS = [40, 80, 160, 320]
EMBED = 32  # transformer width of the shrunk heads (GN with 32 groups still fits)


def toy_data(cfg, toy, size):
    """Point the recipe's data at the toy set (its classes, 4 train / 2 val images) and scale
    its train and test resizes / crops down to ``size`` (w, h); one process, no workers."""
    def shrink(transforms):
        for t in transforms:
            if isinstance(t, list):
                shrink(t)
                continue
            if 'transforms' in t:
                shrink(t['transforms'])
            if t.get('type') in ('Resize', 'RandomResize'):
                t['scale'] = size
            if t.get('type') == 'RandomChoiceResize':
                t['scales'] = [size]
            if t.get('type') == 'RandomCrop':
                t['crop_size'] = (size[1], size[0]) if t['crop_type'] == 'absolute' \
                    else (size[1] // 2, size[1])

    for split, loader in (('train', cfg.train_dataloader), ('val', cfg.val_dataloader)):
        shrink(loader.dataset.pipeline)
        loader.dataset.data_root = str(toy)
        loader.dataset.metainfo = dict(classes=CLASSES)
        loader.dataset.ann_file = f'annotations/instances_{split}.json'
        loader.dataset.data_prefix = dict(img=f'{split}/')
        loader.num_workers, loader.persistent_workers = 0, False
    cfg.test_dataloader = cfg.val_dataloader
    cfg.val_evaluator.ann_file = str(toy / 'annotations' / 'instances_val.json')
    cfg.test_evaluator = cfg.val_evaluator
    cfg.default_hooks.logger.interval = 1
    cfg.log_processor.window_size = 1


def toy_mask2former(toy, work):
    """The T recipe on an atto backbone: 8 queries, width 32, 1 encoder and 3 decoder layers,
    128x96 LSJ crops padded to 128x128, 2 iterations of 2 images, then validation."""
    cfg = load(MASK2FORMER_T)
    head = cfg.model.panoptic_head
    cfg.model.backbone = dict(SMALL_BACKBONE, out_indices=(0, 1, 2, 3))
    num_classes = len(CLASSES)
    head.update(in_channels=ATTO_DIMS, feat_channels=EMBED, out_channels=EMBED, num_queries=8,
                num_things_classes=num_classes)
    head.loss_cls.class_weight = [1.0] * num_classes + [0.1]
    cfg.model.panoptic_fusion_head.num_things_classes = num_classes
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
    cfg.model.train_cfg.num_points = 256
    cfg.model.test_cfg.max_per_image = 20
    cfg.model.data_preprocessor.batch_augments[0].size = (128, 128)
    toy_data(cfg, toy, (128, 96))
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=2)
    cfg.default_hooks.checkpoint.interval = 2
    path = work / 'toy_mask2former.py'
    cfg.dump(str(path))
    return path


def toy_dino(toy, work):
    """The T recipe on an atto backbone: 20 queries (10 denoising), 1 encoder and 2 decoder
    layers with 64-wide FFNs, images at most 128x96, 1 epoch of 2 iterations of 2 images. The
    width stays 256: mmdet's DINO decoder encodes reference points in 2 x 256 channels."""
    cfg = load(DINO_T)
    cfg.model.backbone = dict(SMALL_BACKBONE, out_indices=(1, 2, 3))
    cfg.model.neck.in_channels = ATTO_DIMS[1:]
    cfg.model.num_queries = 20
    cfg.model.dn_cfg.group_cfg.num_dn_queries = 10
    cfg.model.encoder.num_layers = 1
    cfg.model.decoder.num_layers = 2
    for layers in (cfg.model.encoder, cfg.model.decoder):
        layers.layer_cfg.ffn_cfg.feedforward_channels = 64
    cfg.model.bbox_head.num_classes = len(CLASSES)
    cfg.model.test_cfg.max_per_img = 20
    toy_data(cfg, toy, (128, 96))
    cfg.train_cfg.max_epochs = 1
    path = work / 'toy_dino.py'
    cfg.dump(str(path))
    return path


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    return toy_dataset(tmp_path_factory, 'coco', num_train=4, num_val=2, size=(128, 96))


def losses(output):
    """Every ``loss: x`` a training log line printed."""
    return [float(x) for x in re.findall(r'\bloss: (\S+?)\s', output)]


@pytest.mark.slow
@pytest.mark.parametrize('head', ['mask2former', 'dino'])
def test_toy_run_trains_and_evaluates(head, toy, tmp_path):
    config = (toy_mask2former if head == 'mask2former' else toy_dino)(toy, tmp_path)
    work = tmp_path / 'work'
    out = run_tool('train.py', str(config), '--work-dir', str(work), cwd=tmp_path)
    found = losses(out)
    assert len(found) == 2 and all(math.isfinite(x) and x > 0 for x in found), out[-3000:]
    if head == 'mask2former':
        assert re.search(r'Iter\(train\) \[2/2\]', out) and osp.isfile(work / 'iter_2.pth')
        checkpoint, names = work / 'iter_2.pth', ('bbox_mAP', 'segm_mAP')
        # the matched masks' losses of the last decoder layer
        assert re.search(r'\bloss_mask: \S+ .*\bloss_dice: ', out)
    else:
        assert re.search(r'Epoch\(train\)\s*\[1\]\[2/2\]', out) and \
            osp.isfile(work / 'epoch_1.pth')
        checkpoint, names = work / 'epoch_1.pth', ('bbox_mAP',)
        assert re.search(r'\bdn_loss_cls: ', out)  # denoising queries were trained
    for name in names:  # the validation after the last iteration
        assert 0.0 <= metric(out, f'coco/{name}') <= 1.0
    out = run_tool('test.py', str(config), str(checkpoint), '--work-dir',
                   str(tmp_path / 'test'), cwd=tmp_path)
    for name in names:
        for suffix in ('', '_50', '_75'):
            assert 0.0 <= metric(out, f'coco/{name}{suffix}') <= 1.0
