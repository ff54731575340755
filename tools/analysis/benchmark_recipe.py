"""Training iterations of the full recipes, ours against the OpenMMLab port, in one process.

    python tools/analysis/benchmark_recipe.py                     # both recipes, 30 iterations
    python tools/analysis/benchmark_recipe.py --quick --profile   # a few iterations, + profile
    python tools/analysis/benchmark_recipe.py --tasks det --iters 10 --cudnn-benchmark on

Cascade Mask R-CNN T (tiny_coco) and UperNet T (ade20k_sample) from our configs against
mmdet 3.3's / mmseg 1.2's ConvNeXt configs (mmpretrain's backbone), built in this process on
the same data, seed and weights; contestants alternate iteration by iteration after a warm-up
and the figure is the median. ``--profile`` adds a torch.profiler breakdown and the lines that
synchronised host and device. The sample data: ``--data-root`` or $CONVNEXT_DENSE_SAMPLE_DATA.
What an iteration covers and what is changed in each config: docs/benchmarks.md.
"""
import argparse
import collections
import contextlib
import functools
import gc
import importlib
import json
import os
import os.path as osp
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from typing import Callable, Dict, List, Optional

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
try:
    import convnext_dense  # noqa: F401  (our scope; the compat fixes, mmcv ops on CUDA)
except ModuleNotFoundError as error:  # not installed: a plain checkout, the package above us
    if error.name != 'convnext_dense':
        raise
    sys.path.insert(0, ROOT)
from bench_common import (LoadWatch, Report, finish_load_watch,  # noqa: E402
                          machine_description, print_machine, run_times)
from convnext_dense.errors import MissingFileError  # noqa: E402

TASKS = ('det', 'seg')
OURS_CONFIGS = dict(
    det=osp.join(ROOT, 'configs/detection/cascade_convnext_t_coco.py'),
    seg=osp.join(ROOT, 'configs/segmentation/upernet_convnext_t_512_160k_ade20k.py'))
# (package, path under the package's .mim directory)
PORT_CONFIGS = dict(
    det=('mmdet', 'configs/convnext/'
         'cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'),
    seg=('mmseg', 'configs/convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py'))
SCOPES = dict(det='mmdet', seg='mmseg')
DATA_ENV = 'CONVNEXT_DENSE_SAMPLE_DATA'
DATA_SUBDIRS = dict(det='tiny_coco', seg='ade20k_sample')
HEAD_PARTS = ('data_preprocessor', 'backbone', 'neck', 'rpn_head', 'roi_head', 'decode_head',
              'auxiliary_head')
HEAD_METHODS = ('forward', 'loss', 'loss_and_predict')
SYNC_EVENTS = ('cudaStreamSynchronize', 'cudaDeviceSynchronize', 'cudaEventSynchronize',
               'cudaMemcpy', 'cudaMemcpyAsync', 'aten::_local_scalar_dense', 'aten::item',
               'aten::nonzero')


class PortUnavailable(RuntimeError):
    """The OpenMMLab port's config cannot be built here (mmpretrain missing, config absent)."""


def check_mmdet_imports() -> None:
    """Stop with one line where ``mmdet.models`` does not import. mmdet 3.3 imports mmpretrain
    wherever it is installed, and mmpretrain 1.2.0 fails to import beside transformers >= 5
    (``TypeError: NoneType takes no arguments``): then neither ours nor the port builds."""
    try:
        import mmdet.models  # noqa: F401
    except Exception as error:  # noqa: BLE001 - any import failure is reported the same way
        raise SystemExit(
            f'benchmark_recipe: mmdet.models does not import ({type(error).__name__}: '
            f'{str(error)[:200]}). With mmpretrain 1.2 beside transformers >= 5, uninstall '
            f'mmpretrain (the port is then skipped) or install transformers < 5.') from None


# ----------------------------------------------------------------------------- configs
def find_data_root(explicit: Optional[str] = None) -> str:
    """The folder holding ``tiny_coco/`` and ``ade20k_sample/``.

    Args:
        explicit (str, optional): ``--data-root``; else ``$CONVNEXT_DENSE_SAMPLE_DATA``.

    Returns:
        str: the absolute path.
    """
    path = explicit or os.environ.get(DATA_ENV)
    if path and any(osp.isdir(osp.join(path, sub)) for sub in DATA_SUBDIRS.values()):
        return osp.abspath(path)
    where = f'{path} has no' if path else \
        f'no --data-root and no ${DATA_ENV}: give a folder with'
    raise MissingFileError(f'benchmark_recipe: {where} {" or ".join(DATA_SUBDIRS.values())} '
                           f'(COCO-format and ADE20K-format samples)')


def port_config_path(task: str) -> str:
    """The port's config inside the installed mmdet / mmseg package."""
    package, relative = PORT_CONFIGS[task]
    try:
        module = importlib.import_module(package)
    except ImportError as error:
        raise PortUnavailable(f'{package} is not installed ({error})') from error
    path = osp.join(osp.dirname(module.__file__), '.mim', relative)
    if not osp.isfile(path):
        raise PortUnavailable(f'{package} has no {relative} (looked in {path})')
    return path


def _innermost_dataset(dataloader_cfg):
    dataset = dataloader_cfg['dataset']
    while 'dataset' in dataset:  # dataset wrappers (RepeatDataset, ...)
        dataset = dataset['dataset']
    return dataset


def load_recipe_config(path: str, task: str, data_root: str, work_dir: str,
                       batch_size: int = 2, workers: int = 4, seed: int = 0,
                       device: str = 'cuda', port: bool = False):
    """The config at ``path`` as this benchmark runs it (module docstring). Raises
    :class:`PortUnavailable` when a port config's ``custom_imports`` (mmpretrain) fail."""
    from mmengine.config import Config
    try:
        cfg = Config.fromfile(path)
    except (ImportError, TypeError) as error:
        if not port:
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ''
        raise PortUnavailable(f'{osp.basename(path)} imports mmpretrain (the port\'s '
                              f'ConvNeXt), which failed: {first_line}') from error
    cfg.model.backbone.init_cfg = None
    dataset = _innermost_dataset(cfg.train_dataloader)
    dataset['data_root'] = osp.join(data_root, DATA_SUBDIRS[task])
    if task == 'det':
        dataset['ann_file'] = 'annotations/instances_train2017.json'
        dataset['data_prefix'] = dict(img='train2017/')
    else:  # the sample has validation images only: the training pipeline runs on them
        dataset['data_prefix'] = dict(img_path='images/validation',
                                      seg_map_path='annotations/validation')
    loader = cfg.train_dataloader
    loader['batch_size'] = batch_size
    loader['num_workers'] = workers
    loader['persistent_workers'] = workers > 0
    for split in ('val', 'test'):
        for key in (f'{split}_dataloader', f'{split}_cfg', f'{split}_evaluator'):
            cfg[key] = None
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=seed)
    cfg.launcher = 'none'
    cfg.log_level = 'WARNING'
    cfg.load_from = None
    cfg.resume = False
    if device == 'cpu':
        # mmengine's AmpOptimWrapper needs an accelerator (tools/train.py does the same)
        wrapper = cfg.optim_wrapper
        if wrapper.get('type') == 'AmpOptimWrapper':
            wrapper['type'] = 'OptimWrapper'
            for key in ('loss_scale', 'dtype', 'use_fsdp'):
                wrapper.pop(key, None)
    return cfg


def build_runner(cfg, task: str):
    """``Runner.from_cfg`` with the task's scope registered (as tools/train.py does)."""
    from mmengine.runner import Runner
    importlib.import_module(f'{SCOPES[task]}.utils').register_all_modules(
        init_default_scope=False)
    return Runner.from_cfg(cfg)


def unwrap(model):
    return getattr(model, 'module', model)


def copy_weights(source: torch.nn.Module, target: torch.nn.Module) -> str:
    """Copy ``source``'s weights (the port) into ``target`` (ours): the backbone through
    :func:`convnext_dense.models.convert_checkpoint`, everything else by name. Returns what
    was done; changes nothing and says why when the layouts do not match."""
    from convnext_dense.models import convert_checkpoint
    source_sd, target_sd = source.state_dict(), target.state_dict()
    backbone = convert_checkpoint(
        {k: v for k, v in source_sd.items() if k.startswith('backbone.')})
    backbone = {f'backbone.{k}': v for k, v in backbone.items()}
    rest = {k: v for k, v in source_sd.items() if not k.startswith('backbone.')}
    converted = {**backbone, **rest}
    missing = sorted(set(target_sd) - set(converted))
    unexpected = sorted(set(converted) - set(target_sd))
    mismatched = sorted(k for k in set(converted) & set(target_sd)
                        if converted[k].shape != target_sd[k].shape)
    if missing or unexpected or mismatched:
        return (f'weights NOT shared (layouts differ: {len(missing)} missing, e.g. '
                f'{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}; '
                f'{len(mismatched)} of another shape, e.g. {mismatched[:3]})')
    target.load_state_dict(converted, strict=True)
    return f'weights shared: the port\'s {len(converted)} tensors copied into ours'


# ----------------------------------------------------------------------------- contestants
def _padded_shape(batch, divisor: int = 32):
    """The (H, W) the data preprocessor pads the batch to (the largest image, rounded up)."""
    inputs = batch['inputs'] if isinstance(batch, dict) else batch
    heights = [int(x.shape[-2]) for x in inputs]
    widths = [int(x.shape[-1]) for x in inputs]
    up = lambda v: -(-v // divisor) * divisor  # noqa: E731
    return up(max(heights)), up(max(widths))


def model_bytes(model: torch.nn.Module, optimizer=None) -> int:
    """Bytes of ``model``'s parameters and buffers, plus ``optimizer``'s state tensors."""
    total = sum(t.numel() * t.element_size()
                for t in list(model.parameters()) + list(model.buffers()))
    if optimizer is not None:
        for state in optimizer.state.values():
            total += sum(v.numel() * v.element_size() for v in state.values()
                         if isinstance(v, torch.Tensor))
    return total


class Contestant:
    """One config's Runner, prepared as ``Runner.train`` prepares it (train loop, optimizer
    wrapper, schedulers, ``before_run`` hooks, weight init, ``before_train`` and
    ``before_train_epoch`` hooks), driven one training iteration at a time by :meth:`step`."""

    def __init__(self, name: str, runner, cudnn_benchmark: Optional[bool] = None):
        self.name = name
        self.runner = runner
        env = runner.cfg.get('env_cfg') or {}
        self.config_cudnn_benchmark = bool(env.get('cudnn_benchmark', False))
        self.cudnn_benchmark = (self.config_cudnn_benchmark if cudnn_benchmark is None
                                else cudnn_benchmark)
        self.cuda = next(unwrap(runner.model).parameters()).is_cuda
        self.records: List[dict] = []
        self.seen_shapes = set()
        self._prepare()
        self.batches = self._batches()

    def _prepare(self) -> None:
        r = self.runner
        r._train_loop = r.build_train_loop(r._train_loop)
        r.optim_wrapper = r.build_optim_wrapper(r.optim_wrapper)
        r.scale_lr(r.optim_wrapper, r.auto_scale_lr)
        if r.param_schedulers is not None:
            r.param_schedulers = r.build_param_scheduler(r.param_schedulers)
        r.call_hook('before_run')
        r._init_model_weights()
        for key, turn_on in (('activation_checkpointing', 'turn_on_activation_checkpointing'),
                             ('efficient_conv_bn_eval', 'turn_on_efficient_conv_bn_eval')):
            modules = r.cfg.get(key)
            if modules is not None:
                import mmengine.runner.runner as runner_module
                getattr(runner_module, turn_on)(unwrap(r.model), modules)
        r.optim_wrapper.initialize_count_status(r.model, r.train_loop.iter,
                                                r.train_loop.max_iters)
        r._maybe_compile('train_step')
        r.call_hook('before_train')
        r.call_hook('before_train_epoch')
        r.model.train()

    def _batches(self):
        """(index in epoch, batch) forever, as the train loop draws them."""
        loop = self.runner.train_loop
        if hasattr(loop, 'dataloader_iterator'):  # IterBasedTrainLoop: its infinite iterator
            while True:
                yield loop.iter, next(loop.dataloader_iterator)
        epoch = 0
        while True:  # EpochBasedTrainLoop: epoch after epoch, the sampler told which
            for idx, batch in enumerate(loop.dataloader):
                yield idx, batch
            epoch += 1
            sampler = getattr(loop.dataloader, 'sampler', None)
            batch_sampler = getattr(loop.dataloader, 'batch_sampler', None)
            for candidate in (sampler, getattr(batch_sampler, 'sampler', None)):
                if hasattr(candidate, 'set_epoch'):
                    candidate.set_epoch(epoch)
                    break

    def optimizer(self):
        wrapper = self.runner.optim_wrapper
        return getattr(wrapper, 'optimizer', None)

    def step(self) -> dict:
        """One training iteration; returns (and keeps in ``records``) its figures."""
        r = self.runner
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        idx, batch = next(self.batches)
        fetched = time.perf_counter()
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        if self.cuda:
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        loop = r.train_loop
        if hasattr(loop, 'dataloader_iterator'):
            loop.run_iter(batch)
        else:
            loop.run_iter(idx, batch)
        if self.cuda:
            torch.cuda.synchronize()
        end = time.perf_counter()
        shape = _padded_shape(batch)
        record = dict(iter_s=end - start, data_s=fetched - start, step_s=end - fetched,
                      shape=shape, new_shape=shape not in self.seen_shapes)
        self.seen_shapes.add(shape)
        if self.cuda:
            record['step_peak_bytes'] = torch.cuda.max_memory_allocated() - before
        scalars = r.message_hub.log_scalars
        if 'train/loss' in scalars:
            record['loss'] = float(scalars['train/loss'].current())
        self.records.append(record)
        return record


def summarise(records: List[dict]) -> dict:
    """Medians (s) and extremes of a contestant's timed iterations."""
    med = lambda key, rows: (statistics.median(r[key] for r in rows)  # noqa: E731
                             if rows else None)
    seen = [r for r in records if not r['new_shape']]
    new = [r for r in records if r['new_shape']]
    out = dict(iters=len(records), iter_s=med('iter_s', records),
               step_s=med('step_s', records), data_s=med('data_s', records),
               min_iter_s=min(r['iter_s'] for r in records),
               max_iter_s=max(r['iter_s'] for r in records),
               seen_shape_iters=len(seen), seen_shape_iter_s=med('iter_s', seen),
               new_shape_iters=len(new), new_shape_iter_s=med('iter_s', new),
               losses=[round(r['loss'], 4) for r in records if 'loss' in r])
    peaks = [r['step_peak_bytes'] for r in records if 'step_peak_bytes' in r]
    if peaks:
        out['step_peak_mib'] = max(peaks) / 2 ** 20
        out['step_peak_median_mib'] = statistics.median(peaks) / 2 ** 20
    return out


def time_contestants(contestants: List[Contestant], warmup: int, iters: int,
                     budget_s: Optional[float] = None, min_iters: int = 3) -> Dict[str, dict]:
    """Round-robin iterations (benchmark.run_times); the figures of the timed ones."""
    for contestant in contestants:
        contestant.records.clear()
    fns = {c.name: c.step for c in contestants}
    run_times(fns, warmup, iters, budget_s=budget_s, min_repeats=min_iters)
    timed = {}
    for contestant in contestants:
        # warm-up records first, then the timed ones: keep the timed ones
        records = contestant.records[warmup:]
        timed[contestant.name] = summarise(records)
        timed[contestant.name]['shapes'] = [list(r['shape']) for r in records]
    return timed


# ----------------------------------------------------------------------------- profiling
@contextlib.contextmanager
def annotated(contestant: Contestant):
    """Label the phases of an iteration for the profiler (``## backbone.forward``,
    ``## backward``, ``## hook after_train_iter``, ...) by wrapping methods on the instances;
    everything is put back on exit."""
    from torch.profiler import record_function
    patched = []

    def wrap(obj, attr, label):
        original = getattr(obj, attr)
        had_own = attr in vars(obj)

        @functools.wraps(original)
        def labelled(*args, **kwargs):
            with record_function(label if attr != 'call_hook' else f'{label} {args[0]}'):
                return original(*args, **kwargs)

        setattr(obj, attr, labelled)
        patched.append((obj, attr, had_own, original))

    model = unwrap(contestant.runner.model)
    for part in HEAD_PARTS:
        module = getattr(model, part, None)
        if isinstance(module, torch.nn.Module):
            for method in HEAD_METHODS:
                if hasattr(module, method):
                    wrap(module, method, f'## {part}.{method}')
    wrapper = contestant.runner.optim_wrapper
    for method in ('backward', 'step', 'zero_grad'):
        wrap(wrapper, method, f'## optim_wrapper.{method}')
    wrap(contestant.runner, 'call_hook', '## hook')
    try:
        yield
    finally:
        for obj, attr, had_own, original in reversed(patched):
            if had_own:
                setattr(obj, attr, original)
            else:
                delattr(obj, attr)


def _short_path(filename: str) -> str:
    for marker in ('site-packages/', 'dist-packages/'):
        if marker in filename:
            return filename.split(marker, 1)[1]
    if filename.startswith(ROOT + os.sep):
        return osp.relpath(filename, ROOT)
    return filename


def _is_torch_frame(filename: str) -> bool:
    path = filename.replace(os.sep, '/')
    return '/torch/' in path or path.endswith('/warnings.py') or \
        path == osp.abspath(__file__).replace(os.sep, '/')


def sync_site(stack: List[traceback.FrameSummary], depth: int = 3) -> str:
    """The innermost ``depth`` frames of ``stack`` outside torch (and this file): where a
    synchronising call was made, and from where."""
    frames = [f for f in stack if not _is_torch_frame(f.filename)]
    frames = frames[-depth:]
    return ' <- '.join(f'{_short_path(f.filename)}:{f.lineno} ({f.name})'
                       for f in reversed(frames)) or '(inside torch)'


def sync_sites(step: Callable[[], object], iters: int = 1) -> collections.Counter:
    """Run ``step`` ``iters`` times under ``torch.cuda.set_sync_debug_mode('warn')`` and count
    the synchronising calls by the Python lines that made them (:func:`sync_site`)."""
    found = collections.Counter()
    with warnings.catch_warnings():
        warnings.simplefilter('always')
        original = warnings.showwarning

        def showwarning(message, category, filename, lineno, file=None, line=None):
            if 'synchronizing CUDA operation' in str(message):
                found[sync_site(traceback.extract_stack()[:-1])] += 1
            else:
                original(message, category, filename, lineno, file, line)

        warnings.showwarning = showwarning
        torch.cuda.set_sync_debug_mode('warn')
        try:
            for _ in range(iters):
                step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return found


def _is_device_event(event) -> bool:
    device_type = getattr(event, 'device_type', None)
    return device_type is not None and 'CUDA' in str(device_type)


def profile_contestant(contestant: Contestant, iters: int, row_limit: int = 20,
                       trace: Optional[str] = None, sites: bool = True) -> dict:
    """Profile ``iters`` iterations of ``contestant`` (module docstring); prints the tables
    and returns the summary figures."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU]
    if contestant.cuda:
        activities.append(ProfilerActivity.CUDA)
    with annotated(contestant):
        start = time.perf_counter()
        with profile(activities=activities) as prof:
            for _ in range(iters):
                contestant.step()
        wall = time.perf_counter() - start
    events = prof.events()
    kernel_us = sum(e.time_range.elapsed_us() for e in events
                    if _is_device_event(e) and not e.name.startswith('## ')
                    and not getattr(e, 'is_user_annotation', False))
    phases = collections.defaultdict(lambda: [0.0, 0.0, 0])  # cpu us, device us, calls
    for e in events:
        if e.name.startswith('## '):
            slot = phases[e.name[3:]]
            if _is_device_event(e):
                slot[1] += e.time_range.elapsed_us()
            else:
                slot[0] += e.time_range.elapsed_us()
                slot[2] += 1
    averages = prof.key_averages()
    counts = collections.Counter()
    for row in averages:
        for name in SYNC_EVENTS:
            if row.key == name:
                counts[name] += row.count
        if 'Memcpy DtoH' in row.key:
            counts['Memcpy DtoH (device)'] += row.count
        if 'Memcpy HtoD' in row.key:
            counts['Memcpy HtoD (device)'] += row.count
    per_iter = lambda v: v / iters  # noqa: E731
    print(f'\n## profile of {contestant.name}: {iters} iterations, '
          f'{wall / iters:.3f} s/iter wall under the profiler')
    if contestant.cuda:
        print(f'GPU kernel time (sum): {kernel_us / 1e6 / iters:.3f} s/iter = '
              f'{100 * kernel_us / 1e6 / wall:.0f}% of the wall time')
    print('phases (ms per iteration; CPU = wall time in the phase'
          + (', GPU = span of its kernels on the GPU timeline, idle gaps included'
             if contestant.cuda else '') + '):')
    for name, (cpu_us, dev_us, calls) in sorted(phases.items(), key=lambda kv: -kv[1][0]):
        gpu = f'  GPU {per_iter(dev_us) / 1e3:9.1f}' if contestant.cuda else ''
        print(f'  {name:<40} CPU {per_iter(cpu_us) / 1e3:9.1f}{gpu}'
              f'  calls/iter {per_iter(calls):g}')
    if contestant.cuda:
        for sort_by in ('self_device_time_total', 'self_cuda_time_total'):
            try:
                table = averages.table(sort_by=sort_by, row_limit=row_limit)
                break
            except (AttributeError, KeyError, ValueError):
                table = None
        print(f'top {row_limit} operators by self CUDA time:\n{table}')
    print(f'top {row_limit} operators by self CPU time:\n'
          f'{averages.table(sort_by="self_cpu_time_total", row_limit=row_limit)}')
    print('host-device synchronisation and copies per iteration:')
    for name, count in sorted(counts.items()):
        print(f'  {name:<32} {per_iter(count):8.1f}')
    if trace:
        prof.export_chrome_trace(trace[:-3] if trace.endswith('.gz') else trace)
        if trace.endswith('.gz'):
            import gzip
            import shutil
            with open(trace[:-3], 'rb') as src, gzip.open(trace, 'wb') as dst:
                shutil.copyfileobj(src, dst)
            os.remove(trace[:-3])
        print(f'chrome trace: {trace}')
    summary = dict(iters=iters, wall_s_per_iter=wall / iters,
                   gpu_kernel_s_per_iter=kernel_us / 1e6 / iters,
                   syncs_per_iter={k: per_iter(v) for k, v in counts.items()},
                   phases_ms_per_iter={k: dict(cpu=per_iter(v[0]) / 1e3,
                                               gpu=per_iter(v[1]) / 1e3)
                                       for k, v in phases.items()})
    if sites and contestant.cuda:
        found = sync_sites(contestant.step)
        print(f'synchronising calls in one iteration (torch.cuda.set_sync_debug_mode), '
              f'{sum(found.values())} in all, by where they were made:')
        for site, count in found.most_common(25):
            print(f'  {count:5d}  {site}')
        summary['sync_sites'] = dict(found.most_common(50))
    return summary


# ----------------------------------------------------------------------------- the run
def build_contestants(task: str, args, data_root: str, work_root: str) -> List[Contestant]:
    """Ours and (when it can be built) the port, for ``task``."""
    common = dict(task=task, data_root=data_root, batch_size=args.batch_size,
                  workers=args.workers, seed=args.seed, device=args.device)
    cudnn = None if args.cudnn_benchmark == 'config' else args.cudnn_benchmark == 'on'
    ours_cfg = load_recipe_config(OURS_CONFIGS[task], work_dir=osp.join(work_root, f'{task}_ours'),
                                  **common)
    port_cfg, why = None, None
    if not args.no_port:
        try:
            port_cfg = load_recipe_config(port_config_path(task), port=True,
                                          work_dir=osp.join(work_root, f'{task}_port'),
                                          **common)
        except PortUnavailable as error:
            why = str(error)
    contestants = [Contestant('ours', build_runner(ours_cfg, task), cudnn)]
    if port_cfg is not None:
        contestants.append(Contestant('port', build_runner(port_cfg, task), cudnn))
        note = copy_weights(unwrap(contestants[1].runner.model),
                            unwrap(contestants[0].runner.model))
        print(f'# {task}: {note}', flush=True)
    elif args.no_port:
        print(f'# {task}: the port is skipped (--no-port)', flush=True)
    else:
        print(f'# {task}: SKIPPING THE PORT: {why}. Ours runs alone; install mmpretrain '
              f'1.2 to compare.', flush=True)
    for contestant in contestants:
        print(f'# {task} {contestant.name}: {contestant.runner.cfg.filename}; cudnn.benchmark '
              f'{contestant.cudnn_benchmark} (config: {contestant.config_cudnn_benchmark}); '
              f'optim wrapper {type(contestant.runner.optim_wrapper).__name__}', flush=True)
    return contestants


def run_task(task: str, args, data_root: str, work_root: str, report: Report) -> dict:
    contestants = build_contestants(task, args, data_root, work_root)
    timed = time_contestants(contestants, args.warmup, args.iters, budget_s=args.time_budget,
                             min_iters=min(3, args.iters))
    # after the first steps, which create the optimizer's state
    held = {c.name: model_bytes(unwrap(c.runner.model), c.optimizer()) for c in contestants}
    for contestant in contestants:
        name, figures = contestant.name, timed[contestant.name]
        extra = dict(iters=figures['iters'], data_s=round(figures['data_s'], 4),
                     step_s=round(figures['step_s'], 4),
                     min_s=round(figures['min_iter_s'], 4),
                     max_s=round(figures['max_iter_s'], 4),
                     held_mib=round(held[name] / 2 ** 20, 1))
        if 'step_peak_mib' in figures:
            extra['step_peak_mib'] = round(figures['step_peak_mib'], 1)
            extra['peak_mib'] = round(figures['step_peak_mib'] + held[name] / 2 ** 20, 1)
        report.add(f'recipe_{task}_train_iter_{name}', figures['iter_s'], 's/iter', **extra)
        for kind in ('seen', 'new'):
            if figures[f'{kind}_shape_iters']:
                report.add(f'recipe_{task}_train_iter_{name}_{kind}_shape',
                           figures[f'{kind}_shape_iter_s'], 's/iter',
                           iters=figures[f'{kind}_shape_iters'])
        print(f'# {task} {name} losses: {figures["losses"]}', flush=True)
    if len(contestants) == 2:
        report.add(f'recipe_{task}_train_iter_ours_speedup_over_port',
                   timed['port']['iter_s'] / timed['ours']['iter_s'], 'x',
                   same_shapes=timed['port']['shapes'] == timed['ours']['shapes'])
        if 'step_peak_mib' in timed['ours']:
            ours_peak = timed['ours']['step_peak_mib'] + held['ours'] / 2 ** 20
            port_peak = timed['port']['step_peak_mib'] + held['port'] / 2 ** 20
            report.add(f'recipe_{task}_train_peak_memory_ours_over_port',
                       ours_peak / port_peak, 'x')
    result = dict(timed=timed, held_bytes=held)
    if args.profile and task in args.profile_tasks:
        targets = [c for c in contestants if c.name in args.profile_target]
        for contestant in targets:
            trace = None
            if args.profile_trace:
                trace = args.profile_trace.replace('{task}', task).replace(
                    '{name}', contestant.name)
            result[f'profile_{contestant.name}'] = profile_contestant(
                contestant, args.profile_iters, trace=trace, sites=not args.no_sync_sites)
    # free the loaders' workers and the GPU memory before the next task
    del contestants
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--tasks', nargs='+', choices=TASKS, default=list(TASKS))
    parser.add_argument('--quick', action='store_true',
                        help='5 timed iterations after 3 warm-up ones (unless given)')
    parser.add_argument('--iters', type=int, default=None,
                        help='timed round-robin iterations per contestant (default 30)')
    parser.add_argument('--warmup', type=int, default=None,
                        help='warm-up iterations per contestant (default 5)')
    parser.add_argument('--time-budget', type=float, default=None, metavar='S',
                        help='per task: stop the timed rounds once they took S seconds '
                        '(at least 3 rounds)')
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--workers', type=int, default=4,
                        help='data loader workers per contestant (the same for both)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--data-root', default=None,
                        help=f'folder with tiny_coco/ and ade20k_sample/ (default: ${DATA_ENV})')
    parser.add_argument('--device', choices=['cuda', 'cpu'],
                        default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cudnn-benchmark', choices=['config', 'on', 'off'], default='config',
                        help="torch.backends.cudnn.benchmark during each contestant's "
                        "iterations: its config's env_cfg (default), or on / off for both")
    parser.add_argument('--no-port', action='store_true', help='run ours alone')
    parser.add_argument('--profile', action='store_true',
                        help='profile iterations after the timed rounds (module docstring)')
    parser.add_argument('--profile-iters', type=int, default=3)
    parser.add_argument('--profile-tasks', nargs='+', choices=TASKS, default=['det'])
    parser.add_argument('--profile-target', nargs='+', choices=['ours', 'port'],
                        default=['ours'])
    parser.add_argument('--profile-trace', metavar='FILE',
                        help='also write a chrome trace (.json or .json.gz; {task} and {name} '
                        'are replaced)')
    parser.add_argument('--no-sync-sites', action='store_true',
                        help='skip the set_sync_debug_mode iteration of --profile')
    parser.add_argument('--work-dir', default=None,
                        help='where the runners write (default: a temporary folder)')
    parser.add_argument('--json', metavar='FILE', help='also write every figure to FILE')
    args = parser.parse_args(argv)
    if args.iters is None:
        args.iters = 5 if args.quick else 30
    if args.warmup is None:
        args.warmup = 3 if args.quick else 5
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: torch sees no CUDA device')
    return args


def main(argv=None):
    args = parse_args(argv)
    check_mmdet_imports()
    watch = LoadWatch()
    machine = machine_description(args.device)
    print_machine(machine, watch)
    data_root = find_data_root(args.data_root)
    print(f'# data: {data_root}; batch {args.batch_size}, {args.workers} workers each, '
          f'{args.warmup} warm-up + {args.iters} timed iterations per contestant'
          + (f' (at most {args.time_budget:g} s of timed rounds per task)'
             if args.time_budget else ''), flush=True)
    report = Report()
    results = {}

    def write_json(warnings_=None):
        if args.json:  # after every task: a run stopped later keeps what it measured
            with open(args.json, 'w') as f:
                json.dump(dict(machine=machine, load_before=watch.before,
                               load_after=watch.after, warnings=warnings_, figures=report.rows,
                               results=results, args=vars(args)), f, indent=1, default=str)

    with contextlib.ExitStack() as stack:
        work_root = args.work_dir or stack.enter_context(
            tempfile.TemporaryDirectory(prefix='benchmark_recipe_'))
        for task in args.tasks:
            started = time.perf_counter()
            results[task] = run_task(task, args, data_root, work_root, report)
            print(f'# {task}: {time.perf_counter() - started:.0f} s in all', flush=True)
            write_json()
    warnings_ = finish_load_watch(report, watch)
    print('\n' + report.table())
    for warning in warnings_:
        print(warning)
    write_json(warnings_)
    return report, results


if __name__ == '__main__':
    main()
