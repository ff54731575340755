"""The paper's trained dense models (mmcv 1.x files) made loadable by mmengine.

:data:`OFFICIAL_MODELS` names each of facebookresearch/ConvNeXt's COCO and ADE20K models (URL,
our config, the metric it reproduces). Their files were written by mmcv 1.x runners; their
``meta`` holds plain data our weights-only loader reads. Their parameter names are the ones
mmdet 3.3 / mmseg 1.2 use (tests/official_layouts.py writes the layouts down), so no key is
renamed. :func:`adapt_checkpoint`, run by ``load_from``, tools/test.py and ``--resume``
(through :class:`~.fit.CheckpointFitsModelHook`), recognises such a file, drops the old runner
state, logs one report and stops with an error naming the right config when the file does
not fit the model. Details: docs/checkpoints.md.
"""
import re
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch

from ..errors import CheckpointMismatchError, InputError
from .fit import counted, fit_report

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

#: Checkpoint entries of mmcv 1.x runners that have no use outside their training run.
RUNNER_STATE = ('optimizer', 'amp')

# backbone (stem width, blocks in stage 2) -> arch
_ARCH_BY_SHAPE = {(96, 9): 'tiny', (96, 27): 'small', (128, 27): 'base', (192, 27): 'large',
                  (256, 27): 'xlarge'}


# ----------------------------------------------------------------------------- recognition
def old_runner_meta(checkpoint) -> Optional[dict]:
    """``checkpoint['meta']`` when an mmcv 1.x runner wrote the file (its ``mmcv_version``
    is 0.x or 1.x), else None. mmengine's checkpoints carry no ``mmcv_version``.

    Args:
        checkpoint (Any): a loaded checkpoint.

    Returns:
        dict | None: its ``meta``.
    """
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
    None), backbone ``arch`` (or None) and ``num_classes`` (or None).

    Args:
        state_dict (dict): a dense model's state dict.

    Returns:
        dict: ``family``, ``arch`` and ``num_classes``.
    """
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
    """Our configs whose official model has this family and arch.

    Args:
        family (str, optional): 'cascade', 'mask_rcnn' or 'upernet'.
        arch (str, optional): the backbone arch.

    Returns:
        list[str]: config paths relative to configs/.
    """
    return [m.config for m in OFFICIAL_MODELS if m.family == family and m.arch == arch]


def describe(meta: dict, found: dict) -> str:
    """One line about an mmcv 1.x checkpoint: its framework, versions, when, what.

    Args:
        meta (dict): its ``meta``.
        found (dict): what :func:`identify` found.

    Returns:
        str: the description.
    """
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


# ----------------------------------------------------------------------------- loading
def load_report(filename, meta: dict, state_dict, model, limit: int = 10
                ) -> Tuple[str, List[str], List[str]]:
    """The report on loading an official ``state_dict`` into ``model``.

    Args:
        filename (str): the checkpoint, named in the report.
        meta (dict): its mmcv 1.x ``meta``.
        state_dict (dict): its state dict.
        model (nn.Module): the model, possibly wrapped.
        limit (int): how many keys to name per list.

    Returns:
        tuple[str, list[str], list[str]]: the report and the missing and unexpected keys
        (:func:`~.fit.fit_report`).
    """
    fit = fit_report(model, state_dict)
    dtypes = sorted({str(v.dtype).replace('torch.', '') for v in state_dict.values()
                     if hasattr(v, 'dtype')})
    lines = [f'Official ConvNeXt checkpoint {filename}: '
             f'{describe(meta, identify(state_dict))}.',
             f'Mapped {len(state_dict)} tensors ({", ".join(dtypes)}) to this '
             f'{fit.model_name}; 0 renamed (mmdet 2.11 / mmseg 0.11 name these modules as '
             f'mmdet 3.3 / mmseg 1.2 do).',
             counted('missing in the checkpoint', fit.missing, limit) + '; ' +
             counted('unexpected in the checkpoint', fit.unexpected, limit) + '.']
    return '\n'.join(lines), fit.missing, fit.unexpected


def adapt_checkpoint(model, checkpoint: dict, filename, resume: bool = False,
                     logger=None) -> Optional[str]:
    """Make an official mmcv 1.x dense checkpoint loadable by mmengine, in place.

    Any other checkpoint is left as it is. For an official one: ``resume`` is refused (mmcv
    1.x runner state cannot continue under mmengine), the :data:`RUNNER_STATE` entries are
    dropped and the report of :func:`load_report` is logged.

    Args:
        model (nn.Module): the model, possibly wrapped.
        checkpoint (dict): the loaded checkpoint, changed in place.
        filename (str): the checkpoint's path or URL.
        resume (bool): whether the Runner resumes from it.
        logger (logging.Logger, optional): where the report goes (default: mmengine's).

    Returns:
        str | None: the report, or None for a checkpoint that is not an official one.

    Raises:
        ValueError: ``resume``, or a key is missing or unexpected (the config the checkpoint
            belongs to is named).
    """
    meta = old_runner_meta(checkpoint)
    if meta is None or not isinstance(checkpoint.get('state_dict'), dict):
        return None
    found = identify(checkpoint['state_dict'])
    if resume:
        raise InputError(
            f'{filename} was written by an mmcv {meta.get("mmcv_version")} runner '
            f'({describe(meta, found)}); its optimizer and schedule cannot be resumed by '
            f'mmengine. Evaluate it with tools/test.py CONFIG {filename}, or fine-tune from it '
            f'with load_from={filename} (tools/train.py --cfg-options load_from=...).')
    for key in RUNNER_STATE:
        checkpoint.pop(key, None)
    report, missing, unexpected = load_report(filename, meta, checkpoint['state_dict'], model)
    if missing or unexpected:
        configs = matching_configs(found['family'], found['arch'])
        hint = (f'It belongs to configs/{" or configs/".join(configs)}.' if configs else
                'It matches none of our recipes.')
        raise CheckpointMismatchError(
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
    """The plain provenance written into a converted copy (tools/convert_checkpoint.py).

    Args:
        meta (dict): the official checkpoint's ``meta``.
        filename (str): where it came from.

    Returns:
        dict: ``converted_from`` and the ``official`` meta entries kept.
    """
    kept = {k: meta[k] for k in ('mmcv_version', 'mmdet_version', 'mmseg_version', 'time',
                                 'epoch', 'iter', 'exp_name', 'CLASSES', 'PALETTE')
            if k in meta}
    if isinstance(kept.get('CLASSES'), tuple):
        kept['CLASSES'] = list(kept['CLASSES'])
    return dict(converted_from=str(filename), official=kept)
