"""The fast inference path: same answers as eager fp32 within stated tolerances."""
import copy
import os.path as osp
import subprocess
import sys

import pytest
import torch

import convnext_dense  # noqa: F401
from convnext_dense.inference.fast import autocast_dtype, enable_fast_inference, to_float32
from convnext_dense.models import ConvNeXt

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# Deviation allowed on the backbone's LayerNorm-ed outputs (values of order 1): fp32 paths
# only reorder sums; bf16 keeps 8 mantissa bits.
FP32_TOLERANCE = 1e-4
BF16_TOLERANCE = 0.25


def test_fused_eager_inference_equals_autograd_path():
    """The oneDNN fused kernels used under no_grad give the autograd path's numbers."""
    model = ConvNeXt('v2-atto', layer_scale_init_value=0.5).eval()
    with torch.no_grad():
        for block in model.stages[1]:
            block.grn.gamma.normal_()
            block.grn.beta.normal_()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        fused = model(x)
    reference = model(x)  # grad enabled: the plain autograd path
    for a, b in zip(fused, reference):
        assert (a - b).abs().max().item() < 1e-5


@pytest.mark.slow  # torch.compile takes a minute or two on 2 cores
def test_fast_backbone_within_tolerance():
    model = ConvNeXt('v2-atto').eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
        fast = enable_fast_inference(copy.deepcopy(model), compile=True)
        got = fast(x)
    tolerance = BF16_TOLERANCE if autocast_dtype('cpu') else FP32_TOLERANCE
    for a, b in zip(expected, got):
        assert b.dtype == torch.float32 or autocast_dtype('cpu') is not None
        assert (a - b.float()).abs().max().item() < tolerance
    assert fast.state_dict().keys() == model.state_dict().keys()


HEAP_USE = """
import ctypes, resource, sys, torch
from convnext_dense.inference.fast import keep_freed_memory


class MallInfo2(ctypes.Structure):  # glibc >= 2.33
    _fields_ = [(name, ctypes.c_size_t) for name in (
        'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks',
        'fordblks', 'keepcost')]


libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == 'keep':
    assert keep_freed_memory()
start = libc.mallinfo2()
faults = []
for _ in range(4):  # allocate, touch and free 64 MiB, as a large activation does
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 * 2 ** 20)
    live = libc.mallinfo2()
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
freed = libc.mallinfo2()
# growth of the mmap-ed bytes while the tensor lived, and of the heap kept after the frees
print(live.hblkhd - start.hblkhd, freed.arena - start.arena, *faults)
"""


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc tuning')
def test_keep_freed_memory_serves_large_tensors_from_a_heap_it_keeps():
    """By default a 64 MiB tensor is a fresh mmap, returned to the OS when freed, so its
    16384 pages (4 KiB) fault in again at every allocation. With keep_freed_memory it comes
    from the heap, which keeps the freed bytes for the next allocation.

    glibc's own accounting (mallinfo2) is what is asserted: reuse itself shows as iterations
    without page faults, but these VMs run the kernel's proactive reclaim (kdamond), which may
    take idle heap pages back between iterations (seen: 16384 faults in every iteration)."""
    def heap_use(mode):
        output = subprocess.run([sys.executable, '-c', HEAP_USE, mode], check=True,
                                capture_output=True, text=True, env={'OMP_NUM_THREADS': '1'})
        mmapped, kept, *faults = [int(n) for n in output.stdout.split()[-6:]]
        return mmapped, kept, faults
    size = 64 * 2 ** 20
    mmapped, kept, faults = heap_use('default')
    assert mmapped >= size and kept < size and min(faults) > 10000
    mmapped, kept, faults = heap_use('keep')
    assert mmapped < 2 ** 20 and kept >= size


def test_auto_compile_only_where_autocast_applies():
    model = enable_fast_inference(ConvNeXt('v2-atto').eval(), keep_memory=False)
    assert model.fast_inference['compile'] == (autocast_dtype('cpu') is not None)
    assert model.fast_inference['keep_freed_memory'] is False
    if autocast_dtype('cpu') is None:  # fp32: still the eager, fused module
        assert not hasattr(model.forward, '_torchdynamo_orig_callable')


def test_to_float32_reaches_data_elements():
    from mmengine.structures import InstanceData
    instances = InstanceData(bboxes=torch.ones(2, 4, dtype=torch.bfloat16),
                             labels=torch.tensor([1, 2]))
    result = to_float32([instances])[0]
    assert result.bboxes.dtype == torch.float32 and result.labels.dtype == torch.int64


@pytest.mark.parametrize('aligned,sampling_ratio,scale', [(True, 0, 0.25), (False, 2, 1.0)])
def test_parallel_roi_align_is_bit_identical_to_mmcv(aligned, sampling_ratio, scale):
    """The fast path's RoIAlign (torchvision's kernel, RoIs split over threads) gives mmcv's
    numbers exactly, RoIs partly outside the map included."""
    from mmcv.ops import RoIAlign, roi_align
    from convnext_dense.inference.fast import FastRoIAlign, use_fast_roi_align
    torch.manual_seed(0)
    feats = torch.randn(2, 16, 40, 50)
    corner = torch.rand(300, 2) * torch.tensor([45., 35.]) / scale - 3
    size = torch.rand(300, 2) * 30 / scale + 0.5
    rois = torch.cat([torch.randint(0, 2, (300, 1)).float(), corner, corner + size], 1)
    layer = torch.nn.Sequential(RoIAlign((7, 7), scale, sampling_ratio, aligned=aligned))
    assert use_fast_roi_align(layer) == 1 and type(layer[0]) is FastRoIAlign
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # so that the RoIs are split
    try:
        got = layer[0](feats, rois)
    finally:
        torch.set_num_threads(threads)
    expected = roi_align(feats, rois, (7, 7), scale, sampling_ratio, 'avg', aligned)
    assert expected.abs().sum() > 0 and torch.equal(got, expected)
    # a bf16, channels-last map: float32 NCHW inside, the map's dtype outside
    low = feats.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    out = layer[0](low, rois)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, roi_align(low.float().contiguous(), rois, (7, 7), scale,
                                      sampling_ratio, 'avg', aligned).to(torch.bfloat16))


def demo_detector_and_batch():
    """The demo Cascade Mask R-CNN (random weights, seed 0) keeping every candidate, and one
    random 128x192 image."""
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    register_all_modules()
    cfg = Config.fromfile(osp.join(ROOT, 'configs/detection/demo_cascade_convnext_atto_toy.py'))
    cfg.model.test_cfg.rcnn.score_thr = 0.0  # keep every candidate: a strict comparison
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    image = torch.randint(0, 256, (3, 128, 192), dtype=torch.uint8)
    meta = dict(img_shape=(128, 192), ori_shape=(128, 192), scale_factor=(1.0, 1.0),
                pad_shape=(128, 192))
    return model, dict(inputs=[image], data_samples=[DetDataSample(metainfo=meta)])


def test_fast_detector_gives_the_same_detections():
    """Channels-last Cascade Mask R-CNN (RoIAlign fed a contiguous map) matches eager."""
    model, data = demo_detector_and_batch()
    with torch.no_grad():
        expected = model.test_step(data)[0].pred_instances
        fast = enable_fast_inference(copy.deepcopy(model), compile=False, low_precision=False)
        got = fast.test_step(data)[0].pred_instances
    assert len(expected) == len(got) == 20
    assert torch.allclose(expected.scores, got.scores, atol=1e-4)
    assert torch.allclose(expected.bboxes, got.bboxes, atol=1e-2)


def test_fast_path_changes_only_that_model():
    """enable_fast_inference on one detector leaves another detector's RoIAlign layers, and
    mmcv's RoIAlign and NMS, as they were."""
    import importlib
    from mmcv.ops import RoIAlign
    from convnext_dense.inference.fast import FastRoIAlign
    nms_op = importlib.import_module('mmcv.ops.nms').NMSop
    stock_forward, stock_apply = RoIAlign.forward, nms_op.__dict__.get('apply')
    model, data = demo_detector_and_batch()
    other = copy.deepcopy(model)
    fast = enable_fast_inference(model, compile=False, low_precision=False, keep_memory=False)
    kinds = lambda m: {type(layer) for layer in m.modules() if isinstance(layer, RoIAlign)}
    assert kinds(fast) == {FastRoIAlign}
    assert kinds(other) == {RoIAlign}
    assert RoIAlign.forward is stock_forward and nms_op.__dict__.get('apply') is stock_apply
    assert not hasattr(other, 'fast_inference')
    assert all('forward' not in m.__dict__ for m in other.modules())
    with torch.no_grad():
        assert len(other.test_step(data)[0].pred_instances) == 20


def test_bf16_detector_keeps_box_arithmetic_in_float32():
    """bf16 autocast covers backbone, neck and heads only. mmdet builds anchors in the dtype of
    the RPN's outputs: under whole-model autocast every box was bf16, about 0.5 px apart at 100
    px, and RoIAlign's fp32 output broke mmdet's bf16 buffer. (Slow on CPUs without native bf16,
    but small.)"""
    from mmdet.structures.bbox import bbox_overlaps
    model, data = demo_detector_and_batch()
    with torch.no_grad():
        expected = model.test_step(data)[0].pred_instances
        fast = enable_fast_inference(copy.deepcopy(model), compile=False,
                                     low_precision=torch.bfloat16, keep_memory=False)
        got = fast.test_step(data)[0].pred_instances
    assert len(got) == 20 and got.bboxes.dtype == got.scores.dtype == torch.float32
    representable = (got.bboxes.to(torch.bfloat16).float() == got.bboxes).float().mean()
    assert representable < 0.5  # float32 coordinates, not bf16 ones
    top = expected.scores.argmax()
    assert bbox_overlaps(expected.bboxes[top:top + 1], got.bboxes).max() > 0.9


def test_jit_trace_takes_the_traceable_path():
    """FLOP counters and ONNX export trace the model under no_grad: no fused-kernel calls."""
    model = ConvNeXt(dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        for a, b in zip(model(x), traced(x)):
            assert (a - b).abs().max().item() < 1e-5
    assert 'mkldnn' not in str(traced.inlined_graph)
