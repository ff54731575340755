"""Parameters and FLOPs of a detection or segmentation config, counted as the paper does.

    python tools/analysis/get_flops.py CONFIG [--shape H W] [--cfg-options KEY=VALUE ...]

One FLOP is one multiply-add (fvcore / mmengine convention, the paper's numbers use the same).
Detection (default input 1280x800) follows the ``forward_dummy`` of mmdet 2.x that the official
numbers were measured with: backbone, neck and RPN head on the image, then every box head stage
on ``--num-proposals`` (1000) boxes and every mask head stage on the first ``--num-mask-rois``
(100) of them; no NMS or post-processing. Segmentation (default input 2048x512) runs the
encoder-decoder's ``_forward`` (backbone, decode and auxiliary heads). RoIAlign and other
compiled mmcv ops, and element-wise activations, are not counted (as in the paper).
The model is built without loading any pretrained weights.
"""
import argparse
import os.path as osp
import sys

import torch
import torch.nn as nn

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # tools/ for _common
from _common import load_config  # noqa: E402  (imports convnext_dense, sets the scope)
from mmengine.config import DictAction  # noqa: E402

DEFAULT_SHAPES = {'mmdet': (1280, 800), 'mmseg': (2048, 512)}


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
        x = det.extract_feat(img)
        outs = []
        if getattr(det, 'with_rpn', False):
            cls_scores, bbox_preds = det.rpn_head(x)
            outs += list(cls_scores) + list(bbox_preds)
        roi_head = getattr(det, 'roi_head', None)
        if roi_head is None:
            if hasattr(det, 'bbox_head'):  # one-stage detectors
                return tuple(outs) + tuple(t for level in det.bbox_head(x) for t in level)
            raise TypeError(f'{type(det).__name__}: no roi_head or bbox_head to count')
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
    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, img: torch.Tensor):
        seg = self.segmentor
        x = seg.extract_feat(img)
        outs = [seg.decode_head.forward(x)]
        if getattr(seg, 'with_auxiliary_head', False):
            heads = seg.auxiliary_head
            for head in heads if isinstance(heads, nn.ModuleList) else [heads]:
                outs.append(head.forward(x))
        return tuple(outs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def complexity(cfg, shape, num_proposals: int = 1000, num_mask_rois: int = 100,
               table: bool = False) -> dict:
    """``dict(params, flops[, table])`` of ``cfg.model`` on one (3, H, W) input."""
    from mmengine.analysis import FlopAnalyzer
    from mmengine.analysis.print_helper import complexity_stats_table
    from mmengine.registry import MODELS

    model_cfg = cfg.model
    model_cfg.get('backbone', {}).pop('init_cfg', None)  # never read or need weights
    model_cfg.pop('pretrained', None)
    model = MODELS.build(model_cfg)
    model.eval()
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
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        analyzer.tracer_warnings('none')
        result = dict(params=count_parameters(model), flops=analyzer.total())
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
          f'Params: {result["params"] / 1e6:.2f} M\n{line}')
    return result


if __name__ == '__main__':
    main()
