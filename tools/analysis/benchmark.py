"""Speed and memory of our ConvNeXt against timm's, measured side by side in one run.

    python tools/analysis/benchmark.py                 # CPU, full run (10-15 minutes, 2 cores)
    python tools/analysis/benchmark.py --quick         # CPU, small shapes (used by the tests)
    python tools/analysis/benchmark.py --device cuda [--quick]   # GPU backbone figures

Prints the machine (CPU model, native bf16, load before and after), then one JSON line per
figure and a table. Every time is the median of ``--repeats`` round-robin runs after warm-up,
and every ratio compares figures measured in this same process. Method: docs/benchmarks.md.
"""
import argparse
import copy
import json
import os.path as osp
import sys
import time
from typing import Callable, Dict, Sequence

import torch

try:
    import convnext_dense  # noqa: F401
except ModuleNotFoundError as error:  # not installed: a plain checkout, the package above us
    if error.name != 'convnext_dense':
        raise
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from convnext_dense.inference.fast import (autocast_dtype, bf16_supported,  # noqa: E402
                                           enable_fast_inference)
from convnext_dense.models import ConvNeXt, convert_checkpoint  # noqa: E402
from bench_common import (LoadWatch, Report, finish_load_watch,  # noqa: E402,F401
                          machine_description, median_seconds, print_machine, run_times)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DETECTOR_CONFIG = osp.join(ROOT, 'configs/detection/cascade_convnext_t_coco.py')


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


# ----------------------------------------------------------------------------- CUDA
# The functions below take ``device``: 'cuda' for the figures, 'cpu' only so that the tests
# can run their logic (no GPU there); on the CPU, memory comes from the profiler instead.
def synchronize(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def synced(fn: Callable, device: str = 'cuda') -> Callable:
    """``fn`` followed by ``torch.cuda.synchronize()``, so that a wall time covers its kernels."""
    def run():
        fn()
        synchronize(device)
    return run


def device_median_seconds(fns: Dict[str, Callable], warmup: int, repeats: int,
                          device: str = 'cuda') -> Dict[str, float]:
    """:func:`median_seconds` of the synchronised functions (round-robin, as on the CPU)."""
    synchronize(device)
    return median_seconds({name: synced(fn, device) for name, fn in fns.items()}, warmup,
                          repeats)


def step_peak_bytes(fn: Callable, models: Sequence[torch.nn.Module],
                    device: str = 'cuda') -> float:
    """The most memory one call of ``fn`` adds to what is allocated before it: on CUDA
    ``torch.cuda.max_memory_allocated`` after a reset, less ``memory_allocated`` before. The
    gradients of ``models`` are dropped first, so the figure holds the call's activations,
    gradients and workspaces and nothing a contestant measured earlier left behind."""
    for model in models:
        model.zero_grad(set_to_none=True)
    if device != 'cuda':
        return peak_memory_bytes(fn)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return float(torch.cuda.max_memory_allocated() - before)


def _bf16(fn: Callable, device: str = 'cuda') -> Callable:
    def run():
        with torch.autocast(device, dtype=torch.bfloat16):
            return fn()
    return run


def _tag(shape) -> str:
    return 'x'.join(map(str, shape))


def bench_cuda_inference(report, ours, reference, shapes, warmup, repeats, device='cuda'):
    """Eager fp32 and bf16-autocast inference, ours against timm, per shape."""
    for shape in shapes:
        tag = _tag(shape)
        x = torch.randn(*shape, device=device)
        flops = count_flops(lambda: ours(x))
        for precision in ('fp32', 'bf16'):
            fns = dict(ours=lambda: ours(x), timm=lambda: reference.forward_features(x))
            if precision == 'bf16':
                fns = {name: _bf16(fn, device) for name, fn in fns.items()}
            with torch.no_grad():
                t = device_median_seconds(fns, warmup, repeats, device)
            for name in ('ours', 'timm'):
                report.add(f'{device}_backbone_infer_{tag}_{name}_{precision}',
                           shape[0] / t[name], 'img/s',
                           tflops=round(flops / t[name] / 1e12, 2))
            report.add(f'{device}_backbone_infer_{tag}_ours_over_timm_{precision}',
                       t['timm'] / t['ours'], 'x')
        del x


def bench_cuda_compiled(report, ours, reference, shapes, warmup, repeats, device='cuda'):
    """Our fast path (``enable_fast_inference``: channels-last, bf16 autocast on GPUs with bf16,
    ``torch.compile``) against ``torch.compile`` of timm's ``forward_features`` under bf16
    autocast, and against our eager fp32 in the same round-robin. The first call of each
    compiled model (the compilation) is timed on its own."""
    fast = enable_fast_inference(copy.deepcopy(ours))
    timm_compiled = torch.compile(copy.deepcopy(reference).forward_features)

    def timm_fast(x):
        with torch.autocast(device, dtype=torch.bfloat16):
            return timm_compiled(x)

    contestants = dict(ours_fast=fast, timm_compiled_bf16=timm_fast, ours_fp32=ours)
    for shape in shapes:
        tag = _tag(shape)
        x = torch.randn(*shape, device=device)
        with torch.no_grad():
            for name in ('ours_fast', 'timm_compiled_bf16'):
                start = time.perf_counter()
                synced(lambda: contestants[name](x), device)()
                report.add(f'{device}_backbone_infer_{tag}_{name}_first_call',
                           time.perf_counter() - start, 's')
            deviation = max(((a - b.float()).abs().max() / a.abs().max()).item()
                            for a, b in zip(ours(x), fast(x)))
            t = device_median_seconds({name: (lambda fn=fn: fn(x))
                                       for name, fn in contestants.items()}, warmup, repeats,
                                      device)
        for name in contestants:
            extra = dict(path=str(fast.fast_inference)) if name == 'ours_fast' else {}
            report.add(f'{device}_backbone_infer_{tag}_{name}', shape[0] / t[name], 'img/s',
                       **extra)
        report.add(f'{device}_backbone_infer_{tag}_fast_over_timm_compiled',
                   t['timm_compiled_bf16'] / t['ours_fast'], 'x')
        report.add(f'{device}_backbone_infer_{tag}_fast_over_ours_fp32',
                   t['ours_fp32'] / t['ours_fast'], 'x')
        report.add(f'{device}_backbone_infer_{tag}_fast_max_rel_deviation', deviation,
                   '(max |fast - fp32| / max |fp32|)')
        del x


def bench_cuda_training(report, ours, reference, shape, warmup, repeats, precisions,
                        with_cp=True, device='cuda'):
    """A training step (zero_grad, forward, mean of every output, backward) per precision
    ('bf16': autocast, 'fp32'), ours / timm / ours with ``with_cp``: img/s round-robin, then
    the memory each step adds (:func:`step_peak_bytes`)."""
    tag = _tag(shape)
    models = dict(ours=ours, timm=reference)
    if with_cp:
        ours_cp = ConvNeXt('tiny', layer_scale_init_value=1.0, with_cp=True).to(device)
        ours_cp.load_state_dict(ours.state_dict())
        models['ours_with_cp'] = ours_cp
    forwards = dict(ours=ours, timm=reference.forward_features,
                    ours_with_cp=models.get('ours_with_cp'))
    for model in models.values():
        model.train()
    x = torch.randn(*shape, device=device)

    def step(name, precision):
        model, forward = models[name], forwards[name]

        def run():
            model.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == 'bf16'):
                outputs = forward(x)
            outputs = outputs if isinstance(outputs, (tuple, list)) else [outputs]
            sum(o.float().mean() for o in outputs).backward()
        return run

    for precision in precisions:
        variants = {name: step(name, precision) for name in models}
        t = device_median_seconds(variants, warmup, repeats, device)
        memory = {name: step_peak_bytes(run, list(models.values()), device)
                  for name, run in variants.items()}
        for name in variants:
            report.add(f'{device}_backbone_train_{tag}_{name}_{precision}', shape[0] / t[name],
                       'img/s', step_peak_mib=round(memory[name] / 2 ** 20, 1))
        report.add(f'{device}_backbone_train_{tag}_ours_over_timm_{precision}',
                   t['timm'] / t['ours'], 'x')
        report.add(f'{device}_backbone_train_{tag}_memory_ours_over_timm_{precision}',
                   memory['ours'] / memory['timm'], 'x')
        if with_cp:
            report.add(f'{device}_backbone_train_{tag}_with_cp_memory_ratio_{precision}',
                       memory['ours_with_cp'] / memory['ours'], 'x')
    for model in models.values():
        model.zero_grad(set_to_none=True)
        model.eval()


def main_cuda(args, report: Report, device: str = 'cuda', shapes=None,
              train_shape=(2, 3, 800, 1216)) -> Report:
    """The GPU backbone figures (module docstring). ``device``, ``shapes`` and
    ``train_shape`` are for the tests (small shapes on the CPU)."""
    if device == 'cuda':
        torch.backends.cudnn.benchmark = True
    quick = args.quick
    repeats = args.repeats or (10 if quick else 30)
    warmup = args.warmup if args.warmup is not None else (3 if quick else 10)
    ours, reference = paired_backbones()
    ours, reference = ours.to(device).eval(), reference.to(device).eval()
    if shapes is None:
        shapes = [(2, 3, 800, 1216)] if quick else [(2, 3, 800, 1216), (32, 3, 512, 512)]
    bench_cuda_inference(report, ours, reference, shapes, warmup, repeats, device)
    bench_cuda_training(report, ours, reference, train_shape, warmup, repeats,
                        ('bf16',) if quick else ('bf16', 'fp32'), device=device)
    if not args.no_fast:
        # last: compiling leaves caches and compiled kernels behind
        bench_cuda_compiled(report, ours, reference, shapes[:1] if quick else shapes,
                            warmup, repeats, device)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu',
                        help='cpu: the CPU figures (matmul peaks, backbone, detector); cuda: '
                        'the GPU backbone figures against timm')
    parser.add_argument('--quick', action='store_true',
                        help='cpu: small shapes, for smoke tests; cuda: one shape, fewer '
                        'repeats (under 90 s with compilation on an H100)')
    parser.add_argument('--repeats', type=int, default=None)
    parser.add_argument('--warmup', type=int, default=None, help='cuda: warm-up rounds')
    parser.add_argument('--no-fast', action='store_true',
                        help='skip the fast-path (compiled) figures')
    parser.add_argument('--no-detector', action='store_true',
                        help='cpu: skip the detector figures')
    parser.add_argument('--detector-config', default=DETECTOR_CONFIG)
    parser.add_argument('--json', metavar='FILE',
                        help='also write the machine, the figures and the warnings to FILE')
    args = parser.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: torch sees no CUDA device')

    watch = LoadWatch()
    machine = machine_description(args.device)
    print_machine(machine, watch)
    report = Report()
    torch.manual_seed(0)
    if args.device == 'cuda':
        main_cuda(args, report)
    else:
        main_cpu(args, report)
    warnings = finish_load_watch(report, watch)
    print('\n' + report.table())
    for warning in warnings:
        print(warning)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(machine=machine, load_before=watch.before, load_after=watch.after,
                           warnings=warnings, figures=report.rows), f, indent=1)
    return report


def main_cpu(args, report: Report) -> Report:
    """The CPU figures (module docstring)."""
    quick = args.quick
    repeats = args.repeats or (1 if quick else 5)
    print(f'# fast-path dtype: {autocast_dtype("cpu")}', flush=True)

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
    return report


if __name__ == '__main__':
    main()
