"""Segmentation configs in 2 CPU processes (tools/dist_train.sh, gloo): their SyncBN heads
become BatchNorm as in one-process runs, and DDP does not warn about gradient strides (the
depthwise-convolution weights' gradients are viewed with their parameters' strides)."""
import os.path as osp
import sys

import torch

from helpers import SEG_DEMO, TOOLS, free_port, run, toy_dataset
from convnext_dense.engine.distributed import _match_grad_strides, _restride

NO_WORKERS = [f'{split}_dataloader.{key}={value}' for split in ('train', 'val', 'test')
              for key, value in (('num_workers', 0), ('persistent_workers', False))]


def test_uper_net_with_sync_bn_trains_in_two_gloo_processes(tmp_path_factory, tmp_path):
    root = toy_dataset(tmp_path_factory, 'ade', num_train=4, num_val=2, size=(128, 96))
    work = tmp_path / 'work'
    output = run(['bash', osp.join(TOOLS, 'dist_train.sh'), SEG_DEMO, '2', '--work-dir',
                  str(work), '--cfg-options', f'data_root={root}', 'max_iters=2',
                  'train_dataloader.batch_size=2', *NO_WORKERS], cwd=tmp_path,
                 env=dict(PORT=str(free_port()), PYTHON=sys.executable,
                          PYTHONWARNINGS='default'))  # the warnings are what is checked
    assert 'Distributed training: True' in output
    assert 'SyncBatchNorm layers need GPUs, so they become BatchNorm layers' in output
    assert 'SyncBatchNorm layers only work with GPU modules' not in output
    assert 'Grad strides do not match bucket view strides' not in output
    assert 'Iter(train) [2/2]' in output and 'mIoU' in output
    assert osp.isfile(work / 'iter_2.pth')


def test_gradients_take_their_parameters_strides_only_where_the_size_is_one():
    conv = torch.nn.Conv2d(8, 8, 7, padding=3, groups=8)  # weight [8, 1, 7, 7]
    assert conv.weight.stride() == (49, 49, 7, 1)
    _match_grad_strides(conv)
    conv(torch.randn(1, 8, 9, 9).to(memory_format=torch.channels_last)).sum().backward()
    assert conv.weight.grad.stride() == (49, 49, 7, 1)
    # only size-1 differences are views; any other layout is left alone
    grad = torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last)
    assert _restride(grad, (4, 3, 2, 2), (12, 4, 2, 1)) is grad
    same = torch.randn(8, 1, 7, 7).as_strided((8, 1, 7, 7), (49, 1, 7, 1))
    viewed = _restride(same, (8, 1, 7, 7), (49, 49, 7, 1))
    assert viewed.stride() == (49, 49, 7, 1) and torch.equal(viewed, same)
    assert viewed.data_ptr() == same.data_ptr()
