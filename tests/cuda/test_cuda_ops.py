"""mmcv's RoIAlign and NMS on CUDA tensors give the numbers of mmcv's CPU kernels, and its
MultiScaleDeformableAttention those of its PyTorch path on the CPU: through mmcv's ops as the
recipes call them (routed to torchvision and to mmcv's PyTorch path by
convnext_dense.compat.mmcv_cuda_ops where mmcv has no CUDA kernels, mmcv's own kernels where it
has), and the routed functions themselves. Forward and backward, float32 and AMP dtypes."""
import importlib

import numpy as np
import pytest
import torch

import convnext_dense  # noqa: F401  (applies the compat fixes, the routing among them)
from convnext_dense.compat import mmcv_cuda_ops
from convnext_dense.ops import mmcv_kernels

pytestmark = pytest.mark.cuda

COMPILED = importlib.import_module('mmcv._ext')
roi_align_module = importlib.import_module('mmcv.ops.roi_align')
nms_module = importlib.import_module('mmcv.ops.nms')
CUDA = 'cuda'


def routed() -> bool:
    return not mmcv_cuda_ops.mmcv_has_cuda_ops()


def test_routing_is_in_place_exactly_where_mmcv_lacks_cuda_kernels():
    for name in mmcv_cuda_ops.ROUTES:
        ext = importlib.import_module(name).ext_module
        if routed():
            assert isinstance(ext, mmcv_cuda_ops.RoutedExtension), name
            assert ext.compiled is COMPILED and ext.device_types == ('cuda',)
        else:
            assert ext is COMPILED, name


def feature_map():
    torch.manual_seed(0)
    return torch.randn(2, 64, 50, 68)


def rois():
    """Image-pixel RoIs at stride 4 over a 272x200 image: random ones, partly outside, tiny."""
    rng = np.random.default_rng(0)
    xy = rng.uniform(-30, 260, (200, 2))
    wh = rng.uniform(0.5, 150, (200, 2))
    boxes = np.concatenate([rng.integers(0, 2, (200, 1)), xy, xy + wh], axis=1)
    return torch.from_numpy(boxes.astype(np.float32))


CONFIGS = [((7, 7), 0.25, 0, True), ((7, 7), 0.25, 0, False), ((14, 14), 0.25, 2, True),
           ((14, 14), 0.25, 2, False)]


def _roi_align_cpu_reference(x, boxes, size, scale, ratio, aligned, grad):
    """mmcv's compiled CPU kernels: output and input gradient."""
    out = x.new_zeros(len(boxes), x.size(1), *size)
    empty = x.new_zeros(0)
    COMPILED.roi_align_forward(x, boxes, out, empty, empty, aligned_height=size[0],
                               aligned_width=size[1], spatial_scale=scale, sampling_ratio=ratio,
                               pool_mode=1, aligned=aligned)
    grad_input = torch.zeros_like(x)
    COMPILED.roi_align_backward(grad, boxes, empty, empty, grad_input, aligned_height=size[0],
                                aligned_width=size[1], spatial_scale=scale,
                                sampling_ratio=ratio, pool_mode=1, aligned=aligned)
    return out, grad_input


@pytest.mark.parametrize('size,scale,ratio,aligned', CONFIGS)
def test_roi_align_layer_on_cuda_equals_mmcv_cpu(size, scale, ratio, aligned):
    from mmcv.ops import RoIAlign
    x, boxes = feature_map(), rois()
    torch.manual_seed(1)
    grad = torch.randn(len(boxes), x.size(1), *size)
    expected, expected_grad = _roi_align_cpu_reference(x, boxes, size, scale, ratio, aligned,
                                                       grad)
    x_cuda = x.to(CUDA).requires_grad_()
    layer = RoIAlign(size, spatial_scale=scale, sampling_ratio=ratio, aligned=aligned)
    out = layer(x_cuda, boxes.to(CUDA))
    out.backward(grad.to(CUDA))
    # the same bilinear weights and sums, rounded in another order (the GPU contracts
    # multiply-adds into FMAs): measured up to 5e-6 of the map's largest value on an H100
    atol = 1e-5 * float(x.abs().max())
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-5, atol=atol)
    # atomic adds in another order
    torch.testing.assert_close(x_cuda.grad.cpu(), expected_grad, rtol=1e-4, atol=1e-4)
    # the routed functions themselves, also where mmcv has CUDA kernels
    direct = torch.zeros(len(boxes), x.size(1), *size, device=CUDA)
    mmcv_kernels.roi_align_forward(x.to(CUDA), boxes.to(CUDA), direct, None, None, *size,
                                    scale, ratio, 1, aligned)
    torch.testing.assert_close(direct.cpu(), expected, rtol=1e-5, atol=atol)
    direct_grad = torch.zeros(x.shape, device=CUDA)
    mmcv_kernels.roi_align_backward(grad.to(CUDA), boxes.to(CUDA), None, None, direct_grad,
                                     *size, scale, ratio, 1, aligned)
    torch.testing.assert_close(direct_grad.cpu(), expected_grad, rtol=1e-4, atol=1e-4)


def test_roi_align_under_fp16_and_bf16_autocast():
    """As the AMP recipes call it: a half-precision map and RoIs (mmdet casts the RoIs to the
    map's dtype) give the float32 kernel's numbers, rounded, and float32 gradients back."""
    from mmcv.ops import RoIAlign
    layer = RoIAlign((7, 7), spatial_scale=0.25, sampling_ratio=0, aligned=True)
    for dtype, tol in ((torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)):
        if dtype == torch.bfloat16 and not routed():
            continue  # mmcv's own CUDA kernels take float16 but not bfloat16
        x, boxes = feature_map().to(dtype), rois().to(dtype)
        expected, expected_grad = _roi_align_cpu_reference(
            x.float(), boxes.float(), (7, 7), 0.25, 0, True,
            torch.ones(len(boxes), x.size(1), 7, 7))
        x_cuda = x.to(CUDA).requires_grad_()
        with torch.autocast(CUDA, dtype=dtype):
            out = layer(x_cuda, boxes.to(CUDA))
        assert out.dtype == dtype
        out.float().sum().backward()
        torch.testing.assert_close(out.float().cpu(), expected, rtol=tol, atol=tol)
        torch.testing.assert_close(x_cuda.grad.float().cpu(), expected_grad, rtol=tol,
                                   atol=tol * 10)


def test_roi_align_with_torchvision_on_cuda():
    import torchvision
    x, boxes = feature_map().to(CUDA), rois().to(CUDA)
    out = torch.zeros(len(boxes), x.size(1), 7, 7, device=CUDA)
    mmcv_kernels.roi_align_forward(x, boxes, out, None, None, 7, 7, 0.25, 0, 1, True)
    torch.testing.assert_close(out, torchvision.ops.roi_align(x, boxes, (7, 7), 0.25, 0, True),
                               rtol=0, atol=0)


def test_mask_targets_on_cuda_equal_cpu():
    """mmdet's mask targets (BitmapMasks.crop_and_resize, mmcv's roi_align under another
    name) on CUDA and on the CPU."""
    from mmdet.structures.mask import BitmapMasks
    rng = np.random.default_rng(0)
    masks = BitmapMasks((rng.random((6, 120, 160)) > 0.4).astype(np.uint8), 120, 160)
    boxes = np.concatenate([rng.uniform(-10, 100, (20, 2)), rng.uniform(100, 170, (20, 2))],
                           axis=1).astype(np.float32)
    inds = torch.from_numpy(rng.integers(0, 6, 20))
    # before binarising: a bilinear mean of 0/1 pixels can be 0.5 exactly, give or take a bit
    on_cpu = masks.crop_and_resize(boxes, (28, 28), inds, device='cpu', binarize=False)
    on_cuda = masks.crop_and_resize(boxes, (28, 28), inds.to(CUDA), device=CUDA, binarize=False)
    np.testing.assert_allclose(on_cuda.to_ndarray(), on_cpu.to_ndarray(), rtol=0, atol=1e-5)
    assert on_cpu.to_ndarray().max() > 0.5


def test_max_pool_roi_align_on_cuda_is_refused_with_the_fix():
    if not routed():
        pytest.skip("mmcv has its own CUDA kernels, pool_mode='max' among them")
    from mmcv.ops import RoIAlign
    layer = RoIAlign((7, 7), spatial_scale=0.25, pool_mode='max')
    with pytest.raises(NotImplementedError, match='MMCV_CUDA=1'):
        layer(feature_map().to(CUDA), rois().to(CUDA))


def boxes_and_scores(n=2000, ties=True, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 800, (n, 2))
    wh = rng.uniform(8, 200, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = (rng.integers(0, 16, n) / 16 if ties else rng.random(n)).astype(np.float32)
    labels = rng.integers(0, 10, n)
    return torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels)


@pytest.mark.parametrize('iou_threshold', [0.3, 0.5, 0.7])
def test_nms_and_batched_nms_on_cuda_keep_mmcv_cpu_indices(iou_threshold):
    """Identical kept indices, equal scores included (torchvision sorts stably, as the CPU
    kernel does; mmcv's own CUDA kernel does not, so ties are checked only when routed)."""
    from mmcv.ops import batched_nms, nms
    for seed in range(3):
        boxes, scores, labels = boxes_and_scores(ties=routed(), seed=seed)
        expected = COMPILED.nms(boxes, scores, iou_threshold=iou_threshold, offset=0)
        dets, keep = nms(boxes.to(CUDA), scores.to(CUDA), iou_threshold)
        assert torch.equal(keep.cpu(), expected)
        torch.testing.assert_close(dets.cpu(), torch.cat([boxes, scores[:, None]], 1)[expected],
                                   rtol=0, atol=0)
        direct = mmcv_kernels.nms(boxes.to(CUDA), scores.to(CUDA), iou_threshold, 0)
        boxes_, scores_, _ = boxes_and_scores(ties=True, seed=seed)
        assert torch.equal(mmcv_kernels.nms(boxes_.to(CUDA), scores_.to(CUDA), iou_threshold,
                                             0).cpu(),
                           COMPILED.nms(boxes_, scores_, iou_threshold=iou_threshold, offset=0))
        assert torch.equal(direct.cpu(), expected)
        # above split_thr, batched_nms sorts the kept scores itself, on the tensors' device:
        # equal scores there come in the device's order, so that case gets distinct scores
        for cfg, data in ((dict(iou_threshold=iou_threshold), (boxes, scores, labels)),
                          (dict(iou_threshold=iou_threshold, split_thr=500),
                           boxes_and_scores(ties=False, seed=seed))):
            cpu_dets, cpu_keep = batched_nms(*data, dict(cfg))
            gpu_dets, gpu_keep = batched_nms(*(t.to(CUDA) for t in data), dict(cfg))
            assert torch.equal(gpu_keep.cpu(), cpu_keep)
            torch.testing.assert_close(gpu_dets.cpu(), cpu_dets, rtol=0, atol=0)


def test_nms_on_half_precision_boxes():
    from mmcv.ops import nms
    boxes, scores, _ = boxes_and_scores(ties=False)
    expected = COMPILED.nms(boxes.half().float(), scores.half().float(), iou_threshold=0.5,
                            offset=0)
    _, keep = nms(boxes.half().to(CUDA), scores.half().to(CUDA), 0.5)
    if routed():  # compared in float32, as the CPU kernel on the same values
        assert torch.equal(keep.cpu(), expected)
    else:
        assert len(set(keep.tolist()) ^ set(expected.tolist())) <= 2


# ---------------------------------------------------------------------- deformable attention
def _deformable_attention_case():
    """mmcv's MultiScaleDeformableAttention (64 dims, 4 heads, 3 levels, 4 points) with its
    offsets and attention logits moved off their init, so that samples fall across and outside
    the maps and the weights are not uniform; inputs and an output gradient."""
    from mmcv.ops import MultiScaleDeformableAttention
    torch.manual_seed(0)
    layer = MultiScaleDeformableAttention(embed_dims=64, num_heads=4, num_levels=3,
                                          num_points=4, dropout=0.0, batch_first=True)
    with torch.no_grad():
        layer.sampling_offsets.weight.normal_(0, 0.5)
        layer.attention_weights.weight.normal_(0, 0.5)
    shapes = torch.tensor([[20, 30], [10, 15], [5, 8]])
    sizes = shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    inputs = dict(query=torch.randn(2, 50, 64), value=torch.randn(2, int(sizes.sum()), 64),
                  reference_points=torch.rand(2, 50, 3, 2), spatial_shapes=shapes,
                  level_start_index=starts)
    return layer, inputs, torch.randn(2, 50, 64)


def _run_deformable_attention(layer, inputs, grad, device, dtype=None):
    import copy
    layer = copy.deepcopy(layer).to(device)
    inputs = {k: v.detach().to(device) for k, v in inputs.items()}  # new leaves
    inputs['query'].requires_grad_()
    inputs['value'].requires_grad_()
    with torch.autocast(device, dtype=dtype or torch.float16, enabled=dtype is not None):
        out = layer(**inputs)
    out.float().backward(grad.to(device))
    grads = {name: p.grad for name, p in layer.named_parameters()}
    grads.update(query=inputs['query'].grad, value=inputs['value'].grad)
    return out, grads


def test_deformable_attention_on_cuda_equals_the_cpu_pytorch_path(monkeypatch):
    """Forward and every gradient (query, value, the four projections) of
    MultiScaleDeformableAttention on CUDA (mmcv's compiled Function: routed to mmcv's PyTorch
    path where mmcv lacks CUDA kernels, mmcv's own kernel otherwise) equal the same layer on
    the CPU (mmcv's PyTorch path)."""
    module = importlib.import_module('mmcv.ops.multi_scale_deform_attn')
    calls = []
    if routed():
        for name in ('ms_deform_attn_forward', 'ms_deform_attn_backward'):
            function = getattr(module.ext_module, name)
            monkeypatch.setattr(module.ext_module, name, lambda *a, _f=function, _n=name, **k: (
                calls.append(_n), _f(*a, **k))[1])
    layer, inputs, grad = _deformable_attention_case()
    expected, expected_grads = _run_deformable_attention(layer, inputs, grad, 'cpu')
    out, grads = _run_deformable_attention(layer, inputs, grad, CUDA)
    if routed():
        assert calls == ['ms_deform_attn_forward', 'ms_deform_attn_backward']
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-5, atol=1e-5)
    for name, want in expected_grads.items():
        assert want.abs().max() > 0, name
        # sums over many samples, in another order (atomic adds in mmcv's kernel)
        torch.testing.assert_close(grads[name].cpu(), want, rtol=1e-4,
                                   atol=1e-4 * float(want.abs().max()), msg=name)


def test_deformable_attention_under_fp16_and_bf16_autocast():
    """As the AMP recipes call it: value comes in half precision out of the projection; the
    output and the gradients of value and the projections stay within half-precision rounding
    of the float32 CPU path (bfloat16 only where routed: mmcv's own kernel takes float16 but not
    bfloat16). The offsets' and the query's gradients only finite: the offsets, rounded to half
    precision, move samples across pixel borders where the bilinear slopes jump."""
    layer, inputs, grad = _deformable_attention_case()
    expected, expected_grads = _run_deformable_attention(layer, inputs, grad, 'cpu')
    # the largest error over the largest value, measured with the same path on the CPU:
    # output 2.4e-3 (fp16) / 2.0e-2 (bf16), gradients 6.6e-3 / 5.6e-2
    for dtype, out_tol, grad_tol in ((torch.float16, 5e-3, 2e-2), (torch.bfloat16, 4e-2, 0.15)):
        if dtype == torch.bfloat16 and not routed():
            continue
        out, grads = _run_deformable_attention(layer, inputs, grad, CUDA, dtype)
        scale = float(expected.abs().max())
        assert float((out.float().cpu() - expected).abs().max()) <= out_tol * scale, dtype
        for name, want in expected_grads.items():
            assert torch.isfinite(grads[name]).all(), name
            if name == 'query' or name.startswith('sampling_offsets'):
                continue
            error = float((grads[name].float().cpu() - want).abs().max())
            assert error <= grad_tol * float(want.abs().max()), (dtype, name, error)


# ------------------------------------------------------------------------------ focal loss
def test_mmdet_focal_loss_on_cuda_equals_cpu():
    """mmdet's FocalLoss as DINO configures it: for CUDA logits and class indices it runs
    mmcv's sigmoid_focal_loss (routed where mmcv lacks CUDA kernels), on the CPU mmdet's own
    one-hot path. Loss and logit gradient, float32 and (where routed, computed in float32)
    float16 logits; mmcv's own kernel computes in float16, where p of a logit above about 8.3
    rounds to 1 and log(1 - p) to -inf."""
    from mmdet.models.losses import FocalLoss
    loss_fn = FocalLoss(use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(900, 80, generator=g) * 3
    targets = torch.randint(0, 81, (900,), generator=g)  # 80: background
    weights = torch.rand(900, generator=g)
    results = []
    runs = [('cpu', torch.float32), (CUDA, torch.float32)] + [(CUDA, torch.float16)] * routed()
    for device, dtype in runs:
        leaf = logits.detach().to(device, dtype).requires_grad_()  # a new leaf each time
        loss = loss_fn(leaf, targets.to(device), weights.to(device), avg_factor=123.0)
        loss.backward()
        results.append((loss.detach().float().cpu(), leaf.grad.float().cpu()))
    (expected, expected_grad), (loss, grad) = results[:2]
    assert expected > 0.1 and expected_grad.abs().max() > 1e-4
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4,
                               atol=1e-5 * float(expected_grad.abs().max()))
    for half_loss, half_grad in results[2:]:  # the logits rounded to float16
        torch.testing.assert_close(half_loss, expected, rtol=1e-2, atol=0)
        torch.testing.assert_close(half_grad, expected_grad, rtol=1e-2,
                                   atol=1e-2 * float(expected_grad.abs().max()))
