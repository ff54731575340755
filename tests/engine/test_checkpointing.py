"""Atomic checkpoint writes (file backend, CheckpointHook subclass, save_atomically) and the
newest-complete-checkpoint lookup for --resume."""
import os

import pytest
import torch
from torch import nn

import convnext_dense  # noqa: F401  (registers the backend and the hook)
from convnext_dense.checkpoint.atomic import (ATOMIC_BACKEND, AtomicCheckpointHook,
                                                 AtomicLocalBackend, find_latest_checkpoint,
                                                 save_atomically, write_atomically)


def crash_in_fsync(monkeypatch):
    def crash(fd):
        raise KeyboardInterrupt('killed while saving')
    monkeypatch.setattr(os, 'fsync', crash)


def test_checkpoint_write_through_the_backend_is_atomic(tmp_path, monkeypatch):
    """A save that dies half-way leaves the previous file intact and no partial file."""
    from mmengine.runner.checkpoint import save_checkpoint
    path = tmp_path / 'iter_2.pth'
    backend_args = dict(backend=ATOMIC_BACKEND)
    save_checkpoint({'meta': {'iter': 2}}, str(path), backend_args=backend_args)
    with monkeypatch.context() as patch:
        crash_in_fsync(patch)
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint({'meta': {'iter': 999}}, str(path), backend_args=backend_args)
    assert torch.load(path, weights_only=True)['meta']['iter'] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ['iter_2.pth']


def test_save_atomically_leaves_no_partial_file(tmp_path, monkeypatch):
    save_atomically({'x': torch.ones(2)}, str(tmp_path / 'a.pth'))
    crash_in_fsync(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        save_atomically({'x': torch.zeros(2)}, str(tmp_path / 'a.pth'))
    monkeypatch.undo()
    assert torch.load(tmp_path / 'a.pth', weights_only=True)['x'].tolist() == [1., 1.]
    assert os.listdir(tmp_path) == ['a.pth']


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomically(b'x', str(tmp_path / 'a.pth'))
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / 'a.pth').st_mode & 0o777) == 0o644  # mkstemp alone gives 0600


def test_backend_is_added_not_swapped_in():
    """The local backend that every mmengine user gets stays mmengine's own."""
    from mmengine.fileio import LocalBackend, get_file_backend
    assert type(get_file_backend('/some/file.pth')) is LocalBackend
    assert type(get_file_backend('/x', backend_args=dict(backend=ATOMIC_BACKEND))) is \
        AtomicLocalBackend
    assert AtomicCheckpointHook().backend_args == dict(backend=ATOMIC_BACKEND)
    assert AtomicCheckpointHook(out_dir='s3://bucket/x').backend_args is None
    assert AtomicCheckpointHook(backend_args=dict(backend='local')).backend_args == \
        dict(backend='local')


def test_hook_in_a_runner_writes_through_temporary_files(tmp_path, monkeypatch):
    """Selected by its config key, the hook saves each checkpoint via fsync + rename."""
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    from torch.utils.data import DataLoader

    class Model(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 1)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            out = self.linear(torch.stack(inputs))
            return dict(loss=out.pow(2).mean()) if mode == 'loss' else out

    synced, real_fsync = [], os.fsync

    def fsync(fd):
        synced.append(os.path.basename(os.readlink(f'/proc/self/fd/{fd}')))
        return real_fsync(fd)

    monkeypatch.setattr(os, 'fsync', fsync)
    loader = DataLoader([dict(inputs=torch.ones(2))] * 4, batch_size=2,
                        collate_fn=lambda batch: dict(inputs=[b['inputs'] for b in batch]))
    runner = Runner(model=Model(), work_dir=str(tmp_path), train_dataloader=loader,
                    optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
                    train_cfg=dict(by_epoch=False, max_iters=2),
                    default_hooks=dict(checkpoint=dict(
                        type='convnext_dense.AtomicCheckpointHook', by_epoch=False,
                        interval=1)),
                    experiment_name='atomic_hook_test')
    runner.train()
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith('.pth')) == \
        ['iter_1.pth', 'iter_2.pth']
    assert [n.split('.pth')[0] for n in synced] == ['.iter_1', '.iter_2']
    assert all(n.endswith('.tmp') for n in synced)


def test_find_latest_checkpoint_skips_a_broken_pointer(tmp_path):
    assert find_latest_checkpoint(str(tmp_path)) is None
    assert find_latest_checkpoint(str(tmp_path / 'absent')) is None
    for step in (2, 10, 4):
        torch.save({}, tmp_path / f'iter_{step}.pth')
    (tmp_path / 'last_checkpoint').write_text('')  # killed while writing the pointer
    assert find_latest_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_10.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))
    assert find_latest_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_4.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_12.pth'))  # file vanished
    assert find_latest_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_10.pth')
    # a work dir copied from elsewhere: its pointer names the original's file, never followed
    elsewhere = tmp_path.parent / f'{tmp_path.name}_original'
    elsewhere.mkdir()
    torch.save({}, elsewhere / 'iter_99.pth')
    (tmp_path / 'last_checkpoint').write_text(str(elsewhere / 'iter_99.pth'))
    with pytest.warns(UserWarning, match=r'iter_99\.pth, which is outside'):
        assert find_latest_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_10.pth')
    (tmp_path / 'last_checkpoint').write_text('../' + elsewhere.name + '/iter_99.pth')
    with pytest.warns(UserWarning, match='outside'):
        assert find_latest_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_10.pth')
