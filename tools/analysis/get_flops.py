"""Parameters and FLOPs of a detection or segmentation config, counted as the paper does.

    python tools/analysis/get_flops.py CONFIG [--shape H W] [--cfg-options KEY=VALUE ...]

One FLOP is one multiply-add (fvcore / mmengine convention, the paper's numbers use the same).
Detection (default input 1280x800) follows the ``forward_dummy`` of mmdet 2.x that the official
numbers were measured with: backbone, neck and RPN head on the image, then every box head stage
on ``--num-proposals`` (1000) boxes and every mask head stage on the first ``--num-mask-rois``
(100) of them; no NMS or post-processing. Detectors with a ``panoptic_head`` (Mask2Former,
MaskFormer) and DETR-style detectors (DINO, Deformable DETR, ...) run their ``_forward``
(backbone, neck, transformer and head; DINO without denoising queries, as in eval mode) on one
data sample whose image, batch and pad shapes are the input's. Segmentation (default input
2048x512) runs the backbone, the decode head and the auxiliary heads; a decode head whose
``forward`` takes ``batch_data_samples`` (mmseg's Mask2Former) gets one such data sample.

Counted: convolutions, linear layers, matrix products (``bmm``, ``matmul``, ``einsum`` and
``baddbmm``, the masked attention's query-key product, b*n*k*m for (b, n, k) x (b, k, m)),
normalisation layers, bilinear / nearest upsampling and grid sampling (the deformable
attention's bilinear sampling, 4 per sampled value). Not counted, as in the paper: element-wise
operations (activations, softmax, sigmoid, additions and products, sine position encodings),
the deformable attention's weighted sum of the sampled values, top-k selection, and RoIAlign
and other compiled mmcv ops. The model is built without loading any pretrained weights.
"""
import argparse
import inspect
import os.path as osp
import sys

import torch
import torch.nn as nn

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # tools/ for _common
from _common import load_config  # noqa: E402  (imports convnext_dense, sets the scope)
from convnext_dense.errors import UnsupportedError  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

DEFAULT_SHAPES = {'mmdet': (1280, 800), 'mmseg': (2048, 512)}
# no arithmetic: kept out of the "not counted" list the tool prints
NO_ARITHMETIC_OPS = ('aten::_shape_as_tensor', 'aten::flip', 'aten::linspace', 'aten::lt',
                     'aten::masked_fill_', 'aten::meshgrid', 'aten::ne', 'aten::new_ones',
                     'aten::ones_like', 'aten::repeat', 'aten::zeros_like')
NOT_COUNTED = ('element-wise ops (activations, softmax, sigmoid, additions), the deformable '
               "attention's weighted sum, top-k, RoIAlign and other compiled mmcv ops")


def baddbmm_flop_jit(inputs, outputs) -> int:
    """``aten::baddbmm(input, batch1 (b, n, k), batch2 (b, k, m))``: b*n*k*m multiply-adds
    (the added ``input`` is element-wise, not counted)."""
    from mmengine.analysis.jit_handles import get_shape
    (b, n, k), (b2, k2, m) = get_shape(inputs[1]), get_shape(inputs[2])
    assert b == b2 and k == k2, f'baddbmm of shapes {(b, n, k)} and {(b2, k2, m)}'
    return b * n * k * m


def one_data_sample(scope: str, height: int, width: int):
    """A list of one data sample (mmdet ``DetDataSample`` or mmseg ``SegDataSample``) whose
    image, batch-input and pad shapes are (height, width): what heads read from it to build
    masks and positional encodings."""
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample as DataSample
    else:
        from mmseg.structures import SegDataSample as DataSample
    shape = (height, width)
    return [DataSample(metainfo=dict(batch_input_shape=shape, img_shape=shape, ori_shape=shape,
                                     pad_shape=shape, scale_factor=(1.0, 1.0)))]


def flat_tensors(outs) -> tuple:
    """Nested tuples / lists / dicts of tensors -> one flat tuple (what the tracer returns)."""
    if isinstance(outs, torch.Tensor):
        return (outs, )
    if isinstance(outs, dict):
        outs = list(outs.values())
    if isinstance(outs, (tuple, list)):
        return tuple(t for out in outs for t in flat_tensors(out))
    return ()


def takes_data_samples(head: nn.Module) -> bool:
    """Whether ``head.forward`` needs ``batch_data_samples`` (mmseg's Mask2Former does)."""
    return 'batch_data_samples' in inspect.signature(head.forward).parameters


class DetectorDummy(nn.Module):
    """Image tensor in, head outputs out: mmdet 2.x ``forward_dummy`` for two-stage models."""

    def __init__(self, detector: nn.Module, num_proposals: int = 1000,
                 num_mask_rois: int = 100, seed: int = 0):
        super().__init__()
        self.detector = detector
        self.num_proposals = num_proposals
        self.num_mask_rois = num_mask_rois
        self.seed = seed

    def _rois(self, height: int, width: int, device) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        xy = torch.rand(self.num_proposals, 2, generator=gen) * torch.tensor([width, height])
        wh = (torch.rand(self.num_proposals, 2, generator=gen) * 0.5 + 0.01) * \
            torch.tensor([width, height])
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([width, height]))], 1)
        return torch.cat([boxes.new_zeros(len(boxes), 1), boxes], 1).to(device)  # (n, 5)

    def forward(self, img: torch.Tensor):
        det = self.detector
        if hasattr(det, 'panoptic_head') or hasattr(det, 'forward_transformer'):
            # Mask2Former / MaskFormer and DETR-style detectors: their own tensor forward
            samples = one_data_sample('mmdet', img.shape[-2], img.shape[-1])
            return flat_tensors(det._forward(img, samples))
        x = det.extract_feat(img)
        outs = []
        if getattr(det, 'with_rpn', False):
            cls_scores, bbox_preds = det.rpn_head(x)
            outs += list(cls_scores) + list(bbox_preds)
        roi_head = getattr(det, 'roi_head', None)
        if roi_head is None:
            if hasattr(det, 'bbox_head'):  # one-stage detectors
                return tuple(outs) + tuple(t for level in det.bbox_head(x) for t in level)
            raise UnsupportedError(f'{type(det).__name__}: no roi_head, bbox_head, panoptic_head '
                                   'or DETR transformer to count; get_flops.py knows two-stage, '
                                   'one-stage, Mask2Former and DETR-style detectors')
        rois = self._rois(img.shape[-2], img.shape[-1], img.device)
        mask_rois = rois[:self.num_mask_rois]
        stages = getattr(roi_head, 'num_stages', None)
        if stages is None:  # StandardRoIHead
            if roi_head.with_bbox:
                res = roi_head._bbox_forward(x, rois)
                outs += [res['cls_score'], res['bbox_pred']]
            if roi_head.with_mask:
                outs.append(roi_head._mask_forward(x, mask_rois)['mask_preds'])
        else:  # CascadeRoIHead: every stage on the same boxes, as forward_dummy did
            if roi_head.with_bbox:
                for stage in range(stages):
                    res = roi_head._bbox_forward(stage, x, rois)
                    outs += [res['cls_score'], res['bbox_pred']]
            if roi_head.with_mask:
                for stage in range(stages):
                    outs.append(roi_head._mask_forward(stage, x, mask_rois)['mask_preds'])
        return tuple(outs)


class SegmentorDummy(nn.Module):
    """Image tensor in, decode and auxiliary head outputs out (flat tuple of tensors)."""

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, img: torch.Tensor):
        seg = self.segmentor
        x = seg.extract_feat(img)
        heads = [seg.decode_head]
        if getattr(seg, 'with_auxiliary_head', False):
            aux = seg.auxiliary_head
            heads += list(aux) if isinstance(aux, nn.ModuleList) else [aux]
        outs = []
        for head in heads:
            if takes_data_samples(head):
                samples = one_data_sample('mmseg', img.shape[-2], img.shape[-1])
                outs += flat_tensors(head.forward(x, samples))
            else:
                outs += flat_tensors(head.forward(x))
        return tuple(outs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def complexity(cfg, shape, num_proposals: int = 1000, num_mask_rois: int = 100,
               table: bool = False) -> dict:
    """``dict(params, flops, by_operator, uncounted[, table])`` of ``cfg.model`` on one
    (3, H, W) input: totals, FLOPs per counted op (``{'conv': ..., 'baddbmm': ...}``) and the
    names of the traced ops that were not counted (``['aten::softmax', ...]``)."""
    from mmengine.analysis import FlopAnalyzer
    from mmengine.analysis.print_helper import complexity_stats_table
    from mmengine.registry import MODELS

    model_cfg = cfg.model
    model_cfg.get('backbone', {}).pop('init_cfg', None)  # never read or need weights
    model_cfg.pop('pretrained', None)
    model = MODELS.build(model_cfg)
    model.eval()
    # Nothing requires grad, so autograd keeps no activations alive: peak memory is a few
    # layers' activations (about 4 GB for DINO B at 1280x800) instead of the whole graph.
    model.requires_grad_(False)
    if cfg.default_scope == 'mmdet':
        wrapper = DetectorDummy(model, num_proposals, num_mask_rois)
    else:
        wrapper = SegmentorDummy(model)
    height, width = shape
    img = torch.randn(1, 3, height, width)
    # Traced with autograd on: without it our backbone takes its fused oneDNN inference
    # kernels, which torch.jit.trace cannot record (and the paper counted the plain ops).
    with torch.enable_grad():
        analyzer = FlopAnalyzer(wrapper, (img, ))
        analyzer.set_op_handle('aten::baddbmm', baddbmm_flop_jit)
        analyzer.set_op_handle(**dict.fromkeys(NO_ARITHMETIC_OPS))
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        analyzer.tracer_warnings('none')
        result = dict(params=count_parameters(model), flops=analyzer.total(),
                      by_operator=dict(analyzer.by_operator()),
                      uncounted=sorted(analyzer.unsupported_ops()))
        if table:
            result['table'] = complexity_stats_table(flops=analyzer, max_depth=3)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file')
    parser.add_argument('--shape', type=int, nargs='+', default=None, metavar='N',
                        help='input H W (or one number for a square); default 1280 800 for '
                        'detection, 2048 512 for segmentation')
    parser.add_argument('--num-proposals', type=int, default=1000,
                        help='boxes fed to each box head stage (detection)')
    parser.add_argument('--num-mask-rois', type=int, default=100,
                        help='boxes fed to each mask head stage (detection)')
    parser.add_argument('--table', action='store_true', help='also print a per-module table')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, as in tools/train.py')
    args = parser.parse_args(argv)
    args.work_dir, args.launcher, args.local_rank = None, 'none', 0
    cfg = load_config(args)

    shape = args.shape or DEFAULT_SHAPES[cfg.default_scope]
    if len(shape) == 1:
        shape = (shape[0], shape[0])
    if len(shape) != 2 or min(shape) < 32:
        parser.error(f'--shape takes H W (or one size), each >= 32; got {args.shape}')
    result = complexity(cfg, tuple(shape), args.num_proposals, args.num_mask_rois, args.table)
    if args.table:
        print(result['table'])
    line = '=' * 40
    print(f'{line}\nConfig: {args.config}\nInput shape: (3, {shape[0]}, {shape[1]})\n'
          f'FLOPs: {result["flops"] / 1e9:.1f} G (one multiply-add = one FLOP)\n'
          f'Params: {result["params"] / 1e6:.2f} M\n'
          f'Not counted (as in the paper): {NOT_COUNTED}; in this model: '
          f'{", ".join(op.replace("aten::", "") for op in result["uncounted"]) or "none"}\n'
          f'{line}')
    return result


if __name__ == '__main__':
    main()
