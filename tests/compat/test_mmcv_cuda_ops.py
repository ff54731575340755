"""convnext_dense.compat.mmcv_cuda_ops: the functions it routes CUDA tensors to give mmcv's
numbers. Compared on CPU tensors with mmcv's own compiled CPU kernels, called directly and
through mmcv's ops (a RoutedExtension that routes CPU tensors stands in), and apply() changes
nothing where it is not needed. The same checks on CUDA tensors: tests/cuda/test_cuda_ops.py."""
import importlib

import numpy as np
import pytest
import torch

from convnext_dense.compat import mmcv_cuda_ops
from convnext_dense.compat.mmcv_cuda_ops import RoutedExtension

roi_align_module = importlib.import_module('mmcv.ops.roi_align')
nms_module = importlib.import_module('mmcv.ops.nms')  # mmcv.ops.nms is also a function
COMPILED = importlib.import_module('mmcv._ext')


def exact(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.fixture
def routed_on_cpu(monkeypatch):
    """mmcv.ops.roi_align / mmcv.ops.nms with their ext_module routed for CPU tensors."""
    for name, routes in mmcv_cuda_ops.ROUTES.items():
        module = importlib.import_module(name)
        monkeypatch.setattr(module, 'ext_module',
                            RoutedExtension(COMPILED, routes, device_types=('cpu',)))


# ------------------------------------------------------------------------------ RoIAlign
def feature_map(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.randn(2, 3, 13, 17, dtype=dtype)


def rois(dtype=torch.float32):
    """(batch index, x1, y1, x2, y2) in image pixels (the map is 1/4 of a 68x52 image):
    inside, partly left/above/right/below the map, tiny, a point and one entirely outside."""
    return torch.tensor([
        [0, 4.0, 6.0, 40.0, 30.0],
        [1, -12.5, -7.0, 20.0, 18.0],
        [0, 50.0, 33.0, 90.0, 70.0],
        [1, 10.3, 11.7, 12.1, 12.9],
        [0, 30.0, 30.0, 30.0, 30.0],
        [1, 0.0, 0.0, 67.9, 51.9],
        [0, 200.0, 150.0, 240.0, 190.0],
        [1, 25.25, 3.5, 61.75, 49.0],
    ], dtype=dtype)


CONFIGS = [  # (output size, spatial scale, sampling ratio, aligned)
    ((7, 7), 0.25, 0, True),
    ((7, 7), 0.25, 0, False),
    ((7, 7), 0.25, 2, True),
    ((14, 14), 0.25, 2, False),
    ((3, 5), 0.5, 0, True),
    ((3, 5), 0.125, 1, False),
]


def _forward(function, input, boxes, size, scale, ratio, aligned):
    output = input.new_zeros((len(boxes), input.size(1), *size))
    empty = input.new_zeros(0)
    function(input, boxes, output, empty, empty, aligned_height=size[0],
             aligned_width=size[1], spatial_scale=scale, sampling_ratio=ratio, pool_mode=1,
             aligned=aligned)
    return output


def _backward(function, grad_output, boxes, input_shape, size, scale, ratio, aligned):
    grad_input = grad_output.new_zeros(input_shape)
    empty = grad_output.new_zeros(0)
    function(grad_output, boxes, empty, empty, grad_input, aligned_height=size[0],
             aligned_width=size[1], spatial_scale=scale, sampling_ratio=ratio, pool_mode=1,
             aligned=aligned)
    return grad_input


@pytest.mark.parametrize('size,scale,ratio,aligned', CONFIGS)
def test_roi_align_forward_equals_mmcv(size, scale, ratio, aligned):
    x, boxes = feature_map(), rois()
    expected = _forward(COMPILED.roi_align_forward, x, boxes, size, scale, ratio, aligned)
    actual = _forward(mmcv_cuda_ops.roi_align_forward, x, boxes, size, scale, ratio, aligned)
    assert expected.abs().sum() > 0 and (expected[6] == 0).all()  # the outside RoI: zeros
    exact(actual, expected)


@pytest.mark.parametrize('size,scale,ratio,aligned', CONFIGS)
def test_roi_align_backward_equals_mmcv(size, scale, ratio, aligned):
    x, boxes = feature_map(), rois()
    torch.manual_seed(1)
    grad = torch.randn(len(boxes), x.size(1), *size)
    expected = _backward(COMPILED.roi_align_backward, grad, boxes, x.shape, size, scale, ratio,
                         aligned)
    actual = _backward(mmcv_cuda_ops.roi_align_backward, grad, boxes, x.shape, size, scale,
                       ratio, aligned)
    assert expected.abs().sum() > 0
    exact(actual, expected)  # on the CPU both add the samples up in the same order


def test_roi_align_backward_adds_into_grad_input():
    x, boxes, size = feature_map(), rois(), (7, 7)
    grad = torch.ones(len(boxes), x.size(1), *size)
    once = _backward(mmcv_cuda_ops.roi_align_backward, grad, boxes, x.shape, size, 0.25, 0, True)
    grad_input = torch.ones(x.shape)
    mmcv_cuda_ops.roi_align_backward(grad, boxes, None, None, grad_input, 7, 7, 0.25, 0, 1, True)
    exact(grad_input, once + 1)


def test_roi_align_half_precision_computes_in_float32():
    """fp16 / bf16 maps (AMP) are read in float32 and the result written into the fp16 / bf16
    output buffer: the float32 kernel's numbers, rounded once."""
    for dtype in (torch.float16, torch.bfloat16):
        x, boxes = feature_map().to(dtype), rois().to(dtype)
        expected = _forward(COMPILED.roi_align_forward, x.float(), boxes.float(), (7, 7), 0.25,
                            0, True).to(dtype)
        actual = _forward(mmcv_cuda_ops.roi_align_forward, x, boxes, (7, 7), 0.25, 0, True)
        assert actual.dtype == dtype
        exact(actual, expected)


def test_roi_align_max_pool_is_refused_with_the_fix():
    x, boxes = feature_map(), rois()
    output = x.new_zeros(len(boxes), 3, 7, 7)
    with pytest.raises(NotImplementedError, match=r"RoIAlign forward.*pool_mode='avg'.*"
                                                  r"MMCV_CUDA=1 make install"):
        mmcv_cuda_ops.roi_align_forward(x, boxes, output, output.clone(), output.clone(), 7, 7,
                                        0.25, 0, 0, True)
    with pytest.raises(NotImplementedError, match='RoIAlign backward'):
        mmcv_cuda_ops.roi_align_backward(output, boxes, output, output, torch.zeros_like(x), 7,
                                         7, 0.25, 0, 0, True)


def test_roi_align_layer_and_mmdet_mask_targets_go_through_the_route(routed_on_cpu,
                                                                      monkeypatch):
    """mmcv's RoIAlign layer (forward and input gradient) and the ``roi_align`` that
    mmdet.structures.mask.structures imports for mask targets both reach the routed kernels
    and give mmcv's numbers."""
    from mmcv.ops import RoIAlign
    from mmdet.structures.mask import BitmapMasks

    calls = []
    routed = roi_align_module.ext_module

    def counted(name, function):
        def call(*args, **kwargs):
            calls.append(name)
            return function(*args, **kwargs)
        return call

    for name in ('roi_align_forward', 'roi_align_backward'):
        monkeypatch.setattr(routed, name, counted(name, getattr(routed, name)))

    def run():
        x = feature_map().requires_grad_()
        layer = RoIAlign((7, 7), spatial_scale=0.25, sampling_ratio=0, aligned=True)
        out = layer(x, rois())
        torch.manual_seed(2)
        (out * torch.randn_like(out)).sum().backward()
        rng = np.random.default_rng(0)
        masks = BitmapMasks((rng.random((3, 40, 50)) > 0.5).astype(np.uint8), 40, 50)
        targets = masks.crop_and_resize(
            np.array([[2.0, 3.0, 30.0, 25.0], [-5.0, 10.0, 20.0, 45.0], [10.5, 0.5, 49.0, 39.5]],
                     dtype=np.float32), (28, 28), torch.tensor([0, 1, 2]), device='cpu')
        return out.detach(), x.grad, targets.to_ndarray()

    routed_out, routed_grad, routed_masks = run()
    assert calls.count('roi_align_forward') == 2 and calls.count('roi_align_backward') == 1
    monkeypatch.setattr(roi_align_module, 'ext_module', COMPILED)
    mmcv_out, mmcv_grad, mmcv_masks = run()
    exact(routed_out, mmcv_out)
    exact(routed_grad, mmcv_grad)
    np.testing.assert_array_equal(routed_masks, mmcv_masks)
    assert routed_masks.any()


# ------------------------------------------------------------------------------ NMS
def boxes_with_ties(n=300, seed=0):
    """Random boxes with heavy overlap, scores from 8 levels (many equal scores), and exact
    duplicates of some boxes with the same score."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (n, 2))
    wh = rng.uniform(5, 40, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = (rng.integers(0, 8, n) / 8).astype(np.float32)
    boxes[n // 2:n // 2 + 20] = boxes[:20]
    scores[n // 2:n // 2 + 20] = scores[:20]
    return torch.from_numpy(boxes), torch.from_numpy(scores)


@pytest.mark.parametrize('iou_threshold', [0.3, 0.5, 0.7, 0.0, 1.0])
@pytest.mark.parametrize('offset', [0, 1])
def test_nms_keeps_the_same_indices_as_mmcv(iou_threshold, offset):
    for seed in range(3):
        boxes, scores = boxes_with_ties(seed=seed)
        expected = COMPILED.nms(boxes, scores, iou_threshold=iou_threshold, offset=offset)
        actual = mmcv_cuda_ops.nms(boxes, scores, iou_threshold=iou_threshold, offset=offset)
        assert actual.dtype == torch.int64
        assert torch.equal(actual, expected), (seed, actual, expected)
        assert 0 < len(expected) <= len(boxes)


def test_nms_threshold_is_compared_in_float32():
    """Two boxes whose IoU is float32(0.3) exactly, which is above the float64 0.3: mmcv's kernel
    compares with float32(0.3) and keeps both."""
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 3.0]])
    scores = torch.tensor([0.9, 0.8])
    iou = torch.tensor(30.0) / torch.tensor(100.0)  # float32 division, as the kernel
    assert iou.item() > 0.3 and iou.item() == torch.tensor(0.3).item()
    expected = COMPILED.nms(boxes, scores, iou_threshold=0.3, offset=0)
    assert torch.equal(mmcv_cuda_ops.nms(boxes, scores, 0.3, 0), expected)
    assert len(expected) == 2


def test_nms_of_no_boxes():
    empty = torch.zeros(0, 4)
    out = mmcv_cuda_ops.nms(empty, torch.zeros(0), 0.5, 0)
    assert out.dtype == torch.int64 and out.shape == (0,)


def test_nms_and_batched_nms_through_mmcv_and_mmdet(routed_on_cpu, monkeypatch):
    """mmcv.ops.nms (score threshold, max_num), batched_nms (per-class offsets, class-agnostic,
    the per-class loop above split_thr) and mmdet's multiclass_nms give mmcv's kept boxes and
    indices when routed."""
    from mmcv.ops import batched_nms, nms
    from mmdet.models.layers import multiclass_nms

    calls = []
    routed = nms_module.ext_module
    function = routed.nms
    monkeypatch.setattr(routed, 'nms', lambda *a, **k: (calls.append(1), function(*a, **k))[1])

    def run():
        boxes, scores = boxes_with_ties()
        labels = torch.from_numpy(np.random.default_rng(1).integers(0, 4, len(boxes)))
        results = [nms(boxes, scores, 0.5), nms(boxes, scores, 0.6, score_threshold=0.3,
                                                max_num=25)]
        for cfg in (dict(iou_threshold=0.5), dict(iou_threshold=0.7, class_agnostic=True),
                    dict(type='nms', iou_threshold=0.5, split_thr=100)):
            results.append(batched_nms(boxes, scores, labels, cfg))
        multi_scores = torch.cat([torch.from_numpy(np.random.default_rng(2).random(
            (len(boxes), 4)).astype(np.float32)), torch.zeros(len(boxes), 1)], dim=1)
        results.append(multiclass_nms(boxes, multi_scores, 0.05, dict(type='nms',
                                                                      iou_threshold=0.5), 100))
        return results

    routed_results = run()
    assert len(calls) >= 6
    monkeypatch.setattr(nms_module, 'ext_module', COMPILED)
    for routed_result, mmcv_result in zip(routed_results, run()):
        for a, b in zip(routed_result, mmcv_result):
            exact(a, b)


# ------------------------------------------------------------------------------ dispatch
def test_routed_extension_dispatches_by_device_and_keeps_the_rest():
    seen = []
    ext = RoutedExtension(COMPILED, dict(nms=lambda *a, **k: seen.append('routed')),
                          device_types=('cuda',))
    boxes, scores = boxes_with_ties()
    exact(ext.nms(boxes, scores, iou_threshold=0.5, offset=0),
          COMPILED.nms(boxes, scores, iou_threshold=0.5, offset=0))
    exact(ext.nms(boxes=boxes, scores=scores, iou_threshold=0.5, offset=0),
          COMPILED.nms(boxes, scores, iou_threshold=0.5, offset=0))
    assert seen == []  # CPU tensors: the compiled kernel
    assert ext.softnms is COMPILED.softnms and ext.roi_align_forward is COMPILED.roi_align_forward
    ext = RoutedExtension(COMPILED, dict(nms=lambda *a, **k: seen.append('routed')),
                          device_types=('cpu',))
    ext.nms(boxes, scores, iou_threshold=0.5, offset=0)
    assert seen == ['routed']


def _ext_modules():
    return {name: importlib.import_module(name).ext_module for name in mmcv_cuda_ops.ROUTES}


def test_apply_changes_nothing_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    mmcv_cuda_ops.apply()
    assert all(ext is COMPILED for ext in _ext_modules().values())
    assert not mmcv_cuda_ops.needed()


def test_apply_changes_nothing_where_mmcv_has_cuda_kernels(monkeypatch):
    import mmcv.ops
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(mmcv.ops, 'get_compiling_cuda_version', lambda: '12.1')
    assert mmcv_cuda_ops.mmcv_has_cuda_ops() and not mmcv_cuda_ops.needed()
    mmcv_cuda_ops.apply()
    assert all(ext is COMPILED for ext in _ext_modules().values())


def test_apply_routes_cuda_where_mmcv_has_no_cuda_kernels(monkeypatch):
    import mmcv.ops
    for name in mmcv_cuda_ops.ROUTES:  # restored after the test
        monkeypatch.setattr(importlib.import_module(name), 'ext_module', COMPILED)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(mmcv.ops, 'get_compiling_cuda_version', lambda: 'not available')
    assert mmcv_cuda_ops.needed()
    mmcv_cuda_ops.apply()
    mmcv_cuda_ops.apply()  # once only
    for name, ext in _ext_modules().items():
        assert isinstance(ext, RoutedExtension) and ext.compiled is COMPILED, name
        assert ext.device_types == ('cuda',)
    # CPU tensors still reach the compiled kernels, unchanged
    boxes, scores = boxes_with_ties()
    exact(nms_module.nms(boxes, scores, 0.5)[1], COMPILED.nms(boxes, scores, 0.5, 0))
