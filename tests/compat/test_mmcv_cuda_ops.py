"""convnext_dense.compat.mmcv_cuda_ops: the functions it routes CUDA tensors to give mmcv's
numbers. Compared on CPU tensors with mmcv's own compiled CPU kernels (deformable attention
and focal loss, which have none: with mmcv's PyTorch path and explicit loops, and with mmdet's
focal loss), called directly and
through mmcv's ops (a RoutedExtension that routes CPU tensors stands in), and apply() changes
nothing where it is not needed. The same checks on CUDA tensors: tests/cuda/test_cuda_ops.py."""
import importlib
import math

import numpy as np
import pytest
import torch

from convnext_dense.compat import mmcv_cuda_ops
from convnext_dense.compat.mmcv_cuda_ops import RoutedExtension
from convnext_dense.ops import mmcv_kernels

roi_align_module = importlib.import_module('mmcv.ops.roi_align')
nms_module = importlib.import_module('mmcv.ops.nms')  # mmcv.ops.nms is also a function
COMPILED = importlib.import_module('mmcv._ext')


def exact(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.fixture
def routed_on_cpu(monkeypatch):
    """The mmcv.ops modules of ROUTES with their ext_module routed for CPU tensors."""
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
    actual = _forward(mmcv_kernels.roi_align_forward, x, boxes, size, scale, ratio, aligned)
    assert expected.abs().sum() > 0 and (expected[6] == 0).all()  # the outside RoI: zeros
    exact(actual, expected)


@pytest.mark.parametrize('size,scale,ratio,aligned', CONFIGS)
def test_roi_align_backward_equals_mmcv(size, scale, ratio, aligned):
    x, boxes = feature_map(), rois()
    torch.manual_seed(1)
    grad = torch.randn(len(boxes), x.size(1), *size)
    expected = _backward(COMPILED.roi_align_backward, grad, boxes, x.shape, size, scale, ratio,
                         aligned)
    actual = _backward(mmcv_kernels.roi_align_backward, grad, boxes, x.shape, size, scale,
                       ratio, aligned)
    assert expected.abs().sum() > 0
    exact(actual, expected)  # on the CPU both add the samples up in the same order


def test_roi_align_backward_adds_into_grad_input():
    x, boxes, size = feature_map(), rois(), (7, 7)
    grad = torch.ones(len(boxes), x.size(1), *size)
    once = _backward(mmcv_kernels.roi_align_backward, grad, boxes, x.shape, size, 0.25, 0, True)
    grad_input = torch.ones(x.shape)
    mmcv_kernels.roi_align_backward(grad, boxes, None, None, grad_input, 7, 7, 0.25, 0, 1, True)
    exact(grad_input, once + 1)


def test_roi_align_half_precision_computes_in_float32():
    """fp16 / bf16 maps (AMP) are read in float32 and the result written into the fp16 / bf16
    output buffer: the float32 kernel's numbers, rounded once."""
    for dtype in (torch.float16, torch.bfloat16):
        x, boxes = feature_map().to(dtype), rois().to(dtype)
        expected = _forward(COMPILED.roi_align_forward, x.float(), boxes.float(), (7, 7), 0.25,
                            0, True).to(dtype)
        actual = _forward(mmcv_kernels.roi_align_forward, x, boxes, (7, 7), 0.25, 0, True)
        assert actual.dtype == dtype
        exact(actual, expected)


def test_roi_align_max_pool_is_refused_with_the_fix():
    x, boxes = feature_map(), rois()
    output = x.new_zeros(len(boxes), 3, 7, 7)
    with pytest.raises(NotImplementedError, match=r"RoIAlign forward.*pool_mode='avg'.*"
                                                  r"MMCV_CUDA=1 make install"):
        mmcv_kernels.roi_align_forward(x, boxes, output, output.clone(), output.clone(), 7, 7,
                                        0.25, 0, 0, True)
    with pytest.raises(NotImplementedError, match='RoIAlign backward'):
        mmcv_kernels.roi_align_backward(output, boxes, output, output, torch.zeros_like(x), 7,
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
        actual = mmcv_kernels.nms(boxes, scores, iou_threshold=iou_threshold, offset=offset)
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
    assert torch.equal(mmcv_kernels.nms(boxes, scores, 0.3, 0), expected)
    assert len(expected) == 2


def test_nms_of_no_boxes():
    empty = torch.zeros(0, 4)
    out = mmcv_kernels.nms(empty, torch.zeros(0), 0.5, 0)
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


# ---------------------------------------------------------------------- deformable attention
msda_module = importlib.import_module('mmcv.ops.multi_scale_deform_attn')
LEVELS = [(3, 5), (2, 3)]  # (h, w) of the two levels


def msda_inputs(dtype=torch.float32, seed=0):
    """value (2, 21, 3 heads, 4), level shapes and starts, sampling locations in
    [-0.3, 1.3) (2, 4 queries, 3 heads, 2 levels, 2 points, 2), attention weights."""
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(LEVELS)
    starts = torch.tensor([0, LEVELS[0][0] * LEVELS[0][1]])
    value = torch.randn(2, sum(h * w for h, w in LEVELS), 3, 4, generator=g, dtype=dtype)
    locations = (torch.rand(2, 4, 3, 2, 2, 2, generator=g, dtype=dtype) * 1.6 - 0.3)
    weights = torch.rand(2, 4, 3, 2, 2, generator=g, dtype=dtype)
    return value, shapes, starts, locations, weights


def naive_ms_deform_attn(value, locations, weights, shift=0.5):
    """Explicit loops: each (batch, query, head, level, point) reads the level's map at pixel
    (x * w - shift, y * h - shift) bilinearly from its four neighbours, a neighbour outside the
    map counting zero, and adds it times its weight; differentiable by autograd."""
    bs, _, heads, dims = value.shape
    queries, levels, points = locations.shape[1], locations.shape[3], locations.shape[4]
    rows = []
    for b in range(bs):
        for q in range(queries):
            per_head = []
            for m in range(heads):
                acc = value.new_zeros(dims)
                start = 0
                for level, (h, w) in enumerate(LEVELS[:levels]):
                    for p in range(points):
                        x = locations[b, q, m, level, p, 0] * w - shift
                        y = locations[b, q, m, level, p, 1] * h - shift
                        x0, y0 = math.floor(x.item()), math.floor(y.item())
                        lx, ly = x - x0, y - y0
                        for dy, wy in ((0, 1 - ly), (1, ly)):
                            for dx, wx in ((0, 1 - lx), (1, lx)):
                                yy, xx = y0 + dy, x0 + dx
                                if 0 <= yy < h and 0 <= xx < w:
                                    acc = acc + (weights[b, q, m, level, p] * wy * wx
                                                 * value[b, start + yy * w + xx, m])
                    start += h * w
                per_head.append(acc)
            rows.append(torch.cat(per_head))
    return torch.stack(rows).view(bs, queries, heads * dims)


def msda_backward(function, value, shapes, starts, locations, weights, grad_output,
                  fill=0.0):
    buffers = [torch.full_like(t, fill) for t in (value, locations, weights)]
    function(value, shapes, starts, locations, weights, grad_output, *buffers, im2col_step=64)
    return buffers


def autograd_of(function, value, locations, weights, grad_output):
    inputs = [t.clone().requires_grad_() for t in (value, locations, weights)]
    output = function(*inputs)
    return output.detach(), torch.autograd.grad(output, inputs, grad_output)


def test_ms_deform_attn_test_case_samples_inside_across_and_outside_the_maps():
    _, _, _, locations, _ = msda_inputs()
    pixels = [locations[:, :, :, level] * torch.tensor([w, h]) - 0.5
              for level, (h, w) in enumerate(LEVELS)]
    sizes = [torch.tensor([w, h]) for h, w in LEVELS]
    inside = torch.cat([((p >= 0) & (p <= s - 1)).all(-1).flatten() for p, s in
                        zip(pixels, sizes)])
    outside = torch.cat([((p <= -1) | (p >= s)).any(-1).flatten() for p, s in
                         zip(pixels, sizes)])
    assert inside.sum() >= 10 and outside.sum() >= 10 and (~inside & ~outside).sum() >= 10


def test_ms_deform_attn_forward_equals_pytorch_path_and_loops():
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch
    value, shapes, starts, locations, weights = msda_inputs()
    out = mmcv_kernels.ms_deform_attn_forward(value, shapes, starts, locations, weights,
                                               im2col_step=64)
    assert out.shape == (2, 4, 12) and out.dtype == torch.float32
    exact(out, multi_scale_deformable_attn_pytorch(value, shapes, locations, weights))
    # the loops in float64: half-pixel centres, zeros outside
    value, shapes, starts, locations, weights = msda_inputs(torch.float64)
    out = mmcv_kernels.ms_deform_attn_forward(value, shapes, starts, locations, weights, 64)
    expected = naive_ms_deform_attn(value, locations, weights)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # which a wrong convention (pixel corners at i / size) would miss by far
    assert (out - naive_ms_deform_attn(value, locations, weights, shift=0.0)).abs().max() > 0.3


def test_ms_deform_attn_backward_equals_autograd_and_loops():
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch
    for dtype, tol in ((torch.float32, 0), (torch.float64, 1e-12)):
        value, shapes, starts, locations, weights = msda_inputs(dtype)
        grad_output = torch.randn(2, 4, 12, generator=torch.Generator().manual_seed(3),
                                  dtype=dtype)
        grads = msda_backward(mmcv_kernels.ms_deform_attn_backward, value, shapes, starts,
                              locations, weights, grad_output)
        _, expected = autograd_of(
            lambda v, l, w: multi_scale_deformable_attn_pytorch(v, shapes, l, w),
            value, locations, weights, grad_output)
        for grad, want in zip(grads, expected):
            assert grad.dtype == dtype and want.abs().max() > 0.1
            torch.testing.assert_close(grad, want, rtol=tol, atol=tol)
        if dtype == torch.float64:
            _, looped = autograd_of(naive_ms_deform_attn, value, locations, weights,
                                    grad_output)
            for grad, want in zip(grads, looped):
                torch.testing.assert_close(grad, want, rtol=1e-12, atol=1e-12)
            # samples entirely outside a map: no gradient for their location
            pixels = locations[:, :, :, 1] * torch.tensor([3, 2]) - 0.5
            outside = ((pixels <= -1) | (pixels >= torch.tensor([3, 2]))).any(-1)
            assert outside.any() and (grads[1][:, :, :, 1][outside] == 0).all()


def test_ms_deform_attn_backward_adds_into_the_buffers():
    value, shapes, starts, locations, weights = msda_inputs()
    grad_output = torch.randn(2, 4, 12, generator=torch.Generator().manual_seed(3))
    once = msda_backward(mmcv_kernels.ms_deform_attn_backward, value, shapes, starts,
                         locations, weights, grad_output)
    onto_ones = msda_backward(mmcv_kernels.ms_deform_attn_backward, value, shapes, starts,
                              locations, weights, grad_output, fill=1.0)
    for grad, added in zip(once, onto_ones):
        exact(added, grad + 1)


def test_ms_deform_attn_half_precision_computes_in_float32():
    """float16 / bfloat16 inputs (AMP: mmcv casts the locations and weights to value's dtype)
    are computed in float32 and written back rounded once."""
    for dtype in (torch.float16, torch.bfloat16):
        value, shapes, starts, locations, weights = (t.to(dtype) if t.is_floating_point() else t
                                                     for t in msda_inputs())
        grad_output = torch.randn(2, 4, 12, generator=torch.Generator().manual_seed(3)).to(dtype)
        as_float = [t.float() for t in (value, locations, weights)]
        out = mmcv_kernels.ms_deform_attn_forward(value, shapes, starts, locations, weights,
                                                   64)
        assert out.dtype == dtype
        exact(out, mmcv_kernels.ms_deform_attn_forward(
            as_float[0], shapes, starts, *as_float[1:], 64).to(dtype))
        grads = msda_backward(mmcv_kernels.ms_deform_attn_backward, value, shapes, starts,
                              locations, weights, grad_output)
        expected = msda_backward(mmcv_kernels.ms_deform_attn_backward, as_float[0], shapes,
                                 starts, *as_float[1:], grad_output.float())
        for grad, want in zip(grads, expected):
            assert grad.dtype == dtype
            exact(grad, want.to(dtype))


def test_ms_deform_attn_refuses_inconsistent_level_starts():
    value, shapes, _, locations, weights = msda_inputs()
    with pytest.raises(ValueError, match=r'level_start_index is \[0, 10\].*cumsum'):
        mmcv_kernels.ms_deform_attn_forward(value, shapes, torch.tensor([0, 10]), locations,
                                             weights, 64)
    with pytest.raises(ValueError, match=r'21 keys.*value has 20 keys'):
        mmcv_kernels.ms_deform_attn_backward(
            value[:, :20], shapes, torch.tensor([0, 15]), locations, weights,
            torch.zeros(2, 4, 12), torch.zeros(2, 20, 3, 4), torch.zeros_like(locations),
            torch.zeros_like(weights), 64)


def test_ms_deform_attn_function_goes_through_the_route(routed_on_cpu, monkeypatch):
    """mmcv's MultiScaleDeformableAttnFunction (what MultiScaleDeformableAttention runs for a
    CUDA value) reaches the routed forward and backward, and gives the output and the three
    gradients of mmcv's PyTorch path."""
    from mmcv.ops.multi_scale_deform_attn import (MultiScaleDeformableAttnFunction,
                                                  multi_scale_deformable_attn_pytorch)
    calls = []
    routed = msda_module.ext_module
    for name in ('ms_deform_attn_forward', 'ms_deform_attn_backward'):
        function = getattr(routed, name)
        monkeypatch.setattr(routed, name, lambda *a, _f=function, _n=name, **k: (
            calls.append(_n), _f(*a, **k))[1])
    value, shapes, starts, locations, weights = msda_inputs()
    grad_output = torch.randn(2, 4, 12, generator=torch.Generator().manual_seed(3))
    out, grads = autograd_of(
        lambda v, l, w: MultiScaleDeformableAttnFunction.apply(v, shapes, starts, l, w, 64),
        value, locations, weights, grad_output)
    assert calls == ['ms_deform_attn_forward', 'ms_deform_attn_backward']
    expected_out, expected_grads = autograd_of(
        lambda v, l, w: multi_scale_deformable_attn_pytorch(v, shapes, l, w),
        value, locations, weights, grad_output)
    exact(out, expected_out)
    for grad, want in zip(grads, expected_grads):
        exact(grad, want)


# ------------------------------------------------------------------------------ focal loss
focal_module = importlib.import_module('mmcv.ops.focal_loss')


def logits_and_targets(dtype=torch.float32):
    """(40, 5) logits in [-8, 8) and class indices 0..5 (5: background)."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.rand(40, 5, generator=g) * 16 - 8).to(dtype)
    targets = torch.randint(0, 6, (40,), generator=g)
    return logits, targets


def focal_forward(input, target, weight=None, gamma=2.0, alpha=0.25):
    output = torch.zeros_like(input)
    weight = input.new_empty(0) if weight is None else weight
    mmcv_kernels.sigmoid_focal_loss_forward(input, target, weight, output, gamma=gamma,
                                             alpha=alpha)
    return output


def focal_backward(input, target, weight=None, gamma=2.0, alpha=0.25, fill=0.0):
    grad_input = torch.full_like(input, fill)
    weight = input.new_empty(0) if weight is None else weight
    mmcv_kernels.sigmoid_focal_loss_backward(input, target, weight, grad_input, gamma=gamma,
                                              alpha=alpha)
    return grad_input


def mmdet_focal(logits, targets, gamma, alpha):
    """mmdet's own focal loss on probabilities and one-hot targets (binary cross-entropy times
    the focal weight), per element."""
    from mmdet.models.losses.focal_loss import py_focal_loss_with_prob
    return py_focal_loss_with_prob(logits.sigmoid(), targets, gamma=gamma, alpha=alpha,
                                   reduction='none')


@pytest.mark.parametrize('gamma,alpha', [(2.0, 0.25), (0.0, 0.5), (1.5, 0.75)])
def test_sigmoid_focal_loss_equals_mmdet_focal_loss(gamma, alpha):
    logits, targets = logits_and_targets(torch.float64)
    loss = focal_forward(logits, targets, gamma=gamma, alpha=alpha)
    leaf = logits.clone().requires_grad_()
    expected = mmdet_focal(leaf, targets, gamma, alpha)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-9, atol=1e-12)
    (expected_grad,) = torch.autograd.grad(expected.sum(), leaf)
    grad = focal_backward(logits, targets, gamma=gamma, alpha=alpha)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)
    assert expected_grad.abs().max() > 0.1 and (targets == 5).any()
    # float32, as the recipes run it: 1 - p loses digits for large logits, as in the kernel
    loss32 = focal_forward(logits.float(), targets, gamma=gamma, alpha=alpha)
    torch.testing.assert_close(loss32, loss.float(), rtol=1e-4, atol=1e-6)


def test_sigmoid_focal_loss_clamps_as_the_kernel_and_weights_rows_by_class():
    logits = torch.tensor([[-100.0, 100.0], [100.0, -100.0]])
    targets = torch.tensor([0, 2])
    loss = focal_forward(logits, targets)
    log_tiny = math.log(torch.finfo(torch.float32).tiny)  # -87.34: log p clamped at FLT_MIN
    torch.testing.assert_close(loss, torch.tensor([[-0.25 * log_tiny, -0.75 * log_tiny],
                                                   [-0.75 * log_tiny, 0.0]]))
    logits, targets = logits_and_targets()
    targets = targets.clamp(max=4)
    weight = torch.tensor([1.0, 2.0, 0.5, 0.0, 3.0])
    exact(focal_forward(logits, targets, weight), focal_forward(logits, targets)
          * weight[targets][:, None])
    exact(focal_backward(logits, targets, weight), focal_backward(logits, targets)
          * weight[targets][:, None])
    with pytest.raises(ValueError, match='a target is 5 .background'):
        focal_forward(logits, torch.full((40,), 5), weight)


def test_sigmoid_focal_loss_writes_its_buffers_and_computes_half_in_float32():
    logits, targets = logits_and_targets()
    exact(focal_backward(logits, targets, fill=7.0), focal_backward(logits, targets))
    output = torch.full_like(logits, 7.0)
    mmcv_kernels.sigmoid_focal_loss_forward(logits, targets, logits.new_empty(0), output,
                                             2.0, 0.25)
    exact(output, focal_forward(logits, targets))
    for dtype in (torch.float16, torch.bfloat16):
        half = logits.to(dtype)
        loss, grad = focal_forward(half, targets), focal_backward(half, targets)
        assert loss.dtype == grad.dtype == dtype
        exact(loss, focal_forward(half.float(), targets).to(dtype))
        exact(grad, focal_backward(half.float(), targets).to(dtype))


def test_mmdet_sigmoid_focal_loss_goes_through_the_route(routed_on_cpu, monkeypatch):
    """mmdet's sigmoid_focal_loss (what its FocalLoss runs for CUDA logits and class indices)
    reaches the routed forward and backward and gives the loss and gradient of mmdet's
    one-hot path, with per-row weights and an average factor."""
    from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss, sigmoid_focal_loss
    calls = []
    routed = focal_module.ext_module
    for name in ('sigmoid_focal_loss_forward', 'sigmoid_focal_loss_backward'):
        function = getattr(routed, name)
        monkeypatch.setattr(routed, name, lambda *a, _f=function, _n=name, **k: (
            calls.append(_n), _f(*a, **k))[1])
    logits, targets = logits_and_targets()
    weight = torch.rand(40, generator=torch.Generator().manual_seed(1))
    results = []
    for function, target in ((sigmoid_focal_loss, targets),
                             (py_sigmoid_focal_loss,
                              torch.nn.functional.one_hot(targets, 6)[:, :5])):
        leaf = logits.clone().requires_grad_()
        loss = function(leaf, target, weight, gamma=2.0, alpha=0.25, reduction='mean',
                        avg_factor=17.0)
        loss.backward()
        results.append((loss.detach(), leaf.grad))
    assert calls == ['sigmoid_focal_loss_forward', 'sigmoid_focal_loss_backward']
    (loss, grad), (expected, expected_grad) = results
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-7)
    assert expected > 0.01


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
