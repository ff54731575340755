"""The trained COCO and ADE20K models of the official ConvNeXt repository, loaded as they are.

facebookresearch/ConvNeXt publishes 13 trained dense models (Cascade Mask R-CNN T/S/B/L/XL,
Mask R-CNN T; UperNet T/S/B/L/XL): :data:`OFFICIAL_MODELS` names each URL, our config and the
metric it reproduces. They were written by mmcv 1.x runners, not by mmengine:

- detection: Swin-Transformer-Object-Detection (commit 6a979e2: mmdet 2.11.0, mmcv 1.2.4 to
  1.4.0), saved by its ``EpochBasedRunnerAmp``: ``{'meta', 'state_dict', 'optimizer', 'amp'}``;
- segmentation: BEiT's semantic_segmentation (mmseg 0.11.0, mmcv-full 1.3.0), saved by the
  ConvNeXt ``IterBasedRunnerAmp``: ``{'meta', 'state_dict', 'optimizer'}``.

``meta`` holds plain data only: ``mmcv_version`` and ``time`` (str), ``epoch`` / ``iter``
(int), ``env_info`` / ``config`` / ``exp_name`` (str), ``seed`` (int or None),
``mmdet_version`` or ``mmseg_version`` (str), ``CLASSES`` (tuple of str), mmseg's ``PALETTE``
(list of [r, g, b] lists) and ``hook_msgs`` (``last_ckpt`` str; with ``save_best`` also
``best_score``, a float that may be a NumPy scalar, and ``best_ckpt``). ``amp`` is apex's
loss-scaler state, an OrderedDict of ``{'loss_scale': float, 'unskipped': int}``. Our
weights-only loader (:mod:`convnext_dense.compat.safe_checkpoint`) reads all of it.

Key layout: the backbone keys are the official ones, which ours are. The heads of these
recipes (mmdet 2.11 FPN, RPNHead, ConvFCBBoxHead 4conv1fc with SyncBN / Shared2FCBBoxHead,
FCNMaskHead, CascadeRoIHead's per-stage ModuleLists; mmseg 0.11 UPerHead with its PPM, FCNHead)
carry the same parameter names in mmdet 3.3 / mmseg 1.2, so :data:`RENAMES` is empty; the
layouts are written down, with their sources, in tests/official_layouts.py. The mapping stays
one function (:func:`map_state_dict`), so a rename found later is one table entry.

:func:`adapt_checkpoint` is what ``load_from``, tools/test.py and ``--resume`` run (through
:class:`convnext_dense.engine.CheckpointFitsModelHook`): it recognises such a checkpoint, maps
its keys in place, logs one report (what was mapped, missing, unexpected) and stops with an
error naming the config the file belongs to when its layout does not fit the model.
"""
import re
from collections import OrderedDict
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch

_BASE = 'https://dl.fbaipublicfiles.com/convnext'


class OfficialModel(NamedTuple):
    """One trained model of facebookresearch/ConvNeXt (object_detection/README.md,
    semantic_segmentation/README.md)."""
    config: str       # our config, relative to configs/
    family: str       # 'cascade' | 'mask_rcnn' | 'upernet'
    arch: str         # our backbone arch
    url: str
    metric: str       # what it reproduces, as the official README gives it


OFFICIAL_MODELS: Tuple[OfficialModel, ...] = (
    OfficialModel('detection/mask_rcnn_convnext_t_coco.py', 'mask_rcnn', 'tiny',
                  f'{_BASE}/coco/mask_rcnn_convnext_tiny_1k_3x.pth',
                  'box AP 46.2, mask AP 41.7'),
    OfficialModel('detection/cascade_convnext_t_coco.py', 'cascade', 'tiny',
                  f'{_BASE}/coco/cascade_mask_rcnn_convnext_tiny_1k_3x.pth',
                  'box AP 50.4, mask AP 43.7'),
    OfficialModel('detection/cascade_convnext_s_coco.py', 'cascade', 'small',
                  f'{_BASE}/coco/cascade_mask_rcnn_convnext_small_1k_3x.pth',
                  'box AP 51.9, mask AP 45.0'),
    OfficialModel('detection/cascade_convnext_b_coco.py', 'cascade', 'base',
                  f'{_BASE}/coco/cascade_mask_rcnn_convnext_base_1k_3x.pth',
                  'box AP 52.7, mask AP 45.6'),
    OfficialModel('detection/cascade_convnext_b_in22k_coco.py', 'cascade', 'base',
                  f'{_BASE}/coco/cascade_mask_rcnn_convnext_base_22k_3x.pth',
                  'box AP 54.0, mask AP 46.9'),
    OfficialModel('detection/cascade_convnext_l_in22k_coco.py', 'cascade', 'large',
                  f'{_BASE}/coco/cascade_mask_rcnn_convnext_large_22k_3x.pth',
                  'box AP 54.8, mask AP 47.6'),
    OfficialModel('detection/cascade_convnext_xl_in22k_coco.py', 'cascade', 'xlarge',
                  f'{_BASE}/coco/cascade_mask_rcnn_convnext_xlarge_22k_3x.pth',
                  'box AP 55.2, mask AP 47.7'),
    OfficialModel('segmentation/upernet_convnext_t_512_160k_ade20k.py', 'upernet', 'tiny',
                  f'{_BASE}/ade20k/upernet_convnext_tiny_1k_512x512.pth',
                  'mIoU 46.0 single-scale, 46.7 multi-scale + flip'),
    OfficialModel('segmentation/upernet_convnext_s_512_160k_ade20k.py', 'upernet', 'small',
                  f'{_BASE}/ade20k/upernet_convnext_small_1k_512x512.pth',
                  'mIoU 48.7 single-scale, 49.6 multi-scale + flip'),
    OfficialModel('segmentation/upernet_convnext_b_512_160k_ade20k.py', 'upernet', 'base',
                  f'{_BASE}/ade20k/upernet_convnext_base_1k_512x512.pth',
                  'mIoU 49.1 single-scale, 49.9 multi-scale + flip'),
    OfficialModel('segmentation/upernet_convnext_b_640_160k_in22k_ade20k.py', 'upernet', 'base',
                  f'{_BASE}/ade20k/upernet_convnext_base_22k_640x640.pth',
                  'mIoU 52.6 single-scale, 53.1 multi-scale + flip'),
    OfficialModel('segmentation/upernet_convnext_l_640_160k_in22k_ade20k.py', 'upernet',
                  'large', f'{_BASE}/ade20k/upernet_convnext_large_22k_640x640.pth',
                  'mIoU 53.2 single-scale, 53.7 multi-scale + flip'),
    OfficialModel('segmentation/upernet_convnext_xl_640_160k_in22k_ade20k.py', 'upernet',
                  'xlarge', f'{_BASE}/ade20k/upernet_convnext_xlarge_22k_640x640.pth',
                  'mIoU 53.6 single-scale, 54.0 multi-scale + flip'),
)

FAMILIES = {'cascade': 'Cascade Mask R-CNN', 'mask_rcnn': 'Mask R-CNN', 'upernet': 'UperNet'}

#: (pattern, replacement) from mmdet 2.11 / mmseg 0.11 names to mmdet 3.3 / mmseg 1.2 names,
#: applied in order. Empty: every module of the 14 recipes kept its parameter names (see the
#: module docstring and tests/official_layouts.py).
RENAMES: Tuple[Tuple[str, str], ...] = ()

#: Checkpoint entries of mmcv 1.x runners that have no use outside their training run.
RUNNER_STATE = ('optimizer', 'amp')

# backbone (stem width, blocks in stage 2) -> arch
_ARCH_BY_SHAPE = {(96, 9): 'tiny', (96, 27): 'small', (128, 27): 'base', (192, 27): 'large',
                  (256, 27): 'xlarge'}


# ----------------------------------------------------------------------------- recognition
def old_runner_meta(checkpoint) -> Optional[dict]:
    """``checkpoint['meta']`` when an mmcv 1.x runner wrote the file (its ``mmcv_version``
    is 0.x or 1.x), else None. mmengine's checkpoints carry no ``mmcv_version``."""
    if not isinstance(checkpoint, dict):
        return None
    meta = checkpoint.get('meta')
    if not isinstance(meta, dict):
        return None
    version = meta.get('mmcv_version')
    if isinstance(version, str) and re.match(r'^[01]\.', version):
        return meta
    return None


def identify(state_dict: Dict[str, torch.Tensor]) -> dict:
    """What a dense state dict holds: ``family`` ('cascade' / 'mask_rcnn' / 'upernet' or
    None), backbone ``arch`` (or None) and ``num_classes`` (or None)."""
    def rows(key):
        value = state_dict.get(key)
        return int(value.shape[0]) if hasattr(value, 'shape') and value.dim() else None

    family = num_classes = cls_rows = None
    if any(k.startswith('roi_head.bbox_head.0.') for k in state_dict):
        family = 'cascade'
        cls_rows = rows('roi_head.bbox_head.0.fc_cls.weight')
    elif 'roi_head.bbox_head.fc_cls.weight' in state_dict:
        family = 'mask_rcnn'
        cls_rows = rows('roi_head.bbox_head.fc_cls.weight')
    elif 'decode_head.conv_seg.weight' in state_dict:
        family = 'upernet'
        cls_rows = rows('decode_head.conv_seg.weight')
        num_classes = cls_rows
    if family in ('cascade', 'mask_rcnn') and cls_rows:
        num_classes = cls_rows - 1  # the background row
    width = rows('backbone.downsample_layers.0.0.weight')
    blocks = {m.group(1) for m in map(re.compile(r'^backbone\.stages\.2\.(\d+)\.').match,
                                      state_dict) if m}
    arch = _ARCH_BY_SHAPE.get((width, len(blocks)))
    return dict(family=family, arch=arch, num_classes=num_classes)


def matching_configs(family: Optional[str], arch: Optional[str]) -> List[str]:
    """Our configs (relative to configs/) whose official model has this family and arch."""
    return [m.config for m in OFFICIAL_MODELS if m.family == family and m.arch == arch]


def describe(meta: dict, found: dict) -> str:
    """One line about an mmcv 1.x checkpoint: its framework, versions, when, what."""
    framework = next((f'{name} {meta[key]}' for key, name in
                      (('mmdet_version', 'mmdet'), ('mmseg_version', 'mmseg'))
                      if isinstance(meta.get(key), str)), 'mmdet 2.x / mmseg 0.x')
    parts = [f'{framework}, mmcv {meta.get("mmcv_version")}']
    if meta.get('time'):
        parts.append(f'saved {meta["time"]}')
    for key in ('epoch', 'iter'):
        if isinstance(meta.get(key), int):
            parts.append(f'{key} {meta[key]}')
    what = ' '.join(x for x in (FAMILIES.get(found['family']), found['arch'] and
                                f'ConvNeXt-{found["arch"]}') if x) or 'unknown model'
    classes = meta.get('CLASSES')
    count = len(classes) if isinstance(classes, (tuple, list)) else found['num_classes']
    if count:
        what += f', {count} classes'
    return f'{what} ({"; ".join(parts)})'


# ----------------------------------------------------------------------------- mapping
def map_state_dict(state_dict: Dict[str, torch.Tensor]
                   ) -> Tuple['OrderedDict[str, torch.Tensor]', List[Tuple[str, str]]]:
    """The state dict in our key names (tensors untouched, order kept) and the list of
    (old, new) names that :data:`RENAMES` changed."""
    mapped, renamed = OrderedDict(), []
    for key, value in state_dict.items():
        new = key
        for pattern, replacement in RENAMES:
            new = re.sub(pattern, replacement, new)
        if new != key:
            renamed.append((key, new))
        if new in mapped:
            raise ValueError(f'official checkpoint keys {key!r} and another one both map to '
                             f'{new!r}; the file is not an official ConvNeXt dense model')
        mapped[new] = value
    return mapped, renamed


def _unwrap(model):
    from mmengine.model import BaseTTAModel, is_model_wrapper
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def _listed(title: str, keys: List[str], limit: int) -> str:
    shown = ', '.join(keys[:limit]) + (f', ... ({len(keys) - limit} more)'
                                       if len(keys) > limit else '')
    return f'{len(keys)} {title}' + (f': {shown}' if keys else '')


def load_report(filename, meta: dict, state_dict, model, renamed, limit: int = 10
                ) -> Tuple[str, List[str], List[str]]:
    """The report on loading the mapped ``state_dict`` into ``model``, with the lists of
    missing and unexpected keys (BatchNorm ``num_batches_tracked`` never counts as missing)."""
    own = _unwrap(model).state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state_dict if k not in own]
    dtypes = sorted({str(v.dtype).replace('torch.', '') for v in state_dict.values()
                     if hasattr(v, 'dtype')})
    found = identify(state_dict)
    lines = [f'Official ConvNeXt checkpoint {filename}: {describe(meta, found)}.',
             f'Mapped {len(state_dict)} tensors ({", ".join(dtypes)}) to this '
             f'{type(_unwrap(model)).__name__}; ' + (
                 _listed('renamed from the mmdet 2.x / mmseg 0.x names',
                         [f'{a} -> {b}' for a, b in renamed], limit) if renamed else
                 '0 renamed (mmdet 2.11 / mmseg 0.11 name these modules as mmdet 3.3 / '
                 'mmseg 1.2 do)') + '.',
             _listed('missing in the checkpoint', missing, limit) + '; ' +
             _listed('unexpected in the checkpoint', unexpected, limit) + '.']
    return '\n'.join(lines), missing, unexpected


def adapt_checkpoint(model, checkpoint: dict, filename, resume: bool = False,
                     logger=None) -> Optional[str]:
    """Make an official mmcv 1.x dense checkpoint loadable by mmengine, in place.

    Returns None (and changes nothing) for any other checkpoint. Otherwise: refuses
    ``resume`` (mmcv 1.x runner state cannot continue under mmengine), replaces
    ``checkpoint['state_dict']`` by :func:`map_state_dict`'s result, drops the
    :data:`RUNNER_STATE` entries, logs the report of :func:`load_report` and returns it.
    Raises ``ValueError`` with that report when a key is missing or unexpected, naming the
    config the checkpoint belongs to.
    """
    meta = old_runner_meta(checkpoint)
    if meta is None or not isinstance(checkpoint.get('state_dict'), dict):
        return None
    found = identify(checkpoint['state_dict'])
    if resume:
        raise ValueError(
            f'{filename} was written by an mmcv {meta.get("mmcv_version")} runner '
            f'({describe(meta, found)}); its optimizer and schedule cannot be resumed by '
            f'mmengine. Evaluate it with tools/test.py CONFIG {filename}, or fine-tune from it '
            f'with load_from={filename} (tools/train.py --cfg-options load_from=...).')
    mapped, renamed = map_state_dict(checkpoint['state_dict'])
    checkpoint['state_dict'] = mapped
    for key in RUNNER_STATE:
        checkpoint.pop(key, None)
    report, missing, unexpected = load_report(filename, meta, mapped, model, renamed)
    if missing or unexpected:
        configs = matching_configs(found['family'], found['arch'])
        hint = (f'It belongs to configs/{" or configs/".join(configs)}.' if configs else
                'It matches none of our recipes.')
        raise ValueError(
            f'{report}\nThe checkpoint\'s layout does not fit this model. {hint} Give the '
            f'config of that recipe; to reuse only its backbone, convert it with '
            f'tools/convert_checkpoint.py {filename} OUT --mode backbone and set '
            f'model.backbone.init_cfg.checkpoint=OUT.')
    if logger is None:
        from mmengine.logging import MMLogger
        logger = MMLogger.get_current_instance()
    logger.info(report)
    return report


def converted_meta(meta: dict, filename) -> dict:
    """The plain provenance written into a converted copy (tools/convert_checkpoint.py)."""
    kept = {k: meta[k] for k in ('mmcv_version', 'mmdet_version', 'mmseg_version', 'time',
                                 'epoch', 'iter', 'exp_name', 'CLASSES', 'PALETTE')
            if k in meta}
    if isinstance(kept.get('CLASSES'), tuple):
        kept['CLASSES'] = list(kept['CLASSES'])
    return dict(converted_from=str(filename), official=kept)
