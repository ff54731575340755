"""Build a config's Runner as tools/train.py does, report the norm layers of the model it will
train, and run one training step (the config's optim wrapper, e.g. fp16 AMP) on a synthetic
ADE20K-sized batch. Prints one line ``PROBE {json}``.

    python tests/cuda/syncbn_probe.py CONFIG WORK_DIR                      # one process
    torchrun --nproc_per_node 1 tests/cuda/syncbn_probe.py CONFIG WORK_DIR --launcher pytorch

Used by tests/cuda/test_cuda_amp_syncbn.py (segmentation configs: UPerHead / FCNHead SyncBN).
"""
import argparse
import json
import math
import os.path as osp
import sys

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO)

import torch  # noqa: E402

import convnext_dense  # noqa: E402,F401


def seg_batch(size, num_classes, num_images=2):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    generator = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(num_images):
        inputs.append(torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator))
        sample = SegDataSample(metainfo=dict(img_shape=size, ori_shape=size))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, num_classes, (1, *size), generator=generator))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def norm_layers(model):
    counts = dict(SyncBatchNorm=0, BatchNorm=0)
    for module in model.modules():
        if isinstance(module, torch.nn.SyncBatchNorm):
            counts['SyncBatchNorm'] += 1
        elif isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            counts['BatchNorm'] += 1
    return counts


def probe(config, work_dir, launcher='none'):
    import torch.distributed as dist
    from mmengine.config import Config
    from mmengine.model import is_model_wrapper
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import Runner

    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None  # no pretrained weights needed
    cfg.launcher, cfg.work_dir = launcher, work_dir
    runner = Runner.from_cfg(cfg)  # builds the model, then wraps it (DDP) or reverts SyncBN
    model = runner.model
    inner = model.module if is_model_wrapper(model) else model
    inner.init_weights()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    size = tuple(cfg.model.data_preprocessor.get('size') or (512, 512))
    log_vars = model.train_step(seg_batch(size, cfg.model.decode_head.num_classes),
                                optim_wrapper)
    losses = {k: float(torch.as_tensor(v).detach()) for k, v in log_vars.items() if 'loss' in k}
    result = dict(distributed=runner.distributed, launcher=launcher,
                  backend=dist.get_backend() if dist.is_initialized() else None,
                  wrapper=type(model).__name__,
                  ddp=isinstance(model, torch.nn.parallel.DistributedDataParallel),
                  optim_wrapper=type(optim_wrapper).__name__,
                  device=str(next(inner.parameters()).device), norm_layers=norm_layers(inner),
                  losses=losses, finite=all(math.isfinite(v) for v in losses.values()))
    if dist.is_initialized():
        dist.destroy_process_group()
    return result


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument('config')
    parser.add_argument('work_dir')
    parser.add_argument('--launcher', default='none', choices=['none', 'pytorch'])
    args = parser.parse_args(argv)
    print('PROBE ' + json.dumps(probe(args.config, args.work_dir, args.launcher)), flush=True)


if __name__ == '__main__':
    main()
