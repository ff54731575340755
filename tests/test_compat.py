"""convnext_dense.compat: compiled mmcv ops, safe checkpoint loading, pkg_resources-free lookup."""
import builtins
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import convnext_dense  # noqa: F401  (applies the patches)
from convnext_dense import compat


# ----------------------------------------------------------------------------- mmcv ops
def test_mmcv_nms_on_hand_made_boxes():
    from mmcv.ops import nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [20., 20., 30., 30.],
                          [0., 0., 10., 5.]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    # IoU(0, 1) = 81 / 119 = 0.68; IoU(0, 3) = 50 / 100 = 0.5; box 2 overlaps nothing.
    dets, keep = nms(boxes, scores, iou_threshold=0.6)
    assert keep.tolist() == [0, 2, 3]
    assert dets[:, 4].tolist() == pytest.approx([0.9, 0.7, 0.6])
    _, keep = nms(boxes, scores, iou_threshold=0.45)
    assert keep.tolist() == [0, 2]


def test_mmcv_batched_nms_keeps_classes_apart():
    from mmcv.ops import batched_nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [1., 1., 11., 11.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    dets, keep = batched_nms(boxes, scores, torch.tensor([0, 0, 1]),
                             dict(type='nms', iou_threshold=0.5))
    assert keep.tolist() == [0, 2]  # box 1 suppressed by box 0 (same class), box 2 kept
    assert dets[:, 4].tolist() == pytest.approx([0.9, 0.7])


def test_mmcv_roi_align_is_exact_on_a_linear_map():
    from mmcv.ops import RoIAlign
    ys, xs = torch.meshgrid(torch.arange(8.), torch.arange(8.), indexing='ij')
    feature = (xs + 10 * ys)[None, None]  # value = x + 10 y; bilinear sampling is exact
    rois = torch.tensor([[0., 2., 2., 6., 6.]])
    out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=True)(feature, rois)
    # aligned: box [1.5, 5.5) in pixel centres, bins of 2, bin centres 2.5 and 4.5.
    assert out[0, 0].tolist() == [[27.5, 29.5], [47.5, 49.5]]
    out = RoIAlign((1, 1), spatial_scale=0.5, sampling_ratio=2, aligned=False)(feature, rois)
    assert out.item() == pytest.approx(2.0 + 10 * 2.0)  # box [1, 3): centre 2


# ----------------------------------------------------------------------------- checkpoints
class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)


def mmengine_style_checkpoint():
    """What mmengine's Runner writes: meta with NumPy values, MessageHub, optimizer state."""
    from mmengine.logging import MessageHub
    model = TinyModel()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.linear.weight.sum().backward()
    optimizer.step()
    hub = MessageHub('compat-test')
    for step in range(3):
        hub.update_scalar('train/loss', 1.0 / (step + 1))
        hub.update_scalar('train/lr', np.float64(1e-3))
    hub.update_info('iter', 3)
    return {'meta': {'epoch': 1, 'iter': 3, 'seed': np.int64(42),
                     'mean': np.array([123.675, 116.28, 103.53]),
                     'dataset_meta': {'classes': ('a', 'b')}},
            'state_dict': model.state_dict(), 'optimizer': optimizer.state_dict(),
            'message_hub': hub.state_dict()}


def test_mmengine_checkpoint_round_trip(tmp_path):
    from mmengine.runner.checkpoint import _load_checkpoint, save_checkpoint
    original = mmengine_style_checkpoint()
    path = str(tmp_path / 'epoch_1.pth')
    save_checkpoint(original, path)
    loaded = _load_checkpoint(path, map_location='cpu')
    assert loaded['meta']['seed'] == 42 and isinstance(loaded['meta']['seed'], np.int64)
    np.testing.assert_array_equal(loaded['meta']['mean'], original['meta']['mean'])
    for key, value in original['state_dict'].items():
        assert torch.equal(loaded['state_dict'][key], value)
    assert loaded['optimizer']['state'][0]['step'] == original['optimizer']['state'][0]['step']
    buffer = loaded['message_hub']['log_scalars']['train/loss']
    assert buffer.mean() == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert buffer.current() == pytest.approx(1 / 3)


def test_runner_checkpoint_needs_the_allow_list(tmp_path):
    """Without our allow-list torch >= 2.6 refuses mmengine's own checkpoints."""
    path = str(tmp_path / 'ckpt.pth')
    torch.save(mmengine_style_checkpoint(), path)
    torch.serialization.clear_safe_globals()
    try:
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path, weights_only=True)
    finally:
        torch.serialization.add_safe_globals(compat.safe_checkpoint_globals())
    assert torch.load(path, weights_only=True)['meta']['iter'] == 3


class Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


class Harmless:
    def __init__(self):
        self.value = 7


def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path):
    from mmengine.runner.checkpoint import _load_checkpoint
    marker = tmp_path / 'pwned'
    path = str(tmp_path / 'evil.pth')
    torch.save({'state_dict': {}, 'meta': Payload(marker)}, path)
    with pytest.raises(compat.UnsafeCheckpointError, match=r'system.*' + compat.TRUST_ENV):
        _load_checkpoint(path, map_location='cpu')
    assert not marker.exists()


def test_getattr_stand_in_reads_only_history_buffer_statistics(tmp_path):
    from mmengine.logging import HistoryBuffer
    from mmengine.runner.checkpoint import _load_checkpoint

    class Escape:
        def __reduce__(self):
            return builtins.getattr, (HistoryBuffer, '__init__')

    path = str(tmp_path / 'escape.pth')
    torch.save({'x': Escape()}, path)
    with pytest.raises(compat.UnsafeCheckpointError, match="__init__"):
        _load_checkpoint(path, map_location='cpu')
    assert compat._history_buffer_getattr(HistoryBuffer, 'max') is HistoryBuffer.max


def test_trusted_file_loads_only_with_explicit_opt_in(tmp_path, monkeypatch):
    from mmengine.runner.checkpoint import _load_checkpoint
    path = str(tmp_path / 'custom.pth')
    torch.save({'meta': Harmless()}, path)
    with pytest.raises(compat.UnsafeCheckpointError, match='Harmless'):
        _load_checkpoint(path, map_location='cpu')
    monkeypatch.setenv(compat.TRUST_ENV, '1')
    with pytest.warns(UserWarning, match='full pickle'):
        assert _load_checkpoint(path, map_location='cpu')['meta'].value == 7


# ----------------------------------------------------------------------------- pkg_resources
def test_mmdet_base_config_without_pkg_resources(tmp_path):
    """A config with an ``mmdet::`` base loads even where pkg_resources is gone."""
    config = tmp_path / 'child.py'
    config.write_text("_base_ = 'mmdet::_base_/schedules/schedule_1x.py'\n"
                      "optim_wrapper = dict(optimizer=dict(lr=0.01))\n")
    code = ("import sys; sys.modules['pkg_resources'] = None\n"
            "import convnext_dense\n"
            "from mmengine.config import Config\n"
            f"cfg = Config.fromfile({str(config)!r})\n"
            "print(cfg.train_cfg.max_epochs, cfg.optim_wrapper.optimizer.lr)\n")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ['12', '0.01']
    assert compat.get_installed_path('mmdet').endswith(os.sep + 'mmdet')
    assert compat.package_to_module('opencv-python') == 'cv2'
    assert compat.is_installed('mmengine') and not compat.is_installed('no-such-package-x')


# ----------------------------------------------------------------------------- atomic saving
def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A save that dies half-way leaves the previous file intact and no partial file."""
    from mmengine.runner.checkpoint import save_checkpoint
    path = tmp_path / 'iter_2.pth'
    save_checkpoint({'meta': {'iter': 2}}, str(path))
    real_fsync = os.fsync

    def crash(fd):
        raise KeyboardInterrupt('killed while saving')

    monkeypatch.setattr(os, 'fsync', crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({'meta': {'iter': 999}}, str(path))
    monkeypatch.setattr(os, 'fsync', real_fsync)
    assert torch.load(path, weights_only=True)['meta']['iter'] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ['iter_2.pth']


def test_find_latest_checkpoint_skips_a_broken_pointer(tmp_path):
    from mmengine.runner import checkpoint as checkpoint_module
    from mmengine.runner import runner as runner_module
    assert runner_module.find_latest_checkpoint is compat.find_latest_checkpoint
    assert checkpoint_module.find_latest_checkpoint(str(tmp_path)) is None
    for step in (2, 10, 4):
        torch.save({}, tmp_path / f'iter_{step}.pth')
    (tmp_path / 'last_checkpoint').write_text('')  # killed while writing the pointer
    assert compat.find_latest_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_10.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))
    assert compat.find_latest_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_4.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_12.pth'))  # file vanished
    assert compat.find_latest_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_10.pth')
