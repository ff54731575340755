"""Export-time modules for whole two-stage detectors (mmdet ``MaskRCNN`` / ``CascadeRCNN`` with
an FCN mask head), built from a trained model's weights, and the post-processing shared by the
export check and the ONNX evaluation path.

mmdet's own predict path does not export (see ``DETECTOR_BLOCKERS`` in :mod:`.onnx_export`):
:class:`ExportableTwoStageDetector` re-states the test-time computation with tensor operations
that the TorchScript exporter lowers to standard ONNX operators (opset 17): anchors from the
feature-map shapes (dynamic height and width), per-level top-k and NMS of the RPN
(``NonMaxSuppression``), multi-level ``RoiAlign`` (torchvision's, half-pixel = mmcv's
``aligned=True``), every cascade stage's box head (the trained modules themselves), per-class
NMS by coordinate offsets (or mmcv's soft-NMS, as ``max_per_img`` unrolled steps), and the mask
head(s). Box counts are padded to the config's
``test_cfg.rcnn.max_per_img`` so that every output has a fixed size.

Graph input: ``input`` (N, 3, H, W) float32, normalised and padded as the config's
``data_preprocessor`` makes it. N is fixed at export (the tool exports N = 1); H and W are
dynamic. Outputs, per image (P = ``max_per_img``):

- ``boxes`` (N, P, 4) float32 x1, y1, x2, y2 in input-image pixels (clipped to H x W);
- ``scores`` (N, P) float32; ``labels`` (N, P) int64; rows ``>= num_valid`` are zeros;
- ``num_valid`` (N,) int64: how many rows are detections;
- ``masks`` (N, P, M, M) float32: mask probabilities at the mask head's resolution (M = 28),
  the channel of each detection's class (the mean over the stages' heads for a cascade).

Difference to mmdet: mmdet clips boxes to the unpadded resized image (``img_shape``), the graph
to the padded input; they agree when no padding was added (the tools check and evaluate so).
"""
import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UnsupportedError

WH_RATIO_CLIP = 16 / 1000  # mmdet's decode default; no head or config changes it
SOFT_NMS_METHODS = frozenset({'linear', 'gaussian', 'naive'})  # mmcv's soft_nms methods
OUTPUT_NAMES = ('boxes', 'scores', 'labels', 'num_valid', 'masks')
SUPPORTED = ('MaskRCNN (StandardRoIHead) and CascadeRCNN (CascadeRoIHead) with RPNHead, '
             'SingleRoIExtractor + RoIAlign, BBoxHead / ConvFCBBoxHead with '
             'DeltaXYWHBBoxCoder and softmax classification, FCNMaskHead')


# ----------------------------------------------------------------------------- checks
def _fail(config: str, what: str) -> None:
    raise UnsupportedError(f'{config}: {what}; whole-detector ONNX export supports '
                           f'{SUPPORTED}.')


def check_detector(detector: nn.Module, config: str = 'the config') -> None:
    """Raise :class:`~convnext_dense.errors.UnsupportedError` naming the part when ``detector``
    (a built mmdet model) is not a Mask R-CNN / Cascade Mask R-CNN that
    :class:`ExportableTwoStageDetector` reproduces."""
    from mmdet.models.dense_heads import RPNHead
    from mmdet.models.roi_heads import CascadeRoIHead, StandardRoIHead
    from mmdet.models.roi_heads.bbox_heads import BBoxHead
    from mmdet.models.roi_heads.mask_heads import FCNMaskHead
    from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
    from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
    name = type(detector).__name__
    roi_head = getattr(detector, 'roi_head', None)
    if type(getattr(detector, 'rpn_head', None)) is not RPNHead or roi_head is None:
        _fail(config, f'model {name} has no RPNHead + RoI head (model.rpn_head / '
              f'model.roi_head)')
    if type(roi_head) not in (StandardRoIHead, CascadeRoIHead):
        _fail(config, f'model.roi_head is {type(roi_head).__name__}')
    if not roi_head.with_mask:
        _fail(config, 'model.roi_head has no mask_head')
    if not detector.rpn_head.use_sigmoid_cls:
        _fail(config, 'model.rpn_head.loss_cls must use a sigmoid (use_sigmoid=True)')
    cascade = type(roi_head) is CascadeRoIHead
    bbox_heads = list(roi_head.bbox_head) if cascade else [roi_head.bbox_head]
    mask_heads = list(roi_head.mask_head) if cascade else [roi_head.mask_head]
    extractors = (list(roi_head.bbox_roi_extractor) if cascade else
                  [roi_head.bbox_roi_extractor])
    if not getattr(roi_head, 'share_roi_extractor', False):
        extractors += (list(roi_head.mask_roi_extractor) if cascade else
                       [roi_head.mask_roi_extractor])
    coders = [detector.rpn_head.bbox_coder] + [head.bbox_coder for head in bbox_heads]
    for head in bbox_heads:
        if not isinstance(head, BBoxHead) or head.custom_cls_channels or head.with_cls is False \
                or head.loss_cls.use_sigmoid:
            _fail(config, f'model.roi_head.bbox_head {type(head).__name__} (needs softmax '
                  f'classification and box regression)')
    for head in mask_heads:
        if type(head) is not FCNMaskHead:
            _fail(config, f'model.roi_head.mask_head is {type(head).__name__}')
    for coder in coders:
        if type(coder) is not DeltaXYWHBBoxCoder or coder.add_ctr_clamp:
            _fail(config, f'bbox_coder {type(coder).__name__} (add_ctr_clamp='
                  f'{getattr(coder, "add_ctr_clamp", None)})')
    for extractor in extractors:
        layer = extractor.roi_layers[0]
        if type(extractor) is not SingleRoIExtractor or type(layer).__name__ != 'RoIAlign' \
                or layer.pool_mode != 'avg':
            _fail(config, f'RoI extractor {type(extractor).__name__} with '
                  f'{type(layer).__name__} (needs SingleRoIExtractor + RoIAlign, avg pooling)')
    test_cfg = detector.test_cfg
    for stage, types in (('rpn', ('nms',)), ('rcnn', ('nms', 'soft_nms'))):
        nms = (test_cfg or {}).get(stage, {}).get('nms', {})
        if nms.get('type', 'nms') not in types:
            _fail(config, f'model.test_cfg.{stage}.nms.type is {nms.get("type")!r} (needs '
                  f'{" or ".join(map(repr, types))})')
        if nms.get('method', 'linear') not in SOFT_NMS_METHODS:
            _fail(config, f'model.test_cfg.{stage}.nms.method is {nms.get("method")!r} (needs '
                  f'one of {sorted(SOFT_NMS_METHODS)})')
    if test_cfg.rcnn.get('max_per_img', 0) <= 0:
        _fail(config, 'model.test_cfg.rcnn.max_per_img must be > 0 (the fixed output size)')


# ----------------------------------------------------------------------------- tensor helpers
def _decode(priors: torch.Tensor, deltas: torch.Tensor, coder, height: torch.Tensor,
            width: torch.Tensor) -> torch.Tensor:
    """Apply (K, 4) or (K, C, 4) ``deltas`` of a DeltaXYWHBBoxCoder to (K, 4) ``priors``
    (x1, y1, x2, y2 pixels): denormalise with the coder's means / stds, clamp the log size
    change to |log(16 / 1000)| (the ``wh_ratio_clip`` mmdet's heads decode with), clip to
    [0, width] x [0, height] when the coder clips.
    Returns boxes shaped like ``deltas``."""
    means = deltas.new_tensor(coder.means)
    stds = deltas.new_tensor(coder.stds)
    deltas = deltas * stds + means
    if deltas.dim() == 3:
        priors = priors[:, None, :]
    centre = (priors[..., :2] + priors[..., 2:]) * 0.5
    size = priors[..., 2:] - priors[..., :2]
    limit = abs(math.log(WH_RATIO_CLIP))
    new_centre = centre + size * deltas[..., :2]
    new_size = size * deltas[..., 2:].clamp(min=-limit, max=limit).exp()
    boxes = torch.cat([new_centre - new_size * 0.5, new_centre + new_size * 0.5], dim=-1)
    if coder.clip_border:
        upper = torch.stack([width, height, width, height])
        boxes = torch.minimum(torch.clamp(boxes, min=0), upper)
    return boxes


def _shift_groups_apart(boxes: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """(K, 4) boxes of group g shifted by g * (max coordinate + 1), so that boxes of different
    groups never overlap (mmcv's batched_nms does the same)."""
    top = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()  # safe when empty
    return boxes + (groups.to(boxes.dtype) * (top + 1))[:, None]


def _nms_by_group(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor,
                  iou: float) -> torch.Tensor:
    """Indices kept by NMS run separately per group (level or class), by score, descending:
    one ``torchvision.ops.nms`` (ONNX NonMaxSuppression) on :func:`_shift_groups_apart`."""
    from torchvision.ops import nms
    return nms(_shift_groups_apart(boxes, groups), scores, iou)


def _soft_nms_by_group(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor,
                       size: int, iou_threshold: float, method: str = 'linear',
                       sigma: float = 0.5, min_score: float = 1e-3
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mmcv's ``soft_nms`` as mmdet's ``batched_nms`` runs it (groups shifted apart by
    :func:`_shift_groups_apart`), for the first ``size`` picks, in a fixed number of steps.

    Each step picks the highest remaining score; the others' scores are multiplied by
    ``1 - IoU`` where IoU >= ``iou_threshold`` ('linear'), by ``exp(-IoU^2 / sigma)``
    ('gaussian') or by 0 where IoU >= ``iou_threshold`` ('naive'), and boxes whose score
    fell below ``min_score`` are dropped. Picks come out in descending score, so the first
    ``size`` of them are mmdet's ``max_per_img`` detections.

    Returns:
        index (size,) int64 into ``boxes``, the decayed scores (size,) and valid flags (size,)
        bool; rows after the last valid one are 0.
    """
    shifted = _shift_groups_apart(boxes, groups)
    # one dummy row (never alive) so that an image without candidates still has an argmax
    shifted = torch.cat([shifted, shifted.new_zeros(1, 4)])
    current = torch.cat([scores, scores.new_zeros(1)])
    alive = torch.cat([torch.ones_like(scores, dtype=torch.bool),
                       torch.zeros(1, dtype=torch.bool)])
    x1, y1, x2, y2 = shifted.unbind(dim=1)
    areas = (x2 - x1) * (y2 - y1)
    positions = torch.ones_like(current, dtype=torch.long).cumsum(0) - 1
    picks, picked_scores, valid = [], [], []
    for _ in range(size):  # unrolled at export: size = max_per_img steps
        masked = torch.where(alive, current, torch.full_like(current, float('-inf')))
        pick = masked.argmax()
        picks.append(pick)
        picked_scores.append(current[pick])
        valid.append(alive[pick])
        width = (torch.minimum(x2, x2[pick]) - torch.maximum(x1, x1[pick])).clamp(min=0)
        height = (torch.minimum(y2, y2[pick]) - torch.maximum(y1, y1[pick])).clamp(min=0)
        inter = width * height
        iou = inter / (areas[pick] + areas - inter)
        if method == 'gaussian':
            weight = torch.exp(-(iou * iou) / sigma)
        else:
            overlapping = iou >= iou_threshold
            decayed = (1 - iou) if method == 'linear' else torch.zeros_like(iou)
            weight = torch.where(overlapping, decayed, torch.ones_like(iou))
        current = current * weight
        alive = alive & (positions != pick) & (current >= min_score)
    valid = torch.stack(valid)
    index = torch.where(valid, torch.stack(picks), torch.zeros_like(valid, dtype=torch.long))
    picked_scores = torch.stack(picked_scores)
    return index, torch.where(valid, picked_scores, torch.zeros_like(picked_scores)), valid


def _extract(extractor, feats: Sequence[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
    """RoI features (K, C, S, S) of (K, 4) boxes of one image from its FPN maps (1, C, h, w),
    as mmdet's SingleRoIExtractor: level floor(log2(sqrt(area) / finest_scale + 1e-6)),
    clamped to the levels; torchvision RoIAlign (half-pixel when aligned, adaptive sampling
    when sampling_ratio is 0, average)."""
    from torchvision.ops import roi_align
    levels = len(extractor.featmap_strides)
    side = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    target = torch.floor(torch.log2(side / extractor.finest_scale + 1e-6)).clamp(0, levels - 1)
    rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)
    outs, order = [], []
    for level in range(levels):
        index = torch.nonzero(target == level).reshape(-1)
        layer = extractor.roi_layers[level]
        outs.append(roi_align(feats[level], rois[index], layer.output_size,
                              layer.spatial_scale, layer.sampling_ratio, layer.aligned))
        order.append(index)
    return torch.cat(outs)[torch.argsort(torch.cat(order))]


def _pad(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """The first ``size`` rows of ``tensor``, zero rows appended when it has fewer."""
    filler = tensor.new_zeros((size,) + tuple(tensor.shape[1:]))
    return torch.cat([tensor[:size], filler])[:size]


# ----------------------------------------------------------------------------- the module
class ExportableTwoStageDetector(nn.Module):
    """(N, 3, H, W) normalised images -> boxes, scores, labels, num_valid, masks (see the module
    docstring) of a trained mmdet MaskRCNN / CascadeRCNN, sharing its modules (weights).

    Args:
        detector: the built mmdet detector in eval mode (checked by :func:`check_detector`).
        config: the config's path, for error messages.
    """

    def __init__(self, detector: nn.Module, config: str = 'the config'):
        super().__init__()
        from mmdet.models.roi_heads import CascadeRoIHead
        check_detector(detector, config)
        self.detector = detector
        roi_head = detector.roi_head
        self.cascade = type(roi_head) is CascadeRoIHead
        as_list = (lambda m: list(m)) if self.cascade else (lambda m: [m])
        self.bbox_heads = as_list(roi_head.bbox_head)
        self.bbox_extractors = as_list(roi_head.bbox_roi_extractor)
        self.mask_heads = as_list(roi_head.mask_head)
        self.mask_extractors = (self.bbox_extractors if roi_head.share_roi_extractor else
                                as_list(roi_head.mask_roi_extractor))
        self.rpn_cfg = dict(detector.test_cfg.rpn)
        self.rcnn_cfg = dict(detector.test_cfg.rcnn)
        generator = detector.rpn_head.prior_generator
        if generator.center_offset != 0:
            _fail(config, 'the RPN anchor generator has center_offset != 0')
        self.strides = [tuple(float(s) for s in stride) for stride in generator.strides]
        for level, anchors in enumerate(generator.base_anchors):
            self.register_buffer(f'base_anchors{level}', anchors.clone(), persistent=False)

    # -- RPN
    def _proposals(self, cls_maps: List[torch.Tensor], reg_maps: List[torch.Tensor],
                   height: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
        """Proposals (K, 4) of one image from its RPN maps (A, h, w) and (4A, h, w)."""
        cfg = self.rpn_cfg
        nms_pre = int(cfg.get('nms_pre', -1))
        all_scores, all_deltas, all_priors, all_levels = [], [], [], []
        for level, (cls_map, reg_map) in enumerate(zip(cls_maps, reg_maps)):
            scores = cls_map.permute(1, 2, 0).reshape(-1).sigmoid()
            deltas = reg_map.permute(1, 2, 0).reshape(-1, 4)
            # anchors: base anchors shifted to every map position, row-major, anchors inner
            stride_w, stride_h = self.strides[level]
            xs = (torch.ones_like(cls_map[0, 0, :]).cumsum(0) - 1) * stride_w
            ys = (torch.ones_like(cls_map[0, :, 0]).cumsum(0) - 1) * stride_h
            shift_x = xs[None, :].expand(ys.shape[0], xs.shape[0]).reshape(-1)
            shift_y = ys[:, None].expand(ys.shape[0], xs.shape[0]).reshape(-1)
            shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=1)
            priors = (getattr(self, f'base_anchors{level}')[None] + shifts[:, None]).reshape(-1, 4)
            if nms_pre > 0:  # top nms_pre by score; nms_pre dummies (score -1) keep k valid
                scores = torch.cat([scores, scores.new_full((nms_pre,), -1.0)])
                deltas = torch.cat([deltas, deltas.new_zeros(nms_pre, 4)])
                priors = torch.cat([priors, priors.new_zeros(nms_pre, 4)])
                scores, index = scores.topk(nms_pre)
                deltas, priors = deltas[index], priors[index]
            all_scores.append(scores)
            all_deltas.append(deltas)
            all_priors.append(priors)
            all_levels.append(torch.full_like(scores, level))
        scores, levels = torch.cat(all_scores), torch.cat(all_levels)
        boxes = _decode(torch.cat(all_priors), torch.cat(all_deltas),
                        self.detector.rpn_head.bbox_coder, height, width)
        keep = scores >= 0
        min_size = cfg.get('min_bbox_size', -1)
        if min_size >= 0:
            keep = keep & (boxes[:, 2] - boxes[:, 0] > min_size) \
                & (boxes[:, 3] - boxes[:, 1] > min_size)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        kept = _nms_by_group(boxes, scores, levels, cfg['nms']['iou_threshold'])
        return boxes[kept[:int(cfg['max_per_img'])]]

    # -- RoI heads
    def _detections(self, feats: List[torch.Tensor], proposals: torch.Tensor,
                    height: torch.Tensor, width: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Boxes (P, 4), scores (P,), labels (P,), valid flags (P,) of one image."""
        rois = proposals
        logits_sum = 0
        for stage, (head, extractor) in enumerate(zip(self.bbox_heads, self.bbox_extractors)):
            cls_score, bbox_pred = head(_extract(extractor, feats, rois))
            logits_sum = logits_sum + cls_score
            if stage < len(self.bbox_heads) - 1:  # refine with the stage's top non-bg class
                label = cls_score[:, :-1].argmax(dim=1)
                deltas = bbox_pred.reshape(bbox_pred.shape[0], -1, 4)
                if not head.reg_class_agnostic:
                    deltas = torch.gather(deltas, 1, label[:, None, None].expand(-1, 1, 4))
                rois = _decode(rois, deltas, head.bbox_coder, height, width)[:, 0]
        head = self.bbox_heads[-1]
        num_classes = head.num_classes
        scores = F.softmax(logits_sum / len(self.bbox_heads), dim=-1)[:, :-1]  # (K, C)
        boxes = _decode(rois, bbox_pred.reshape(bbox_pred.shape[0], -1, 4), head.bbox_coder,
                        height, width)
        boxes = boxes.expand(-1, num_classes, 4).reshape(-1, 4)
        labels = torch.zeros_like(scores, dtype=torch.long) + torch.arange(num_classes)
        scores, labels = scores.reshape(-1), labels.reshape(-1)
        keep = scores > self.rcnn_cfg['score_thr']
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        nms = self.rcnn_cfg['nms']
        size = int(self.rcnn_cfg['max_per_img'])
        if nms.get('type', 'nms') == 'soft_nms':
            index, scores, valid = _soft_nms_by_group(
                boxes, scores, labels, size, nms['iou_threshold'], nms.get('method', 'linear'),
                nms.get('sigma', 0.5), nms.get('min_score', 1e-3))
            flags = valid.to(scores.dtype)
            boxes = torch.cat([boxes, boxes.new_zeros(1, 4)])[index] * flags[:, None]
            labels = torch.cat([labels, labels.new_zeros(1)])[index] * valid.long()
            return boxes, scores, labels, flags
        kept = _nms_by_group(boxes, scores, labels, nms['iou_threshold'])[:size]
        valid = _pad(torch.ones_like(scores[kept]), size)
        return (_pad(boxes[kept], size), _pad(scores[kept], size), _pad(labels[kept], size),
                valid)

    def _masks(self, feats: List[torch.Tensor], boxes: torch.Tensor,
               labels: torch.Tensor) -> torch.Tensor:
        """Mask probabilities (P, M, M) of each box's class, averaged over the mask heads."""
        total = 0
        for head, extractor in zip(self.mask_heads, self.mask_extractors):
            logits = head(_extract(extractor, feats, boxes))  # (P, C or 1, M, M)
            index = torch.zeros_like(labels) if head.class_agnostic else labels
            index = index[:, None, None, None].expand(-1, 1, logits.shape[2], logits.shape[3])
            total = total + torch.gather(logits, 1, index)[:, 0].sigmoid()
        return total / len(self.mask_heads)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(N, 3, H, W) -> boxes (N, P, 4), scores (N, P), labels (N, P) int64, num_valid (N,)
        int64, masks (N, P, M, M) (see the module docstring)."""
        height = torch.ones_like(images[0, 0, :, 0]).sum()
        width = torch.ones_like(images[0, 0, 0, :]).sum()
        feats = list(self.detector.extract_feat(images))
        cls_maps, reg_maps = self.detector.rpn_head(feats)
        outputs = []
        for i in range(images.shape[0]):  # unrolled: N is fixed at export
            own = [f[i:i + 1] for f in feats]
            proposals = self._proposals([m[i] for m in cls_maps], [m[i] for m in reg_maps],
                                        height, width)
            boxes, scores, labels, valid = self._detections(own, proposals, height, width)
            masks = self._masks(own, boxes, labels)
            outputs.append((boxes, scores, labels, valid.sum().long(), masks))
        return tuple(torch.stack(list(column)) for column in zip(*outputs))


# ----------------------------------------------------------------------------- post-processing
def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int,
                threshold: float = 0.5) -> torch.Tensor:
    """Paste (K, M, M) mask probabilities into (K, height, width) boolean image masks.

    Each mask is resampled bilinearly (``grid_sample``, pixel centres, zeros outside) over the
    pixels from floor(x1) - 1 to ceil(x2) + 1 (and y alike) around its box, the other pixels
    stay empty; then thresholded (``>= threshold``), as mmdet's FCNMaskHead does on the CPU.

    Args:
        masks: (K, M, M) float probabilities.
        boxes: (K, 4) x1, y1, x2, y2 in the pixels of the target image.
        height / width: target image size.
        threshold: the config's ``test_cfg.rcnn.mask_thr_binary``.

    Returns:
        (K, height, width) bool.
    """
    out = torch.zeros(masks.shape[0], height, width, dtype=torch.bool)
    for k in range(masks.shape[0]):
        x0, y0, x1, y1 = (float(v) for v in boxes[k])
        left, top = max(int(math.floor(x0)) - 1, 0), max(int(math.floor(y0)) - 1, 0)
        right = min(int(math.ceil(x1)) + 1, width)
        bottom = min(int(math.ceil(y1)) + 1, height)
        if right <= left or bottom <= top:
            continue
        xs = (torch.arange(left, right, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
        ys = (torch.arange(top, bottom, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
        xs = torch.nan_to_num(xs, nan=0.0, posinf=0.0, neginf=0.0)  # zero-width boxes
        ys = torch.nan_to_num(ys, nan=0.0, posinf=0.0, neginf=0.0)
        grid = torch.stack([xs[None, :].expand(len(ys), -1), ys[:, None].expand(-1, len(xs))],
                           dim=-1)
        pasted = F.grid_sample(masks[k][None, None].float(), grid[None], align_corners=False)
        out[k, top:bottom, left:right] = pasted[0, 0] >= threshold
    return out


def detections_to_sample(outputs: Sequence[np.ndarray], index: int, img_meta: Dict,
                         mask_thr_binary: float = 0.5):
    """Image ``index`` of the graph's outputs as an mmdet ``DetDataSample`` whose
    ``pred_instances`` (bboxes (n, 4), scores, labels, masks (n, h, w) bool) are in the
    original image's pixels, the form mmdet's CocoMetric reads.

    Boxes are divided by ``img_meta['scale_factor']`` (w, h) (undoing the test-time resize);
    masks are pasted at those boxes into ``img_meta['ori_shape']`` with
    :func:`paste_masks`.

    Args:
        outputs: the five graph outputs (boxes, scores, labels, num_valid, masks), numpy.
        index: which image of the batch.
        img_meta: the image's meta (``ori_shape``, ``scale_factor``, ``img_id`` ...).
        mask_thr_binary: the config's ``test_cfg.rcnn.mask_thr_binary``.

    Returns:
        ``mmdet.structures.DetDataSample`` with ``pred_instances`` and the meta.
    """
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    boxes, scores, labels, num_valid, masks = (np.asarray(o) for o in outputs)
    count = int(num_valid[index])
    bboxes = torch.from_numpy(boxes[index, :count].astype(np.float32))
    scale = img_meta.get('scale_factor', (1.0, 1.0))
    bboxes = bboxes / bboxes.new_tensor([scale[0], scale[1], scale[0], scale[1]])
    height, width = img_meta['ori_shape'][:2]
    instances = InstanceData()
    instances.bboxes = bboxes
    instances.scores = torch.from_numpy(scores[index, :count].astype(np.float32))
    instances.labels = torch.from_numpy(labels[index, :count].astype(np.int64))
    instances.masks = paste_masks(torch.from_numpy(masks[index, :count]), bboxes, int(height),
                                  int(width), mask_thr_binary)
    sample = DetDataSample(metainfo=img_meta)
    sample.pred_instances = instances
    return sample


def build_export_detector(cfg, model: nn.Module, config: str = 'the config'
                          ) -> Tuple[nn.Module, List[str]]:
    """The module to export for a detection config's whole model and its output names; the
    model is deep-copied so the caller's stays untouched."""
    import copy
    module = ExportableTwoStageDetector(copy.deepcopy(model).eval(), config)
    return module.eval(), list(OUTPUT_NAMES)


def has_rpn_and_mask_head(model_cfg) -> bool:
    """Whether a ``cfg.model`` has an rpn_head and a roi_head with a mask_head (checked in
    detail once built, by :func:`check_detector`)."""
    return 'rpn_head' in model_cfg and 'mask_head' in (model_cfg.get('roi_head') or {})


def is_two_stage_mask_config(cfg) -> bool:
    """Whether ``cfg`` is an mmdet config with :func:`has_rpn_and_mask_head`."""
    return cfg.get('default_scope') == 'mmdet' and has_rpn_and_mask_head(cfg.model)


def onnx_detector_outputs(session, images: np.ndarray) -> List[np.ndarray]:
    """Run an exported detector ``session`` on (N, 3, H, W) float32 ``images``: one call per
    image (the batch axis is fixed to the export's, 1), outputs concatenated on axis 0."""
    from .runtime import run_session
    fixed = session.get_inputs()[0].shape[0]
    if isinstance(fixed, int) and fixed != 1:
        return run_session(session, images)
    per_image = [run_session(session, images[i:i + 1]) for i in range(images.shape[0])]
    return [np.concatenate(column) for column in zip(*per_image)]


# ----------------------------------------------------------------------------- check
DETECTOR_TOLERANCES = dict(boxes=1e-2, scores=1e-4, mask_probs=1e-3, mask_pixels=5e-3)
"""What :func:`compare_detector` accepts: max |difference| of boxes (pixels) and scores, of the
28x28 mask probabilities (ONNX against the export module in PyTorch), and the fraction of mask
pixels that differ after pasting and thresholding (ONNX against mmdet's predict); the number
of detections and the labels must be equal."""


def reference_predictions(model: nn.Module, images: torch.Tensor) -> list:
    """mmdet's own predictions (``model.predict``, no rescale) for a batch of normalised
    images whose image size is the input size: InstanceData per image."""
    from mmdet.structures import DetDataSample
    height, width = images.shape[2:]
    samples = [DetDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                           pad_shape=(height, width), scale_factor=(1.0, 1.0),
                                           batch_input_shape=(height, width)))
               for _ in range(images.shape[0])]
    with torch.no_grad():
        return [s.pred_instances for s in model.predict(images, samples, rescale=False)]


def compare_detector(model: nn.Module, module: nn.Module, onnx_file: str,
                     inputs: Sequence[torch.Tensor], tolerances: Dict = None) -> List[dict]:
    """Check an exported detector against PyTorch on each input (N, 3, H, W).

    The kept detections of onnxruntime are matched row by row with mmdet's ``model.predict``
    (same order: by score): count and labels equal, boxes and scores within
    ``tolerances`` (default :data:`DETECTOR_TOLERANCES`), pasted masks differing in at most
    ``mask_pixels`` of their pixels; the mask probabilities with ``module`` (the export module
    run eagerly) within ``mask_probs``.

    Args:
        model: the mmdet detector (eval mode).
        module: the :class:`ExportableTwoStageDetector` that was exported.
        onnx_file: the exported file.
        inputs: image batches to check.
        tolerances: overrides of :data:`DETECTOR_TOLERANCES`.

    Returns:
        one dict per image: input shape, detections, and the max differences measured.

    Raises:
        OnnxCheckError: when a check fails, naming the image and what differs.
    """
    from .onnx_export import OnnxCheckError
    from .runtime import create_session
    tol = dict(DETECTOR_TOLERANCES, **(tolerances or {}))
    session = create_session(onnx_file)
    rows = []
    for x in inputs:
        got = onnx_detector_outputs(session, x.numpy())
        with torch.no_grad():
            eager = [o.numpy() for o in module(x)]
        want = reference_predictions(model, x)
        height, width = x.shape[2:]
        for i, ref in enumerate(want):
            where = f'{onnx_file}, input {tuple(x.shape)}, image {i}'
            count = int(got[3][i])
            if count != len(ref) or count != int(eager[3][i]):
                raise OnnxCheckError(f'{where}: onnxruntime keeps {count} detections, mmdet '
                                     f'{len(ref)}, the export module {int(eager[3][i])}.')
            labels = got[2][i, :count]
            if not np.array_equal(labels, ref.labels.numpy()):
                raise OnnxCheckError(f'{where}: labels differ from mmdet\'s.')
            ours = detections_to_sample(got, i, dict(ori_shape=(height, width),
                                                     scale_factor=(1.0, 1.0)))
            box = float(np.abs(got[0][i, :count] - ref.bboxes.numpy()).max(initial=0))
            score = float(np.abs(got[1][i, :count] - ref.scores.numpy()).max(initial=0))
            probs = float(np.abs(got[4][i, :count] - eager[4][i, :count]).max(initial=0))
            pixels = float((ours.pred_instances.masks != ref.masks.bool()).float().mean()) \
                if count else 0.0
            row = dict(input=tuple(x.shape), image=i, detections=count, boxes=box,
                       scores=score, mask_probs=probs, mask_pixels=pixels)
            rows.append(row)
            bad = [k for k in ('boxes', 'scores', 'mask_probs', 'mask_pixels')
                   if not row[k] <= tol[k]]
            if bad:
                raise OnnxCheckError(
                    f'{where} does not reproduce PyTorch: ' + ', '.join(
                        f'{k} differ by {row[k]:.3g} (tolerance {tol[k]:g})' for k in bad)
                    + '. Do not deploy this file; re-export with --debug and report the case.')
    return rows


def export_detector(module: nn.Module, example: torch.Tensor, out: str,
                    opset: int = 17) -> dict:
    """Write the :class:`ExportableTwoStageDetector` ``module`` traced at ``example``
    (N, 3, H, W) to the ONNX file ``out`` with the TorchScript exporter (the dynamo exporter
    stops on the data-dependent box counts); height and width are dynamic, N is fixed.
    Returns dict(exporter='torchscript', opset=..., seconds=...)."""
    import time
    import warnings
    from .runtime import require
    require('onnx', 'ONNX export')
    start = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # tracer warnings about python values (documented)
        torch.onnx.export(module.eval(), (example,), out, dynamo=False, opset_version=opset,
                          input_names=['input'], output_names=list(OUTPUT_NAMES),
                          dynamic_axes={'input': {2: 'height', 3: 'width'}},
                          do_constant_folding=True)
    return dict(exporter='torchscript', opset=opset, fallback_reason=None, external_data=False,
                seconds=time.perf_counter() - start)


def onnx_domains(onnx_file: str) -> Dict[str, int]:
    """{operator domain: number of nodes} of an ONNX file, subgraphs included ('' is the
    standard ONNX domain)."""
    import onnx
    counts: Dict[str, int] = {}

    def visit(graph):
        for node in graph.node:
            counts[node.domain] = counts.get(node.domain, 0) + 1
            for attribute in node.attribute:
                for sub in ([attribute.g] if attribute.HasField('g') else []) + \
                        list(attribute.graphs):
                    visit(sub)
    visit(onnx.load(onnx_file, load_external_data=False).graph)
    return counts


def preprocess_images(cfg, model: nn.Module, paths: Sequence[str]) -> List[torch.Tensor]:
    """Each image file of ``paths`` as the config's test pipeline (without its annotation
    loading) and the model's ``data_preprocessor`` make it: a list of (1, 3, H, W) float32
    tensors (resized, normalised, padded)."""
    from mmcv.transforms import Compose
    pipeline = [dict(step) for step in cfg.test_dataloader.dataset.pipeline
                if step['type'] != 'LoadAnnotations']
    for step in pipeline:
        if step['type'].endswith('PackDetInputs'):
            step['meta_keys'] = ('img_id', 'img_path', 'ori_shape', 'img_shape',
                                 'scale_factor')
    pipeline = Compose(pipeline)
    batches = []
    for index, path in enumerate(paths):
        data = pipeline(dict(img_path=path, img_id=index))
        with torch.no_grad():
            out = model.data_preprocessor(dict(inputs=[data['inputs']],
                                               data_samples=[data['data_samples']]), False)
        batches.append(out['inputs'].float())
    return batches
