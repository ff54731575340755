"""Synthetic stand-ins for the official trained ConvNeXt COCO / ADE20K checkpoints: the key
layout, tensor shapes and bookkeeping of the real files, with random values.

The layouts are written down here from the official code and configs, independently of our
models, so a test that loads them into our models checks the names, not itself. Sources (read
with the search tools; commit or version given):

- backbone: facebookresearch/ConvNeXt object_detection/mmdet/models/backbones/convnext.py
  (same in semantic_segmentation/backbone/convnext.py): ``downsample_layers.0`` = Sequential(
  Conv2d 4x4, LayerNorm), ``downsample_layers.1-3`` = Sequential(LayerNorm, Conv2d 2x2);
  ``stages.i.j`` = Block(``dwconv`` 7x7 depthwise, ``norm``, ``pwconv1`` / ``pwconv2``
  Linear, ``gamma``); ``norm0``-``norm3`` for all four stages (``range(4)``).
- detection heads: SwinTransformer/Swin-Transformer-Object-Detection at 6a979e2 (the commit
  the official README names), whose mmdet is 2.11.0:
  mmdet/models/necks/fpn.py (``lateral_convs.i`` / ``fpn_convs.i``: ConvModule without norm,
  so ``.conv.weight`` and ``.conv.bias``; num_outs 5 adds a max-pool level, no conv);
  dense_heads/rpn_head.py (``rpn_conv`` 3x3, ``rpn_cls`` 3 anchors x 1 sigmoid class,
  ``rpn_reg`` 3 x 4); roi_heads/bbox_heads/convfc_bbox_head.py (``shared_convs.k``
  ConvModule; with the recipes' SyncBN: ``.conv.weight`` without bias and ``.bn.*``;
  ``shared_fcs.k`` Linear; ``fc_cls`` num_classes + 1; ``fc_reg`` 4 x num_classes as
  reg_class_agnostic=False); mask_heads/fcn_mask_head.py (``convs.k`` ConvModule without
  norm, ``upsample`` ConvTranspose2d 2x2 'deconv', ``conv_logits`` 1x1 to num_classes);
  roi_heads/cascade_roi_head.py (``bbox_head`` and ``mask_head`` are ModuleLists with one
  head per stage; a single mask_head dict is repeated for the 3 stages).
  Configs: object_detection/configs/_base_/models/{cascade_mask_rcnn,mask_rcnn}_convnext_fpn.py
  and the recipes in configs/convnext/ (Cascade: 3 x ConvFCBBoxHead num_shared_convs=4,
  num_shared_fcs=1, SyncBN; Mask R-CNN: Shared2FCBBoxHead; FCNMaskHead num_convs=4).
- segmentation heads: mmsegmentation 0.11.0 (BEiT's semantic_segmentation README pins
  mmcv-full 1.3.0 and mmsegmentation 0.11.0; its wheel was read): decode_heads/uper_head.py
  (``psp_modules`` = PPM: ModuleList of Sequential(AdaptiveAvgPool2d, ConvModule) so
  ``psp_modules.i.1``; ``bottleneck``; ``lateral_convs`` / ``fpn_convs`` for all inputs but
  the last; ``fpn_bottleneck``), decode_heads/decode_head.py (``conv_seg`` 1x1),
  decode_heads/fcn_head.py (``convs`` Sequential; num_convs=1, concat_input=False: no
  ``conv_cat``). Config: semantic_segmentation/configs/_base_/models/upernet_convnext.py
  (channels 512, pool scales 1/2/3/6, SyncBN; FCN aux on stage 2 with 256 channels).
- bookkeeping: mmcv v1.3.0 mmcv/runner/checkpoint.py ``save_checkpoint`` (``meta`` gets
  ``mmcv_version``, ``time``, ``CLASSES``; ``state_dict`` is an OrderedDict with
  ``_metadata``; ``optimizer``), epoch_based_runner.py / iter_based_runner.py (``epoch``,
  ``iter``, then the runner's own meta), hooks/checkpoint.py (``hook_msgs.last_ckpt``);
  Swin-Transformer-Object-Detection tools/train.py (``env_info``, ``config`` = pretty text,
  ``seed``, ``exp_name``; ``checkpoint_config.meta`` = ``mmdet_version``, ``CLASSES``) and
  mmcv_custom/runner/checkpoint.py (adds ``amp`` = apex ``amp.state_dict()``); ConvNeXt
  semantic_segmentation/mmcv_custom/apex_runner/checkpoint.py (no ``amp``: commented out);
  mmseg 0.11 tools/train.py (``mmseg_version``, ``config``, ``CLASSES``, ``PALETTE``).
  torch 1.x saved them with pickle protocol 2, as :func:`write` does.
"""
from collections import OrderedDict
from typing import List, Tuple

import numpy as np
import torch

ARCHS = {'tiny': ([3, 3, 9, 3], [96, 192, 384, 768]), 'small': ([3, 3, 27, 3], [96, 192, 384, 768]),
         'base': ([3, 3, 27, 3], [128, 256, 512, 1024]),
         'large': ([3, 3, 27, 3], [192, 384, 768, 1536]),
         'xlarge': ([3, 3, 27, 3], [256, 512, 1024, 2048])}
Layout = List[Tuple[str, Tuple[int, ...]]]
BN = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')


def backbone(depths, dims) -> Layout:
    keys = [('downsample_layers.0.0.weight', (dims[0], 3, 4, 4)),
            ('downsample_layers.0.0.bias', (dims[0],)),
            ('downsample_layers.0.1.weight', (dims[0],)),
            ('downsample_layers.0.1.bias', (dims[0],))]
    for i in range(1, 4):
        keys += [(f'downsample_layers.{i}.0.weight', (dims[i - 1],)),
                 (f'downsample_layers.{i}.0.bias', (dims[i - 1],)),
                 (f'downsample_layers.{i}.1.weight', (dims[i], dims[i - 1], 2, 2)),
                 (f'downsample_layers.{i}.1.bias', (dims[i],))]
    for i, (depth, dim) in enumerate(zip(depths, dims)):
        for j in range(depth):
            p = f'stages.{i}.{j}.'
            keys += [(p + 'gamma', (dim,)), (p + 'dwconv.weight', (dim, 1, 7, 7)),
                     (p + 'dwconv.bias', (dim,)), (p + 'norm.weight', (dim,)),
                     (p + 'norm.bias', (dim,)), (p + 'pwconv1.weight', (4 * dim, dim)),
                     (p + 'pwconv1.bias', (4 * dim,)), (p + 'pwconv2.weight', (dim, 4 * dim)),
                     (p + 'pwconv2.bias', (dim,))]
    for i, dim in enumerate(dims):
        keys += [(f'norm{i}.weight', (dim,)), (f'norm{i}.bias', (dim,))]
    return [('backbone.' + k, s) for k, s in keys]


def conv_module(prefix, c_out, c_in, k, norm: bool) -> Layout:
    """mmcv ConvModule: ``conv`` (bias only without norm) and ``bn`` (BN / SyncBN)."""
    keys = [(f'{prefix}.conv.weight', (c_out, c_in, k, k))]
    if norm:
        return keys + [(f'{prefix}.bn.{p}', () if p == 'num_batches_tracked' else (c_out,))
                       for p in BN]
    return keys + [(f'{prefix}.conv.bias', (c_out,))]


def fpn(in_channels, out=256) -> Layout:
    keys = []
    for i, c in enumerate(in_channels):
        keys += conv_module(f'neck.lateral_convs.{i}', out, c, 1, False)
    for i in range(len(in_channels)):
        keys += conv_module(f'neck.fpn_convs.{i}', out, out, 3, False)
    return keys


def rpn_head(ch=256, anchors=3) -> Layout:
    return [('rpn_head.rpn_conv.weight', (ch, ch, 3, 3)), ('rpn_head.rpn_conv.bias', (ch,)),
            ('rpn_head.rpn_cls.weight', (anchors, ch, 1, 1)), ('rpn_head.rpn_cls.bias', (anchors,)),
            ('rpn_head.rpn_reg.weight', (anchors * 4, ch, 1, 1)),
            ('rpn_head.rpn_reg.bias', (anchors * 4,))]


def convfc_bbox_head(prefix, num_classes, shared_convs, shared_fcs, ch=256, fc=1024,
                     roi=7) -> Layout:
    keys = []
    for k in range(shared_convs):
        keys += conv_module(f'{prefix}.shared_convs.{k}', ch, ch, 3, True)
    for k in range(shared_fcs):
        keys += [(f'{prefix}.shared_fcs.{k}.weight', (fc, ch * roi * roi if k == 0 else fc)),
                 (f'{prefix}.shared_fcs.{k}.bias', (fc,))]
    return keys + [(f'{prefix}.fc_cls.weight', (num_classes + 1, fc)),
                   (f'{prefix}.fc_cls.bias', (num_classes + 1,)),
                   (f'{prefix}.fc_reg.weight', (4 * num_classes, fc)),
                   (f'{prefix}.fc_reg.bias', (4 * num_classes,))]


def fcn_mask_head(prefix, num_classes, ch=256, convs=4) -> Layout:
    keys = []
    for k in range(convs):
        keys += conv_module(f'{prefix}.convs.{k}', ch, ch, 3, False)
    return keys + [(f'{prefix}.upsample.weight', (ch, ch, 2, 2)),
                   (f'{prefix}.upsample.bias', (ch,)),
                   (f'{prefix}.conv_logits.weight', (num_classes, ch, 1, 1)),
                   (f'{prefix}.conv_logits.bias', (num_classes,))]


def uper_head(in_channels, num_classes, ch=512, pool_scales=(1, 2, 3, 6)) -> Layout:
    p = 'decode_head'
    keys = [(f'{p}.conv_seg.weight', (num_classes, ch, 1, 1)),
            (f'{p}.conv_seg.bias', (num_classes,))]
    for i in range(len(pool_scales)):
        keys += conv_module(f'{p}.psp_modules.{i}.1', ch, in_channels[-1], 1, True)
    keys += conv_module(f'{p}.bottleneck', ch, in_channels[-1] + len(pool_scales) * ch, 3, True)
    for i, c in enumerate(in_channels[:-1]):
        keys += conv_module(f'{p}.lateral_convs.{i}', ch, c, 1, True)
    for i in range(len(in_channels) - 1):
        keys += conv_module(f'{p}.fpn_convs.{i}', ch, ch, 3, True)
    return keys + conv_module(f'{p}.fpn_bottleneck', ch, len(in_channels) * ch, 3, True)


def fcn_aux_head(in_channels, num_classes, ch=256) -> Layout:
    return ([('auxiliary_head.conv_seg.weight', (num_classes, ch, 1, 1)),
             ('auxiliary_head.conv_seg.bias', (num_classes,))]
            + conv_module('auxiliary_head.convs.0', ch, in_channels, 3, True))


def layout(family: str, arch: str = 'tiny', num_classes: int = None) -> Layout:
    """The official key layout of ``family`` ('cascade', 'mask_rcnn', 'upernet')."""
    depths, dims = ARCHS[arch]
    keys = backbone(depths, dims)
    if family == 'upernet':
        num_classes = num_classes or 150
        return keys + uper_head(dims, num_classes) + fcn_aux_head(dims[2], num_classes)
    num_classes = num_classes or 80
    keys += fpn(dims) + rpn_head()
    if family == 'cascade':
        for stage in range(3):
            keys += convfc_bbox_head(f'roi_head.bbox_head.{stage}', num_classes, 4, 1)
        for stage in range(3):
            keys += fcn_mask_head(f'roi_head.mask_head.{stage}', num_classes)
        return keys
    assert family == 'mask_rcnn', family
    return keys + convfc_bbox_head('roi_head.bbox_head', num_classes, 0, 2) + \
        fcn_mask_head('roi_head.mask_head', num_classes)


def tensors(keys: Layout, seed: int = 0) -> 'OrderedDict[str, torch.Tensor]':
    """Distinct random values of a trained model's scale, as mmcv's ``weights_to_cpu(
    get_state_dict(model))`` returns them: an OrderedDict with ``_metadata``. Norm scales
    near 1, layer scales near 0.1, BN running variances positive, ``num_batches_tracked`` int64."""
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, shape in keys:
        if key.endswith('num_batches_tracked'):
            state[key] = torch.tensor(1000 + len(state), dtype=torch.int64)
        elif key.endswith('running_var'):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith('.gamma'):  # layer scale
            state[key] = 0.1 + 0.02 * torch.randn(shape, generator=g)
        elif len(shape) == 1 and key.endswith('.weight'):  # LayerNorm / BN scales
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            state[key] = 0.02 * torch.randn(shape, generator=g)
    state._metadata = OrderedDict((k.rsplit('.', 1)[0], dict(version=1)) for k, _ in keys)
    return state


def _classes(family):
    if family == 'upernet':
        from mmseg.datasets import ADE20KDataset
        meta = ADE20KDataset.METAINFO
        return tuple(meta['classes']), [list(c) for c in meta['palette']]
    from mmdet.datasets import CocoDataset
    return tuple(CocoDataset.METAINFO['classes']), None


def meta(family: str, arch: str = 'tiny') -> dict:
    """The ``meta`` an mmcv 1.x runner wrote for the official run (plain data only)."""
    classes, palette = _classes(family)
    common = dict(env_info='sys.platform: linux\nPython: 3.7.10\nPyTorch: 1.8.0\n'
                           'MMCV: 1.3.1\nMMCV CUDA Compiler: 10.2',
                  seed=0, hook_msgs=dict(last_ckpt='/checkpoint/work_dir/latest.pth'),
                  time='Wed Dec 29 09:03:12 2021', CLASSES=classes)
    if family == 'upernet':
        return dict(common, mmcv_version='1.3.0', mmseg_version='0.11.0+a4a4d6a',
                    config="norm_cfg = dict(type='SyncBN', requires_grad=True)\nmodel = dict(\n"
                           "    type='EncoderDecoder', ...)\n",
                    exp_name=f'upernet_convnext_{arch}_512_160k_ade20k_ss.py', PALETTE=palette,
                    iter=160000, epoch=65)
    return dict(common, mmcv_version='1.3.1', mmdet_version='2.11.0+6a979e2',
                config="model = dict(\n    type='CascadeRCNN', ...)\n",
                exp_name=f'{family}_convnext_{arch}_3x_coco_in1k.py', epoch=36, iter=263844)


def optimizer_state(state_dict, count: int = 3) -> dict:
    """AdamW state as torch 1.8 wrote it (``step`` an int), for the first ``count`` tensors."""
    params = [v for v in state_dict.values() if v.is_floating_point()][:count]
    return dict(state={i: dict(step=263844, exp_avg=torch.zeros_like(p),
                               exp_avg_sq=torch.ones_like(p) * 1e-8)
                       for i, p in enumerate(params)},
                param_groups=[dict(lr=2e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05,
                                   amsgrad=False, initial_lr=2e-4, lr_scale=0.7 ** 7,
                                   params=list(range(len(params))))])


def checkpoint(family: str, arch: str = 'tiny', num_classes: int = None, seed: int = 0) -> dict:
    """A whole official-layout checkpoint: meta, state_dict, optimizer (and apex ``amp`` for
    detection, whose runner saved it)."""
    state = tensors(layout(family, arch, num_classes), seed)
    result = dict(meta=meta(family, arch), state_dict=state, optimizer=optimizer_state(state))
    if family != 'upernet':  # the recipes set no save_best; a run that did stored a NumPy float
        result['amp'] = OrderedDict(loss_scaler0=dict(loss_scale=512.0, unskipped=1523))
        result['meta']['hook_msgs'].update(best_score=np.float64(0.504), best_ckpt='epoch_36.pth')
    return result


def write(path, family: str, arch: str = 'tiny', num_classes: int = None, seed: int = 0) -> dict:
    """:func:`checkpoint` written like torch 1.x (zip format, pickle protocol 2); returns it."""
    result = checkpoint(family, arch, num_classes, seed)
    torch.save(result, str(path), pickle_protocol=2)
    return result
