"""The fast inference path: same answers as eager fp32 within stated tolerances."""
import copy
import importlib.util
import os.path as osp

import pytest
import torch

import convnext_dense  # noqa: F401
from convnext_dense.fast import autocast_dtype, enable_fast_inference, to_float32
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


def test_to_float32_reaches_data_elements():
    from mmengine.structures import InstanceData
    instances = InstanceData(bboxes=torch.ones(2, 4, dtype=torch.bfloat16),
                             labels=torch.tensor([1, 2]))
    result = to_float32([instances])[0]
    assert result.bboxes.dtype == torch.float32 and result.labels.dtype == torch.int64


def test_fast_detector_gives_the_same_detections():
    """Channels-last Cascade Mask R-CNN (RoIAlign fed a contiguous map) matches eager."""
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
    data = dict(inputs=[image], data_samples=[DetDataSample(metainfo=meta)])
    with torch.no_grad():
        expected = model.test_step(data)[0].pred_instances
        fast = enable_fast_inference(copy.deepcopy(model), compile=False, low_precision=False)
        got = fast.test_step(data)[0].pred_instances
    assert len(expected) == len(got) == 20
    assert torch.allclose(expected.scores, got.scores, atol=1e-4)
    assert torch.allclose(expected.bboxes, got.bboxes, atol=1e-2)


@pytest.mark.slow
def test_benchmark_quick_mode_runs():
    spec = importlib.util.spec_from_file_location(
        'benchmark', osp.join(ROOT, 'tools/analysis/benchmark.py'))
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    report = benchmark.main(['--quick', '--repeats', '1'])
    figures = {row['figure']: row['value'] for row in report.rows}
    assert figures['matmul_peak_fp32'] > 0
    assert figures['backbone_infer_1x3x64x96_ours_over_timm'] > 0
    assert 0 < figures['backbone_train_2x3x64x64_with_cp_memory_ratio'] < 1.5
    assert 'detector_test_step_128x192_fast_over_eager' in figures


def test_jit_trace_takes_the_traceable_path():
    """FLOP counters and ONNX export trace the model under no_grad: no fused-kernel calls."""
    model = ConvNeXt(dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        for a, b in zip(model(x), traced(x)):
            assert (a - b).abs().max().item() < 1e-5
    assert 'mkldnn' not in str(traced.inlined_graph)
