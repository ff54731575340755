"""convnext_dense.compat: compiled mmcv ops, pkg_resources-free lookup (checkpoint loading:
tests/test_safe_checkpoint.py and tests/test_checkpoint_attacks.py)."""
import os
import subprocess
import sys

import pytest
import torch

import convnext_dense  # noqa: F401  (applies the patches)
from convnext_dense import compat


# ----------------------------------------------------------------------------- mmcv ops
def test_mmcv_nms_on_hand_made_boxes():
    from mmcv.ops import nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [20., 20., 30., 30.],
                          [0., 0., 10., 5.]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    # IoU(0, 1) = 81 / 119 = 0.68; IoU(0, 3) = 50 / 100 = 0.5; box 2 overlaps nothing.
    dets, keep = nms(boxes, scores, iou_threshold=0.6)
    assert keep.tolist() == [0, 2, 3]
    assert dets[:, 4].tolist() == pytest.approx([0.9, 0.7, 0.6])
    _, keep = nms(boxes, scores, iou_threshold=0.45)
    assert keep.tolist() == [0, 2]


def test_mmcv_batched_nms_keeps_classes_apart():
    from mmcv.ops import batched_nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [1., 1., 11., 11.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    dets, keep = batched_nms(boxes, scores, torch.tensor([0, 0, 1]),
                             dict(type='nms', iou_threshold=0.5))
    assert keep.tolist() == [0, 2]  # box 1 suppressed by box 0 (same class), box 2 kept
    assert dets[:, 4].tolist() == pytest.approx([0.9, 0.7])


def test_mmcv_roi_align_is_exact_on_a_linear_map():
    from mmcv.ops import RoIAlign
    ys, xs = torch.meshgrid(torch.arange(8.), torch.arange(8.), indexing='ij')
    feature = (xs + 10 * ys)[None, None]  # value = x + 10 y; bilinear sampling is exact
    rois = torch.tensor([[0., 2., 2., 6., 6.]])
    out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=True)(feature, rois)
    # aligned: box [1.5, 5.5) in pixel centres, bins of 2, bin centres 2.5 and 4.5.
    assert out[0, 0].tolist() == [[27.5, 29.5], [47.5, 49.5]]
    out = RoIAlign((1, 1), spatial_scale=0.5, sampling_ratio=2, aligned=False)(feature, rois)
    assert out.item() == pytest.approx(2.0 + 10 * 2.0)  # box [1, 3): centre 2


# ----------------------------------------------------------------------------- pkg_resources
def test_mmdet_base_config_without_pkg_resources(tmp_path):
    """A config with an ``mmdet::`` base loads even where pkg_resources is gone."""
    config = tmp_path / 'child.py'
    config.write_text("_base_ = 'mmdet::_base_/schedules/schedule_1x.py'\n"
                      "optim_wrapper = dict(optimizer=dict(lr=0.01))\n")
    code = ("import sys; sys.modules['pkg_resources'] = None\n"
            "import convnext_dense\n"
            "from mmengine.config import Config\n"
            f"cfg = Config.fromfile({str(config)!r})\n"
            "print(cfg.train_cfg.max_epochs, cfg.optim_wrapper.optimizer.lr)\n")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ['12', '0.01']
    assert compat.get_installed_path('mmdet').endswith(os.sep + 'mmdet')
    assert compat.package_to_module('opencv-python') == 'cv2'
    assert compat.is_installed('mmengine') and not compat.is_installed('no-such-package-x')
