"""Whole Mask R-CNN / Cascade Mask R-CNN detectors exported to ONNX
(convnext_dense.deployment.detector_export): the demo Cascade (V2-atto), a reduced Cascade
ConvNeXt-T and a V2 Mask R-CNN (GRN) run in onnxruntime with the same detections as mmdet's
predict at two input sizes; only standard ONNX operators appear; the mask paste equals
mmdet's; unsupported detectors are refused naming the supported ones; tools/test.py on the
.onnx file gives PyTorch's COCO bbox / segm mAP and the same predictions."""
import math
import os.path as osp
import pickle
import re

import numpy as np
import pytest
import torch

pytest.importorskip('onnxruntime')

from mmengine.config import Config  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402

from convnext_dense.deployment import (OnnxCheckError, compare_detector,  # noqa: E402
                                       export_detector, export_module, paste_masks)
from convnext_dense.deployment.detector_export import onnx_domains  # noqa: E402
from convnext_dense.deployment.onnx_export import build_pytorch_model  # noqa: E402
from helpers import DET_DEMO, REPO, SHARED_DATA, metric, run_tool, toy_dataset  # noqa: E402

DET = osp.join(REPO, 'configs', 'detection')


def seeded_model(cfg, grn: bool = False):
    """``cfg``'s detector without checkpoint: seed 0, init_weights(), eval; with ``grn``,
    random GRN parameters (V2's zeros make GRN the identity)."""
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = build_pytorch_model(cfg, None)
        model.init_weights()
    if grn:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, param in model.backbone.named_parameters():
                if '.grn.' in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model.eval()


def export_and_check(cfg, model, tmp_path, shape, second, min_detections):
    """Export at ``shape``, check at ``shape`` and ``second`` (H, W); return the check's rows
    and the file."""
    with DefaultScope.overwrite_default_scope('mmdet'):
        module, names = export_module(cfg, model, 'model')
        generator = torch.Generator().manual_seed(0)
        inputs = [torch.randn(1, 3, *shape, generator=generator),
                  torch.randn(1, 3, *second, generator=generator)]
        out = str(tmp_path / 'detector.onnx')
        assert export_detector(module, inputs[0], out)['opset'] >= 16
        rows = compare_detector(model, module, out, inputs)
    assert [row['input'][2:] for row in rows] == [tuple(shape), tuple(second)]
    for row in rows:  # measured: boxes < 1e-4 px, scores < 1e-6, probabilities < 1e-5
        assert row['detections'] >= min_detections, row
        assert row['boxes'] < 1e-3 and row['scores'] < 1e-5 and row['mask_pixels'] == 0, row
    assert set(onnx_domains(out)) <= {'', 'ai.onnx'}, onnx_domains(out)
    return rows, out


def test_demo_detector_matches_pytorch_at_two_sizes_with_standard_ops(tmp_path):
    import onnx
    cfg = Config.fromfile(DET_DEMO)
    model = seeded_model(cfg)
    rows, out = export_and_check(cfg, model, tmp_path, (96, 128), (160, 96), min_detections=10)
    ops = {node.op_type for node in onnx.load(out).graph.node}
    assert {'NonMaxSuppression', 'RoiAlign', 'TopK'} <= ops  # NMS and RoIAlign in the graph
    graph = onnx.load(out)
    assert max(o.version for o in graph.opset_import if o.domain in ('', 'ai.onnx')) >= 16
    dims = [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 'height', 'width']


def test_a_wrong_file_fails_the_check(tmp_path):
    """The check compares against mmdet, not against the export module only: a file of
    another model (other weights) is refused."""
    cfg = Config.fromfile(DET_DEMO)
    model = seeded_model(cfg)
    _, out = export_and_check(cfg, model, tmp_path, (96, 128), (128, 96), min_detections=10)
    other = seeded_model(Config.fromfile(DET_DEMO))
    with torch.no_grad():
        for param in other.roi_head.bbox_head[2].parameters():
            param.mul_(1.5)
    with DefaultScope.overwrite_default_scope('mmdet'):
        module, _ = export_module(cfg, other, 'model')
        with pytest.raises(OnnxCheckError, match=r'detector\.onnx, input \(1, 3, 96, 128\), '
                                                 r'image 0: (labels differ|onnxruntime keeps)'):
            compare_detector(other, module, out, [torch.randn(1, 3, 96, 128)])


@pytest.mark.slow
def test_reduced_cascade_t_matches_pytorch(tmp_path):
    cfg = Config.fromfile(osp.join(DET, 'cascade_convnext_t_coco.py'))
    # random 80-class heads score about 1/81 < score_thr 0.05: keep every box to compare
    cfg.model.test_cfg.rcnn.update(score_thr=0.0, max_per_img=30)
    cfg.model.test_cfg.rpn.update(nms_pre=300, max_per_img=100)
    model = seeded_model(cfg)
    export_and_check(cfg, model, tmp_path, (64, 96), (96, 64), min_detections=30)


@pytest.mark.slow
def test_v2_mask_rcnn_with_grn_matches_pytorch(tmp_path):
    cfg = Config.fromfile(osp.join(DET, 'mask_rcnn_convnext_v2_t_coco.py'))
    cfg.model.test_cfg.rcnn.update(score_thr=0.0, max_per_img=30)
    cfg.model.test_cfg.rpn.update(nms_pre=300, max_per_img=100)
    model = seeded_model(cfg, grn=True)
    assert type(model.roi_head).__name__ == 'StandardRoIHead'
    export_and_check(cfg, model, tmp_path, (64, 96), (96, 64), min_detections=30)


@pytest.mark.parametrize('method', ['linear', 'gaussian', 'naive'])
@pytest.mark.parametrize('count', [0, 12, 300])
def test_soft_nms_equals_mmcv(method, count):
    """The graph's soft-NMS (the V2 Mask R-CNN recipes' rcnn NMS) picks the boxes mmcv's
    soft_nms kernel keeps through mmdet's batched_nms, in its order, with its decayed scores;
    rows past the last pick are zeros."""
    from mmcv.ops import batched_nms
    from convnext_dense.deployment.detector_export import _soft_nms_by_group
    generator = torch.Generator().manual_seed(count)
    for _ in range(5):
        corner = torch.rand(count, 2, generator=generator) * 100
        boxes = torch.cat([corner, corner + torch.rand(count, 2, generator=generator) * 40 + 1],
                          dim=1)
        scores = torch.rand(count, generator=generator)
        labels = torch.randint(0, 5, (count,), generator=generator)
        if count:
            dets, keep = batched_nms(boxes, scores, labels,
                                     dict(type='soft_nms', iou_threshold=0.5, method=method))
        else:  # mmdet's multiclass_nms returns no detection without calling mmcv
            dets, keep = torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)
        index, decayed, valid = _soft_nms_by_group(boxes, scores, labels, 100, 0.5, method)
        n = min(100, len(keep))
        assert valid.tolist() == [True] * n + [False] * (100 - n)
        assert torch.equal(index[:n], keep[:n])
        torch.testing.assert_close(decayed[:n], dets[:n, -1], atol=1e-6, rtol=0)
        assert not decayed[n:].any() and not index[n:].any()
    # by hand: B overlaps A with IoU 0.6, C lies apart; NMS would drop B, linear soft-NMS keeps
    # it at 0.8 * (1 - 0.6), 'naive' drops it, gaussian decays it by exp(-0.36 / 0.5)
    boxes = torch.tensor([[0., 0., 10., 10.], [0., 0., 10., 6.], [20., 20., 30., 30.]])
    index, decayed, valid = _soft_nms_by_group(boxes, torch.tensor([0.9, 0.8, 0.5]),
                                               torch.zeros(3, dtype=torch.long), 4, 0.5, method)
    want = dict(linear=([0, 2, 1], [0.9, 0.5, 0.32]), naive=([0, 2], [0.9, 0.5]),
                gaussian=([0, 2, 1], [0.9, 0.5, 0.8 * math.exp(-0.36 / 0.5)]))[method]
    assert index[valid].tolist() == want[0]
    assert decayed[valid].tolist() == pytest.approx(want[1], abs=1e-6)


def test_paste_masks_equals_mmdet():
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 28, 28, generator=generator)
    boxes = torch.tensor([[3.2, 4.7, 40.1, 33.3], [0.0, 0.0, 63.0, 47.0], [50.5, 2.0, 64.0, 9.9],
                          [10.0, 10.0, 10.4, 30.0], [-3.0, 20.0, 12.0, 60.0],
                          [30.0, 30.0, 31.0, 31.0]])
    got = paste_masks(masks, boxes, 48, 64, threshold=0.5)
    for k in range(len(boxes)):  # mmdet pastes one box at a time on the CPU
        want = torch.zeros(48, 64, dtype=torch.bool)
        pasted, region = _do_paste_mask(masks[k][None, None], boxes[k:k + 1], 48, 64, True)
        want[region] = pasted[0] >= 0.5
        assert torch.equal(got[k], want), k


def test_unsupported_detectors_are_refused_naming_the_supported_ones():
    from convnext_dense.deployment.detector_export import ExportableTwoStageDetector
    cfg = Config.fromfile(osp.join(DET, 'dino_4scale_convnext_t_12e_coco.py'))
    with pytest.raises(NotImplementedError, match=r'supports MaskRCNN.*CascadeRCNN.*--part'):
        export_module(cfg, torch.nn.Identity(), 'model')
    cfg = Config.fromfile(DET_DEMO)
    model = seeded_model(cfg)
    model.roi_head.mask_head[0] = torch.nn.Identity()
    with pytest.raises(NotImplementedError, match=r'mask_head is Identity.*supports'):
        ExportableTwoStageDetector(model, 'demo.py')


@pytest.mark.slow
def test_tools_test_on_onnx_detector_equals_pytorch(tmp_path_factory):
    """tools/test.py CONFIG FILE.onnx (OnnxDetector + the config's CocoMetric) against
    tools/test.py CONFIG CKPT on a generated toy COCO val set: same predictions, same mAP.
    A seeded random model with score_thr 0 has detections (its mAP is near 0)."""
    from mmengine.runner import save_checkpoint  # noqa: F401 (torch.save below is enough)
    toy = toy_dataset(tmp_path_factory, 'coco', num_train=1, num_val=4, size=(256, 192))
    work = tmp_path_factory.mktemp('onnx_det')
    options = ['--cfg-options', f'data_root={toy}/', f'test_dataloader.dataset.data_root={toy}/',
               f'test_evaluator.ann_file={toy}/annotations/instances_val.json',
               'model.test_cfg.rcnn.score_thr=0.0']
    cfg = Config.fromfile(DET_DEMO)
    cfg.model.test_cfg.rcnn.score_thr = 0.0
    model = seeded_model(cfg)
    checkpoint = str(work / 'random.pth')
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), checkpoint)
    onnx_file = str(work / 'demo.onnx')
    log = run_tool('deployment/export_onnx.py', DET_DEMO, checkpoint, '--out', onnx_file,
                   *options, cwd=work)
    assert 'check passed' in log and "operator domains {'': " in log, log[-3000:]
    assert re.search(r'at 192x256 \(dynamic height/width, batch 1\)', log), log[-3000:]
    results = {}
    for name, weights in (('pytorch', checkpoint), ('onnx', onnx_file)):
        out = str(work / f'{name}.pkl')
        log = run_tool('test.py', DET_DEMO, weights, '--work-dir', str(work / name),
                       '--out', out, *options, cwd=work)
        with open(out, 'rb') as f:
            results[name] = (metric(log, 'coco/bbox_mAP'), metric(log, 'coco/segm_mAP'),
                             pickle.load(f))
    (bbox_pt, segm_pt, pt), (bbox_ox, segm_ox, ox) = results['pytorch'], results['onnx']
    assert abs(bbox_pt - bbox_ox) <= 0.003 and abs(segm_pt - segm_ox) <= 0.003
    assert len(pt) == len(ox) == 4
    for a, b in zip(pt, ox):
        a, b = a['pred_instances'], b['pred_instances']
        assert len(a['labels']) == len(b['labels']) == 20
        assert torch.equal(a['labels'], b['labels'])
        np.testing.assert_allclose(b['bboxes'].numpy(), a['bboxes'].numpy(), atol=1e-3)
        np.testing.assert_allclose(b['scores'].numpy(), a['scores'].numpy(), atol=1e-5)
        assert [m['counts'] for m in a['masks']] == [m['counts'] for m in b['masks']]


def test_tiny_coco_images_match(tmp_path):
    """Real photographs (the shared tiny_coco set) through the demo's test pipeline."""
    import glob
    images = sorted(glob.glob(osp.join(SHARED_DATA, 'tiny_coco', 'train2017', '*.jpg')))[:3]
    if not images:
        pytest.skip(f'no tiny_coco images under {SHARED_DATA}')
    from convnext_dense.deployment.detector_export import preprocess_images
    cfg = Config.fromfile(DET_DEMO)
    model = seeded_model(cfg)
    with DefaultScope.overwrite_default_scope('mmdet'):
        inputs = preprocess_images(cfg, model, images)
        module, _ = export_module(cfg, model, 'model')
        out = str(tmp_path / 'demo.onnx')
        export_detector(module, inputs[0], out)
        rows = compare_detector(model, module, out, inputs)
    assert all(row['detections'] >= 10 for row in rows), rows
