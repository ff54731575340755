"""Speed and memory of our ConvNeXt against timm's, measured side by side in one run.

    python tools/analysis/benchmark.py                # full run (about 10-15 minutes on 2 cores)
    python tools/analysis/benchmark.py --quick        # small shapes, seconds (used by the tests)

Prints a table and one JSON line per figure (``{"figure": ..., "value": ..., "unit": ...}``).
Every time is the median of ``--repeats`` runs after warm-up, contestants called round-robin;
every ratio compares figures measured in this same process. The fast-path figures come last,
because the fast path tunes the process's allocator for good. FLOP/s count a multiply-add as 2
FLOPs, as the matmul peaks do; a "headroom" figure is the fp32 matmul peak over what our eager
path achieves: the most any fp32 implementation could gain on it.
"""
import argparse
import copy
import json
import os.path as osp
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from convnext_dense.fast import (autocast_dtype, bf16_supported,  # noqa: E402
                                 enable_fast_inference)
from convnext_dense.models import ConvNeXt, convert_checkpoint  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DETECTOR_CONFIG = osp.join(ROOT, 'configs/detection/cascade_convnext_t_coco.py')


class Report:
    """Collects figures; prints each as a JSON line and, at the end, as a table."""

    def __init__(self):
        self.rows = []

    def add(self, figure: str, value: float, unit: str, **extra):
        row = dict(figure=figure, value=round(value, 4), unit=unit, **extra)
        self.rows.append(row)
        print(json.dumps(row), flush=True)

    def table(self) -> str:
        width = max(len(r['figure']) for r in self.rows)
        return '\n'.join(f"{r['figure']:<{width}}  {r['value']:>12.4g} {r['unit']}"
                         for r in self.rows)


def run_times(fns: Dict[str, Callable], warmup: int, repeats: int) -> Dict[str, List[float]]:
    """Wall times (s) of ``repeats`` calls of each function, called round-robin (A B A B ...)
    after ``warmup`` rounds, so that drifts of a shared machine hit every contestant alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median_seconds(fns: Dict[str, Callable], warmup: int, repeats: int) -> Dict[str, float]:
    """Median of :func:`run_times` per function."""
    return {name: statistics.median(t) for name, t in run_times(fns, warmup, repeats).items()}


def count_flops(fn) -> float:
    """FLOPs of one call (multiply-add = 2), from torch's flop counter. Counted with autograd
    on, so that our backbone takes its plain (countable) path, not the fused oneDNN kernels."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter, torch.enable_grad():
        fn()
    return float(counter.get_total_flops())


def matmul_peak(dtype: torch.dtype, size: int, repeats: int) -> float:
    """GFLOP/s of a square ``size`` x ``size`` matmul in ``dtype``: the best of ``repeats``
    after a warm-up (a peak, unlike the medians of the other figures)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    seconds = min(run_times(dict(mm=lambda: torch.mm(a, b)), 1, repeats)['mm'])
    return 2 * size ** 3 / seconds / 1e9


def peak_memory_bytes(fn) -> float:
    """Peak bytes held by torch's CPU allocator during ``fn`` (allocations made inside it)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == '[memory]'
                     and e.device_type() == torch.autograd.DeviceType.CPU),
                    key=lambda e: e.start_ns())
    held = peak = 0
    for event in events:
        held += event.nbytes()
        peak = max(peak, held)
    return float(peak)


def paired_backbones():
    """Our ConvNeXt-T and timm's on identical (non-trivial) weights."""
    import timm
    reference = timm.create_model('convnext_tiny', pretrained=False)
    ours = ConvNeXt('tiny', layer_scale_init_value=1.0)
    ours.load_state_dict(convert_checkpoint(reference.state_dict()), strict=False)
    return ours, reference


def bench_backbone_inference(report, ours, reference, shapes, repeats):
    """Our eager fp32 backbone against timm's, per input shape; returns {shape: (seconds,
    FLOPs)}."""
    seconds = {}
    for shape in shapes:
        tag = 'x'.join(map(str, shape))
        x = torch.randn(*shape)
        flops = count_flops(lambda: ours(x))
        with torch.no_grad():
            t = median_seconds(dict(ours=lambda: ours(x),
                                    timm=lambda: reference.forward_features(x)), 2, repeats)
        for name in ('ours', 'timm'):
            report.add(f'backbone_infer_{tag}_{name}_fp32', shape[0] / t[name], 'img/s',
                       gflops=round(flops / t[name] / 1e9, 1))
        report.add(f'backbone_infer_{tag}_ours_over_timm', t['timm'] / t['ours'], 'x')
        seconds[shape] = t['ours'], flops
    return seconds


def bench_backbone_fast(report, ours, eager_seconds, repeats):
    """Our fastest path, against the eager figures measured earlier in this run."""
    fast_model = enable_fast_inference(copy.deepcopy(ours))
    for shape, (t_eager, flops) in eager_seconds.items():
        tag = 'x'.join(map(str, shape))
        x = torch.randn(*shape)
        with torch.no_grad():
            deviation = max((a - b.float()).abs().max().item()
                            for a, b in zip(ours(x), fast_model(x)))
            t_fast = median_seconds(dict(fast=lambda: fast_model(x)), 2, repeats)['fast']
        report.add(f'backbone_infer_{tag}_ours_fast', shape[0] / t_fast, 'img/s',
                   gflops=round(flops / t_fast / 1e9, 1), path=str(fast_model.fast_inference))
        report.add(f'backbone_infer_{tag}_fast_over_ours_fp32', t_eager / t_fast, 'x')
        report.add(f'backbone_infer_{tag}_fast_max_abs_deviation', deviation, '')


def bench_backbone_training(report, ours, reference, shape, repeats):
    ours_cp = ConvNeXt('tiny', layer_scale_init_value=1.0, with_cp=True)
    ours_cp.load_state_dict(ours.state_dict())
    x = torch.randn(*shape)
    tag = 'x'.join(map(str, shape))

    def step(forward, model):
        def run():
            model.zero_grad(set_to_none=True)
            outputs = forward(x)
            outputs = outputs if isinstance(outputs, (tuple, list)) else [outputs]
            sum(o.float().mean() for o in outputs).backward()
        return run

    for model in (ours, reference, ours_cp):
        model.train()
    variants = dict(ours=step(ours, ours), timm=step(reference.forward_features, reference),
                    ours_with_cp=step(ours_cp, ours_cp))
    # forward + backward = 3x the forward's FLOPs (gradients of inputs and of weights); torch's
    # counter overcounts the depthwise convolution's backward about 90-fold
    flops = 3 * count_flops(lambda: ours(x))
    times = median_seconds(variants, 1, repeats)
    memory = {name: peak_memory_bytes(run) for name, run in variants.items()}
    for name in variants:
        report.add(f'backbone_train_{tag}_{name}', shape[0] / times[name], 'img/s',
                   gflops=round(flops / times[name] / 1e9, 1),
                   peak_mib=round(memory[name] / 2 ** 20, 1))
    report.add(f'backbone_train_{tag}_ours_over_timm', times['timm'] / times['ours'], 'x')
    report.add(f'backbone_train_{tag}_with_cp_memory_ratio',
               memory['ours_with_cp'] / memory['ours'], 'x')
    report.add(f'backbone_train_{tag}_with_cp_time_ratio',
               times['ours_with_cp'] / times['ours'], 'x')
    for model in (ours, reference):
        model.eval()


def build_detector(config, size):
    """Cascade Mask R-CNN (random weights) and one synthetic ``size`` image as a test batch."""
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    register_all_modules()
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model).eval()
    height, width = size
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    meta = dict(img_shape=(height, width), ori_shape=(height, width), scale_factor=(1.0, 1.0),
                pad_shape=(height, width))
    return model, dict(inputs=[image], data_samples=[DetDataSample(metainfo=meta)])


def bench_detector_eager(report, model, data, tag, repeats):
    """The test step per image in eager fp32; returns (seconds, FLOPs)."""
    flops = count_flops(lambda: model.test_step(data))
    with torch.no_grad():
        t_eager = median_seconds(dict(eager=lambda: model.test_step(data)), 1, repeats)['eager']
    report.add(f'detector_test_step_{tag}_eager_fp32', t_eager, 's/img',
               gflops=round(flops / t_eager / 1e9, 1), model_gflop=round(flops / 2e9, 1))
    return t_eager, flops


def bench_detector_fast(report, model, data, tag, repeats, t_eager, flops):
    enable_fast_inference(model)
    with torch.no_grad():
        t_fast = median_seconds(dict(fast=lambda: model.test_step(data)), 1, repeats)['fast']
    report.add(f'detector_test_step_{tag}_fast', t_fast, 's/img',
               gflops=round(flops / t_fast / 1e9, 1), path=str(model.fast_inference))
    report.add(f'detector_test_step_{tag}_fast_over_eager', t_eager / t_fast, 'x')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='small shapes, for smoke tests')
    parser.add_argument('--repeats', type=int, default=None)
    parser.add_argument('--no-fast', action='store_true', help='skip the fast-path figures')
    parser.add_argument('--no-detector', action='store_true', help='skip the detector figures')
    parser.add_argument('--detector-config', default=DETECTOR_CONFIG)
    args = parser.parse_args(argv)

    quick = args.quick
    repeats = args.repeats or (1 if quick else 5)
    report = Report()
    torch.manual_seed(0)
    print(f'# torch {torch.__version__}, {torch.get_num_threads()} threads, '
          f'native bf16: {bf16_supported()}, fast-path dtype: {autocast_dtype("cpu")}',
          flush=True)

    peak_size = 256 if quick else 3072
    peak = matmul_peak(torch.float32, peak_size, repeats)
    # without native bf16 a 3072^2 bf16 matmul takes minutes: a smaller one shows the rate
    bf16_size = 256 if quick else (3072 if bf16_supported() else 512)
    report.add('matmul_peak_bf16', matmul_peak(torch.bfloat16, bf16_size, repeats), 'GFLOP/s')

    # Eager figures first: the fast path tunes the process's allocator for good.
    ours, reference = paired_backbones()
    ours.eval()
    reference.eval()
    shapes = [(1, 3, 64, 96)] if quick else [(1, 3, 800, 1216), (32, 3, 224, 224)]
    eager_seconds = bench_backbone_inference(report, ours, reference, shapes, repeats)
    bench_backbone_training(report, ours, reference,
                            (2, 3, 64, 64) if quick else (2, 3, 512, 512), repeats)
    if not args.no_detector:
        size = (128, 192) if quick else (800, 1216)
        tag = f'{size[0]}x{size[1]}'
        detector, data = build_detector(args.detector_config, size)
        t_detector, detector_flops = bench_detector_eager(report, detector, data, tag, repeats)
    if not args.no_fast:
        bench_backbone_fast(report, ours, eager_seconds, repeats)
        if not args.no_detector:
            bench_detector_fast(report, detector, data, tag, repeats, t_detector,
                                detector_flops)
    # The machine's speed drifts (shared host): the fp32 peak is the better of a measurement
    # at the start and one at the end. Headroom: the most any fp32 path could gain on a figure.
    peak = max(peak, matmul_peak(torch.float32, peak_size, repeats))
    report.add('matmul_peak_fp32', peak, 'GFLOP/s')
    for shape, (seconds, flops) in eager_seconds.items():
        report.add(f"backbone_infer_{'x'.join(map(str, shape))}_fp32_headroom",
                   peak * 1e9 * seconds / flops, 'x')
    if not args.no_detector:
        report.add(f'detector_test_step_{tag}_fp32_headroom',
                   peak * 1e9 * t_detector / detector_flops, 'x')
    print('\n' + report.table())
    return report


if __name__ == '__main__':
    main()
