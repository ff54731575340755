"""Speed and memory of our ConvNeXt against timm's, measured side by side in one run.

    python tools/analysis/benchmark.py                # full run (about 10-15 minutes on 2 cores)
    python tools/analysis/benchmark.py --quick        # small shapes, seconds (used by the tests)

Prints a table and one JSON line per figure (``{"figure": ..., "value": ..., "unit": ...}``).
Every time is the median of ``--repeats`` runs after warm-up; every ratio compares figures
measured in this same process. FLOP/s count a multiply-add as 2 FLOPs, as the matmul peaks do.
"""
import argparse
import copy
import json
import os.path as osp
import statistics
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from convnext_dense.fast import autocast_dtype, enable_fast_inference  # noqa: E402
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


def median_seconds(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_flops(fn) -> float:
    """FLOPs of one call (multiply-add = 2), from torch's flop counter. Counted with autograd
    on, so that our backbone takes its plain (countable) path, not the fused oneDNN kernels."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter, torch.enable_grad():
        fn()
    return float(counter.get_total_flops())


def matmul_peak(dtype: torch.dtype, size: int, repeats: int) -> float:
    """Achieved GFLOP/s of a square matmul in ``dtype``."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    seconds = median_seconds(lambda: torch.mm(a, b), 2, repeats)
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


def bench_backbone_inference(report, shapes, repeats, fast: bool):
    ours, reference = paired_backbones()
    ours.eval()
    reference.eval()
    for shape in shapes:
        tag = 'x'.join(map(str, shape))
        x = torch.randn(*shape)
        flops = count_flops(lambda: ours(x))
        with torch.no_grad():
            t_ours = median_seconds(lambda: ours(x), 1, repeats)
            t_timm = median_seconds(lambda: reference.forward_features(x), 1, repeats)
        report.add(f'backbone_infer_{tag}_ours_fp32', shape[0] / t_ours, 'img/s',
                   gflops=round(flops / t_ours / 1e9, 1))
        report.add(f'backbone_infer_{tag}_timm_fp32', shape[0] / t_timm, 'img/s',
                   gflops=round(flops / t_timm / 1e9, 1))
        report.add(f'backbone_infer_{tag}_ours_over_timm', t_timm / t_ours, 'x')
        if fast:
            fast_model = enable_fast_inference(copy.deepcopy(ours))
            with torch.no_grad():
                expected = ours(x)
                got = fast_model(x)
                t_fast = median_seconds(lambda: fast_model(x), 1, repeats)
            deviation = max((a - b.float()).abs().max().item() for a, b in zip(expected, got))
            report.add(f'backbone_infer_{tag}_ours_fast', shape[0] / t_fast, 'img/s',
                       gflops=round(flops / t_fast / 1e9, 1), path=str(fast_model.fast_inference))
            report.add(f'backbone_infer_{tag}_fast_over_ours_fp32', t_ours / t_fast, 'x')
            report.add(f'backbone_infer_{tag}_fast_max_abs_deviation', deviation, '')


def bench_backbone_training(report, shape, repeats):
    ours, reference = paired_backbones()
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

    variants = dict(ours=step(ours, ours), timm=step(reference.forward_features, reference),
                    ours_with_cp=step(ours_cp, ours_cp))
    flops = count_flops(variants['ours'])
    times, memory = {}, {}
    for name, run in variants.items():
        times[name] = median_seconds(run, 1, repeats)
        memory[name] = peak_memory_bytes(run)
        report.add(f'backbone_train_{tag}_{name}', shape[0] / times[name], 'img/s',
                   gflops=round(flops / times[name] / 1e9, 1),
                   peak_mib=round(memory[name] / 2 ** 20, 1))
    report.add(f'backbone_train_{tag}_ours_over_timm', times['timm'] / times['ours'], 'x')
    report.add(f'backbone_train_{tag}_with_cp_memory_ratio',
               memory['ours_with_cp'] / memory['ours'], 'x')
    report.add(f'backbone_train_{tag}_with_cp_time_ratio',
               times['ours_with_cp'] / times['ours'], 'x')


def bench_detector(report, config, size, repeats, fast: bool):
    """Cascade Mask R-CNN test step per image (random weights, one synthetic image)."""
    import convnext_dense  # noqa: F401
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
    data = dict(inputs=[image], data_samples=[DetDataSample(metainfo=meta)])
    tag = f'{height}x{width}'
    flops = count_flops(lambda: model.test_step(data))
    with torch.no_grad():
        t_eager = median_seconds(lambda: model.test_step(data), 1, repeats)
    report.add(f'detector_test_step_{tag}_eager_fp32', t_eager, 's/img',
               gflops=round(flops / t_eager / 1e9, 1), model_gflop=round(flops / 2e9, 1))
    if fast:
        enable_fast_inference(model)
        with torch.no_grad():
            t_fast = median_seconds(lambda: model.test_step(data), 1, repeats)
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
    fast = not args.no_fast
    report = Report()
    torch.manual_seed(0)
    print(f'# torch {torch.__version__}, {torch.get_num_threads()} threads, '
          f'fast-path dtype {autocast_dtype("cpu")}', flush=True)

    size = 256 if quick else 2048
    report.add('matmul_peak_fp32', matmul_peak(torch.float32, size, repeats), 'GFLOP/s')
    if autocast_dtype('cpu') is not None:
        report.add('matmul_peak_bf16', matmul_peak(torch.bfloat16, size, repeats), 'GFLOP/s')
    shapes = [(1, 3, 64, 96)] if quick else [(1, 3, 800, 1216), (32, 3, 224, 224)]
    bench_backbone_inference(report, shapes, repeats, fast)
    bench_backbone_training(report, (2, 3, 64, 64) if quick else (2, 3, 512, 512), repeats)
    if not args.no_detector:
        bench_detector(report, args.detector_config, (128, 192) if quick else (800, 1216),
                       repeats, fast)
    print('\n' + report.table())
    return report


if __name__ == '__main__':
    main()
