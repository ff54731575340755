"""AMP and SyncBN on the GPU: ``tools/train.py --amp bf16`` / ``--amp`` give mmengine's
AmpOptimWrapper in bf16 (no loss scaling) / fp16 (dynamic loss scaling); the UperNet recipe's
SyncBN heads become BatchNorm in a one-process run and stay SyncBatchNorm under torchrun with
nccl (mmengine's Runner.wrap_model: revert_sync_batchnorm when not distributed, DDP otherwise),
each with one fp16 AMP training step."""
import json
import os.path as osp
import re
import sys

import pytest
import torch

from helpers import REPO, free_port, load_tool, run

pytestmark = pytest.mark.cuda

UPERNET_T = osp.join(REPO, 'configs', 'segmentation', 'upernet_convnext_t_512_160k_ade20k.py')
PROBE = osp.join(osp.dirname(osp.abspath(__file__)), 'syncbn_probe.py')


def _train_tool():
    return load_tool('train')


@pytest.mark.parametrize('flag,dtype,scaling', [('bf16', torch.bfloat16, False),
                                                ('fp16', torch.float16, True)])
def test_amp_flag_builds_the_amp_optim_wrapper(flag, dtype, scaling):
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    train = _train_tool()
    assert train.parse_args([UPERNET_T, '--amp']).amp == 'fp16'
    cfg = Config.fromfile(UPERNET_T)
    train._setup_amp(cfg, train.parse_args([UPERNET_T, '--amp', flag]).amp)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).cuda()
    wrapper_cfg = dict(type=cfg.optim_wrapper.type, dtype=cfg.optim_wrapper.dtype,
                       loss_scale=cfg.optim_wrapper.loss_scale,
                       optimizer=dict(type='AdamW', lr=1e-3))
    wrapper = build_optim_wrapper(model, wrapper_cfg)
    assert type(wrapper).__name__ == 'AmpOptimWrapper' and wrapper.cast_dtype == dtype
    assert wrapper.loss_scaler.is_enabled() == scaling
    with wrapper.optim_context(model):
        out = model(torch.randn(2, 3, 16, 16, device='cuda'))
    assert out.dtype == dtype
    wrapper.update_params(out.float().square().mean())
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _probe_output(output):
    found = re.findall(r'^PROBE (.*)$', output, flags=re.M)
    assert found, output[-3000:]
    return json.loads(found[-1])


def test_syncbn_becomes_batchnorm_in_one_process(tmp_path):
    import syncbn_probe  # in this process: no second start-up
    result = syncbn_probe.probe(UPERNET_T, str(tmp_path))
    assert not result['distributed'] and not result['ddp'], result
    assert result['norm_layers']['SyncBatchNorm'] == 0
    assert result['norm_layers']['BatchNorm'] > 0
    assert result['device'].startswith('cuda') and result['finite'], result
    assert result['optim_wrapper'] == 'AmpOptimWrapper'


def test_syncbn_stays_syncbn_under_torchrun_with_nccl(tmp_path):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '1',
           '--master_port', str(free_port()), PROBE, UPERNET_T, str(tmp_path),
           '--launcher', 'pytorch']
    result = _probe_output(run(cmd, cwd=tmp_path, threads='4'))
    assert result['distributed'] and result['backend'] == 'nccl', result
    assert result['ddp'], result  # the configs' convnext_dense.AnyDeviceDistributedDataParallel
    assert result['norm_layers']['SyncBatchNorm'] > 0
    assert result['norm_layers']['BatchNorm'] == 0
    assert result['device'].startswith('cuda') and result['finite'], result
