"""What the GPU tests share: the --cfg-options of the recipe runs, reading iteration times, peak
memory and losses from mmengine's training logs, a recipe's model trained a few steps with AMP
on given batches, and recording the figures that tools/gpu_check.sh prints."""
import gc
import importlib
import json
import math
import os
import re
import statistics
import time

import torch

from helpers import SHARED_DATA  # noqa: F401  ($CONVNEXT_DENSE_SAMPLE_DATA: tests/helpers.py)
LOG_EVERY_ITER = ['default_hooks.logger.interval=1', 'log_processor.window_size=1']


def cascade_options(tiny_coco: str, images: int, test_images: int) -> list:
    """--cfg-options for the Cascade Mask R-CNN T recipe on tiny_coco (50 train2017 images, no
    val2017): train on the first ``images`` of them; validate (mmengine's epoch loop always does
    after the last epoch) and test on the first ``test_images``; no pretrained backbone; a log
    line per iteration."""
    ann = 'annotations/instances_train2017.json'
    return [
        '--cfg-options', f'data_root={tiny_coco}/', 'model.backbone.init_cfg=None',
        f'train_dataloader.dataset.indices={images}', 'train_dataloader.num_workers=4',
        'train_cfg.val_interval=100',
        f'val_dataloader.dataset.ann_file={ann}',
        'val_dataloader.dataset.data_prefix.img=train2017/',
        f'val_dataloader.dataset.indices={test_images}', 'val_dataloader.num_workers=4',
        f'test_dataloader.dataset.ann_file={ann}',
        'test_dataloader.dataset.data_prefix.img=train2017/',
        f'test_dataloader.dataset.indices={test_images}', 'test_dataloader.num_workers=4',
        f'val_evaluator.ann_file={tiny_coco}/{ann}', f'test_evaluator.ann_file={tiny_coco}/{ann}',
        # a detector this young scores no box above 0.05: keep the 100 best per image
        'model.test_cfg.rcnn.score_thr=0.0', *LOG_EVERY_ITER]


def upernet_options(ade: str, checkpoint_interval: int) -> list:
    """--cfg-options for the UperNet T recipe on the ADE20K samples (three validation images,
    trained on too), no validation during training, no pretrained backbone."""
    return [
        '--cfg-options', f'data_root={ade}', 'model.backbone.init_cfg=None',
        'train_dataloader.dataset.data_prefix.img_path=images/validation',
        'train_dataloader.dataset.data_prefix.seg_map_path=annotations/validation',
        'train_dataloader.num_workers=3', 'train_cfg.val_interval=1000',
        f'default_hooks.checkpoint.interval={checkpoint_interval}', *LOG_EVERY_ITER]


# one mmengine log line per iteration (LoggerHook interval 1, LogProcessor window_size 1)
_ITER_LINE = re.compile(
    r'(?:Epoch|Iter)\((train|val|test)\)\s*(?:\[\d+\])?\s*\[\s*(\d+)/\s*(\d+)\]'
    r'.*?\btime: ([\d.]+)\s+data_time: ([\d.]+)(?:\s+memory: (\d+))?(.*)')
_LOSS = re.compile(r'(?<![\w/])([\w.]*loss[\w.]*): (\S+)')  # loss, s0.loss_cls, decode.loss_ce


def log_iterations(output: str, mode: str = 'train'):
    """One dict per logged ``mode`` iteration: iter, time (s), data_time (s), memory (MiB, the
    peak since the previous line), losses {name: float}."""
    rows = []
    for line in output.splitlines():
        match = _ITER_LINE.search(line)
        if not match or match.group(1) != mode:
            continue
        losses = {name: float(value) for name, value in _LOSS.findall(match.group(7))}
        rows.append(dict(iter=int(match.group(2)), time=float(match.group(4)),
                         data_time=float(match.group(5)),
                         memory=int(match.group(6)) if match.group(6) else None,
                         losses=losses))
    return rows


def all_finite(rows) -> bool:
    return all(math.isfinite(v) for row in rows for v in row['losses'].values())


def timing(rows, skip: int = 3) -> dict:
    """Median seconds per iteration (and data time) after the first ``skip`` iterations of a
    run (start-up, cuDNN and allocator warm-up), and the peak memory of all of them."""
    steady = rows[skip:] or rows
    memory = [r['memory'] for r in rows if r['memory'] is not None]
    return dict(s_per_iter=round(statistics.median(r['time'] for r in steady), 4),
                data_s_per_iter=round(statistics.median(r['data_time'] for r in steady), 4),
                peak_memory_mib=max(memory) if memory else None, iterations=len(rows))


def record_figure(name: str, **values) -> None:
    """Print a measured figure and, where CONVNEXT_DENSE_GPU_FIGURES names a file, append it
    there as one JSON line (tools/gpu_check.sh prints them as a table)."""
    record = dict(name=name, **values)
    if torch.cuda.is_available():
        record.setdefault('gpu', torch.cuda.get_device_name())
    record.setdefault('torch', torch.__version__)
    print('GPU figure:', json.dumps(record))
    path = os.environ.get('CONVNEXT_DENSE_GPU_FIGURES')
    if path:
        with open(path, 'a') as f:
            f.write(json.dumps(record) + '\n')


def amp_train_steps(cfg, batches, device: str = 'cuda', dtype: str = 'float16') -> dict:
    """Build ``cfg.model`` (an mmdet or mmseg config, by its ``default_scope``) with the
    backbone's ``init_cfg`` None, revert SyncBN to BatchNorm (one process), move it to
    ``device`` and run ``model.train_step`` once per batch of ``batches`` (dicts of ``inputs``:
    uint8 (3, H, W) tensors and ``data_samples``, as the recipe's pipeline packs them).

    The optimizer wrapper is the recipe's (its constructor, lr decay, clipping), made an
    AmpOptimWrapper with autocast ``dtype`` as tools/train.py --amp does: a plain OptimWrapper
    becomes one with dynamic loss scaling; a recipe's own AmpOptimWrapper keeps its loss scale.
    mmengine's AmpOptimWrapper needs an accelerator, and its CPU autocast takes bfloat16 only.

    Returns losses (one {name: float} per step, every log variable with 'loss' in its name),
    wrapper (the built wrapper's class name), loss_scale (the GradScaler's scale after the
    steps, None without one), params_M, build_s, step_s (seconds per step, the device
    synchronised) and peak_memory_mib (CUDA only, else None)."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper
    scope = cfg.get('default_scope', 'mmdet')
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=True)
    models = importlib.import_module(f'{scope}.registry').MODELS
    cfg.model.backbone.init_cfg = None
    wrapper_cfg = cfg.optim_wrapper
    if wrapper_cfg.get('type', 'OptimWrapper') == 'OptimWrapper':
        wrapper_cfg.type, wrapper_cfg.loss_scale = 'AmpOptimWrapper', 'dynamic'
    assert wrapper_cfg.type == 'AmpOptimWrapper', f'optim_wrapper.type {wrapper_cfg.type!r}'
    wrapper_cfg.dtype = dtype
    cuda = torch.device(device).type == 'cuda'

    def sync():
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model = models.build(cfg.model)
    model.init_weights()
    model = revert_sync_batchnorm(model).to(device)
    model.train()
    optim_wrapper = build_optim_wrapper(model, wrapper_cfg)
    sync()
    build_s = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    losses, step_s = [], []
    for batch in batches:
        sync()
        start = time.perf_counter()
        log_vars = model.train_step(batch, optim_wrapper)
        sync()
        step_s.append(time.perf_counter() - start)
        losses.append({k: float(torch.as_tensor(v).detach().float()) for k, v in
                       log_vars.items() if 'loss' in k})
    scaler = getattr(optim_wrapper, 'loss_scaler', None)
    result = dict(
        losses=losses, wrapper=type(optim_wrapper).__name__,
        loss_scale=float(scaler.get_scale()) if scaler is not None and scaler.is_enabled()
        else None,
        params_M=round(params / 1e6, 1), build_s=round(build_s, 2),
        step_s=[round(s, 3) for s in step_s],
        peak_memory_mib=int(torch.cuda.max_memory_allocated() / 2**20) if cuda else None)
    del model, optim_wrapper, log_vars
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result
