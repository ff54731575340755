"""Training that loses nothing: a non-finite loss stops with the iteration and the term; the
random state round-trips through a weights-only checkpoint; SIGKILL mid-save, then --resume,
gives exactly the losses of an uninterrupted run (iteration- and epoch-based)."""
import functools
import glob
import json
import os
import os.path as osp
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import convnext_dense  # noqa: F401  (registries)
from convnext_dense.engine import find_latest_checkpoint

import helpers
from helpers import DET_DEMO, REPO, SEG_DEMO, TOOLS, load_tool, seg_args

train_tool = load_tool('train')
_common = load_tool('_common')

# Two threads, as in the SIGKILL test's own launch: its losses must match run for run.
run = functools.partial(helpers.run, threads='2')


def logged_losses(work_dir):
    """{iteration: {loss name: value}} from the json logs of every run in ``work_dir``."""
    losses = {}
    for path in sorted(glob.glob(osp.join(str(work_dir), '2*', 'vis_data', '2*.json'))):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if 'loss' in record:
                    losses[record['iter']] = {k: v for k, v in record.items() if 'loss' in k}
    return losses


def test_non_finite_loss_stops_with_iteration_and_term(toy_ade, configs, tmp_path,
                                                      monkeypatch, no_deterministic_leak):
    """A NaN in the decode head's loss at iteration 3 stops training naming both; iteration 3
    is never saved; the last good checkpoint (iteration 2) stays intact and resumable."""
    from mmseg.models.decode_heads import UPerHead
    original = UPerHead.loss_by_feat
    calls = []

    def poisoned(self, *args, **kwargs):
        losses = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            losses['loss_ce'] = losses['loss_ce'] * float('nan')
        return losses

    monkeypatch.setattr(UPerHead, 'loss_by_feat', poisoned)
    work = tmp_path / 'work'
    with pytest.raises(FloatingPointError) as info:
        train_tool.main([str(configs / 'seg_tiny.py'),
                         *seg_args(toy_ade, work, 'default_hooks.checkpoint.interval=1',
                                   'train_cfg.max_iters=5')])
    message = str(info.value)
    assert 'iteration 3' in message and 'decode.loss_ce=nan' in message, message
    assert 'aux.loss_ce' not in message and 'iter_2.pth' in message and '--resume' in message
    assert sorted(n for n in os.listdir(work) if n.endswith('.pth')) == \
        ['iter_1.pth', 'iter_2.pth']
    named = (work / 'last_checkpoint').read_text().strip()
    assert named == str(work / 'iter_2.pth')
    from mmengine.runner.checkpoint import _load_checkpoint
    checkpoint = _load_checkpoint(named)
    assert checkpoint['meta']['iter'] == 2
    assert all(torch.isfinite(v).all() for v in checkpoint['state_dict'].values()
               if v.is_floating_point())


def test_runtime_configs_carry_the_reliability_hooks():
    for config in (SEG_DEMO, DET_DEMO):
        cfg = _common.load_config(train_tool.parse_args([config]))
        types = [h['type'] for h in cfg.custom_hooks]
        assert types == ['convnext_dense.StopOnNonFiniteLossHook',
                         'convnext_dense.ReproducibilityHook'], config
        assert cfg.env_cfg.dist_cfg.timeout == 1800  # no collective waits forever
        assert cfg.default_hooks.checkpoint.type == 'convnext_dense.AtomicCheckpointHook'
        assert cfg.model_wrapper_cfg.type == 'convnext_dense.AnyDeviceDistributedDataParallel'


def test_random_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random
    from convnext_dense.engine.reproducibility import get_rng_state, set_rng_state
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = get_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    torch.save({'rng_state': state}, tmp_path / 'rng.pth')
    set_rng_state(torch.load(tmp_path / 'rng.pth', weights_only=True)['rng_state'])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


# ----------------------------------------------------------------------------- end to end
DRIVER = """
import os, runpy, sys, time
# Simulates SIGKILL in the middle of writing a checkpoint: the n-th checkpoint's temporary
# file is written, then fsync blocks (forever) until the test kills the process.
block_at, marker = int(os.environ['BLOCK_AT_SAVE']), os.environ['BLOCKED_MARKER']
real_fsync, saves = os.fsync, []
def fsync(fd):
    path = os.readlink(f'/proc/self/fd/{fd}')
    if os.path.basename(path).startswith('.iter_') and path.endswith('.tmp'):
        saves.append(path)
        if len(saves) == block_at:
            with open(marker, 'w') as f:
                f.write(path)
            time.sleep(3600)
    return real_fsync(fd)
os.fsync = fsync
sys.path.insert(0, os.path.join(sys.argv[1], 'tools'))
train = os.path.join(sys.argv[1], 'tools', 'train.py')
sys.argv = [train] + sys.argv[2:]
runpy.run_path(train, run_name='__main__')
"""


@pytest.mark.slow
def test_sigkill_mid_save_then_resume_matches_an_uninterrupted_run(toy_ade, configs, tmp_path):
    """Iteration-based (segmentation demo, InfiniteSampler): run A trains 6 iterations; run B
    the same, killed with SIGKILL while writing its iteration-4 checkpoint; B resumed with
    --resume continues from iteration 2 and logs exactly A's losses for iterations 3-6."""
    config = str(configs / 'seg_tiny.py')
    options = ['--cfg-options', f'data_root={toy_ade}']
    work_a, work_b = tmp_path / 'a', tmp_path / 'b'
    run([sys.executable, osp.join(TOOLS, 'train.py'), config, '--work-dir', str(work_a),
         *options], cwd=tmp_path)
    losses_a = logged_losses(work_a)
    assert sorted(losses_a) == [1, 2, 3, 4, 5, 6]

    driver = tmp_path / 'driver.py'
    driver.write_text(DRIVER)
    marker = tmp_path / 'blocked'
    env = dict(os.environ, OMP_NUM_THREADS='2', PYTHONWARNINGS='ignore', BLOCK_AT_SAVE='2',
               BLOCKED_MARKER=str(marker))
    with open(tmp_path / 'b.log', 'w') as log:
        process = subprocess.Popen([sys.executable, str(driver), REPO, config, '--work-dir',
                                    str(work_b), *options], cwd=tmp_path, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 400
            while not marker.exists() and process.poll() is None and time.time() < deadline:
                time.sleep(0.2)
            assert marker.exists(), (tmp_path / 'b.log').read_text()[-3000:]
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    partial = marker.read_text()
    assert osp.basename(partial).startswith('.iter_4.pth') and osp.isfile(partial)
    assert not osp.exists(work_b / 'iter_4.pth')
    assert (work_b / 'last_checkpoint').read_text().strip() == str(work_b / 'iter_2.pth')
    assert find_latest_checkpoint(str(work_b)) == str(work_b / 'iter_2.pth')
    # same seed, deterministic mode: the killed run had logged A's losses exactly
    losses_b = logged_losses(work_b)
    assert sorted(losses_b) == [1, 2, 3, 4]
    assert all(losses_b[i] == losses_a[i] for i in losses_b), (losses_a, losses_b)

    output = run([sys.executable, osp.join(TOOLS, 'train.py'), config, '--work-dir',
                  str(work_b), '--resume', *options], cwd=tmp_path)
    assert re.search(r'resumed epoch: 0, iter: 2', output), output[-3000:]
    assert 'Partial checkpoint file(s) from an interrupted save' in output
    resumed = logged_losses(work_b)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for i in (3, 4, 5, 6):
        assert resumed[i] == losses_a[i], (i, resumed[i], losses_a[i])
    assert (work_b / 'last_checkpoint').read_text().strip() == str(work_b / 'iter_6.pth')

    # seed, versions and config: in the work dir and in the checkpoint meta
    infos = sorted(glob.glob(str(work_b / '2*' / 'run_info.json')))
    assert len(infos) == 2
    info = json.load(open(infos[-1]))
    assert info['seed'] == 0 and info['randomness']['deterministic'] is True
    for package in ('torch', 'mmengine', 'mmcv', 'mmdet', 'mmseg', 'convnext_dense'):
        assert info['versions'][package], package
    assert info['versions']['torch'] == str(torch.__version__)
    assert info['config'] == config and osp.isfile(info['config_dump'])
    assert '--resume' in info['command'] and info['resume'] is True
    from mmengine.runner.checkpoint import _load_checkpoint
    meta = _load_checkpoint(str(work_b / 'iter_6.pth'))['meta']  # weights-only
    assert meta['seed'] == 0 and meta['randomness']['deterministic'] is True
    assert meta['versions'] == info['versions']
    assert meta['cfg'].startswith('raise RuntimeError(')  # config text is never executed
    written = torch.load(str(work_b / 'iter_6.pth'), weights_only=False)  # our own file
    assert 'crop_size = (\n    64,\n    64,\n)' in written['meta']['cfg']  # the config, as run


@pytest.mark.slow
def test_epoch_based_resume_matches_an_uninterrupted_run(toy_coco, configs, tmp_path):
    """Epoch-based (detection demo, DefaultSampler): resuming from the epoch-1 checkpoint
    gives epoch 2 the uninterrupted run's losses; without the saved random states (no
    ReproducibilityHook) they differ, because flips, resizes and RoI sampling draw from the
    global random generators."""
    config = str(configs / 'det_tiny.py')
    options = ['--cfg-options', f'data_root={toy_coco}']
    train = [sys.executable, osp.join(TOOLS, 'train.py'), config]
    run([*train, '--work-dir', str(tmp_path / 'a'), *options], cwd=tmp_path)
    losses_a = logged_losses(tmp_path / 'a')
    assert sorted(losses_a) == [1, 2]
    output = run([*train, '--work-dir', str(tmp_path / 'r'), '--resume',
                  str(tmp_path / 'a' / 'epoch_1.pth'), *options], cwd=tmp_path)
    assert 'resumed epoch: 1, iter: 1' in output
    assert logged_losses(tmp_path / 'r') == {2: losses_a[2]}
