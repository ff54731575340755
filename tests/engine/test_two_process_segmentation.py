"""Segmentation configs in 2 CPU processes (tools/dist_train.sh, gloo): their SyncBN heads
become BatchNorm as in one-process runs, and DDP does not warn about gradient strides (the
depthwise-convolution weights' gradients are viewed with their parameters' strides)."""
import glob
import os
import os.path as osp
import re
import signal
import subprocess
import sys
import time

import pytest
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


def _children(pid):
    found = []
    for stat in glob.glob('/proc/[0-9]*/stat'):
        try:
            fields = open(stat).read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.split('/')[2]))
    return found


def _rank_of(pid):
    try:
        environ = open(f'/proc/{pid}/environ', 'rb').read().split(b'\0')
    except OSError:
        return None
    for item in environ:
        if item.startswith(b'RANK='):
            return int(item[5:])
    return None


@pytest.mark.slow
def test_two_process_gloo_train_save_resume_evaluate_and_rank_death(toy_ade, configs,
                                                                    tmp_path):
    config = str(configs / 'seg_tiny_dist.py')
    work = tmp_path / 'dist'
    env = dict(PORT=str(free_port()), PYTHON=sys.executable, OMP_NUM_THREADS='1')
    dist_train = ['bash', osp.join(TOOLS, 'dist_train.sh'), config, '2', '--work-dir',
                  str(work)]
    options = ['--cfg-options', f'data_root={toy_ade}', 'train_cfg.max_iters=4',
               'train_cfg.val_interval=4', 'randomness.deterministic=False']
    output = run([*dist_train, *options], cwd=tmp_path, env=env)
    assert re.search(r'Iter\(train\) \[4/4\]', output), output[-3000:]
    assert re.search(r'mIoU: \d+\.\d+', output)  # evaluated after training
    from mmengine.runner.checkpoint import _load_checkpoint
    checkpoint = _load_checkpoint(str(work / 'iter_4.pth'))
    assert checkpoint['meta']['iter'] == 4
    # every rank's random state went into the checkpoint
    assert checkpoint['rng_state']['world_size'] == 2
    assert len(checkpoint['rng_state']['ranks']) == 2

    # resume with 2 processes, then kill rank 1 mid-training: the launcher must end the job
    options[2:4] = ['train_cfg.max_iters=400', 'train_cfg.val_interval=400']
    env['PORT'] = str(free_port())
    log_path = tmp_path / 'resume.log'
    with open(log_path, 'w') as log:
        process = subprocess.Popen([*dist_train, '--resume', *options], cwd=tmp_path,
                                   env={**os.environ, 'PYTHONWARNINGS': 'ignore', **env},
                                   stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and process.poll() is None and \
                    not re.search(r'Iter\(train\) \[\s*6/400\]', log_path.read_text()):
                time.sleep(0.5)
            text = log_path.read_text()
            assert 'resumed epoch: 0, iter: 4' in text, text[-3000:]
            assert re.search(r'Iter\(train\) \[\s*6/400\]', text), text[-3000:]
            ranks = {_rank_of(pid): pid for pid in _children(process.pid)}
            assert sorted(ranks) == [0, 1], ranks
            os.kill(ranks[1], signal.SIGKILL)
            killed_at = time.time()
            process.wait(timeout=180)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    took = time.time() - killed_at
    text = log_path.read_text()
    assert process.returncode != 0
    assert took < 120, f'the surviving rank took {took:.0f} s to stop'
    assert 'ChildFailedError' in text and 'Signal 9 (SIGKILL)' in text, text[-3000:]
    for pid in ranks.values():  # no worker is left behind
        assert not osp.exists(f'/proc/{pid}') or \
            open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[0] == 'Z'
