"""tools/train.py and tools/test.py: argument handling and config edits (no training here)."""
import os.path as osp
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(REPO, 'tools'))
import _common  # noqa: E402
from helpers import load_tool


_load_tool = load_tool


train_tool = _load_tool('train')
test_tool = _load_tool('test')

SEG = osp.join(REPO, 'configs', 'segmentation')
T_CONFIG = osp.join(SEG, 'upernet_convnext_t_512_160k_ade20k.py')
DEMO = osp.join(SEG, 'demo_upernet_convnext_atto_toy.py')


def test_train_flags():
    args = train_tool.parse_args([T_CONFIG])
    assert args.resume is None and not args.amp and args.launcher == 'none'
    assert train_tool.parse_args([T_CONFIG, '--resume']).resume == 'auto'
    assert train_tool.parse_args([T_CONFIG, '--resume', 'a.pth']).resume == 'a.pth'
    args = train_tool.parse_args([T_CONFIG, '--amp', '--launcher', 'slurm', '--local-rank', '3'])
    assert args.amp and args.launcher == 'slurm' and args.local_rank == 3
    with pytest.raises(SystemExit):
        train_tool.parse_args([T_CONFIG, '--launcher', 'mpi-not-a-launcher'])


def test_default_work_dir_and_data_root_override():
    cfg = _common.load_config(train_tool.parse_args(
        [T_CONFIG, '--cfg-options', 'data_root=/somewhere/ade', 'train_dataloader.batch_size=1']))
    assert cfg.work_dir == osp.join('work_dirs', 'upernet_convnext_t_512_160k_ade20k')
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[key].dataset.data_root == '/somewhere/ade', key
    assert cfg.train_dataloader.batch_size == 1
    cfg = _common.load_config(train_tool.parse_args([T_CONFIG, '--work-dir', 'here']))
    assert cfg.work_dir == 'here'
    assert cfg.val_dataloader.dataset.data_root == 'data/ade/ADEChallengeData2016'


def test_missing_config_is_named(tmp_path):
    missing = str(tmp_path / 'nope.py')
    with pytest.raises(FileNotFoundError, match='nope.py'):
        _common.load_config(train_tool.parse_args([missing]))


def test_amp_falls_back_to_fp32_without_gpu(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg = _common.load_config(train_tool.parse_args([T_CONFIG]))
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'  # the official fp16 recipe
    with pytest.warns(UserWarning, match='needs a GPU'):
        train_tool._setup_amp(cfg, requested=False)
    assert cfg.optim_wrapper.type == 'OptimWrapper' and 'loss_scale' not in cfg.optim_wrapper
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = _common.load_config(train_tool.parse_args([DEMO]))
    train_tool._setup_amp(cfg, requested=True)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.loss_scale == 'dynamic'


def test_tta_wraps_the_model_and_uses_whole_inference():
    cfg = _common.load_config(test_tool.parse_args([T_CONFIG, 'x.pth', '--tta']))
    test_tool._enable_tta(cfg, T_CONFIG)
    assert cfg.model.type == 'SegTTAModel'
    assert cfg.model.module.type == 'EncoderDecoder'
    assert cfg.model.module.test_cfg.mode == 'whole'
    assert cfg.test_dataloader.dataset.pipeline[1].type == 'TestTimeAug'


def test_show_dir_draws_every_image_into_the_directory(tmp_path):
    cfg = _common.load_config(test_tool.parse_args([DEMO, 'x.pth']))
    test_tool._enable_show_dir(cfg, str(tmp_path / 'vis'))
    hook = cfg.default_hooks.visualization
    assert hook.draw and hook.interval == 1
    assert cfg.visualizer.vis_backends[0].img_save_dir == str(tmp_path / 'vis')


def test_resume_without_a_path_takes_the_newest_complete_checkpoint(tmp_path):
    import torch
    cfg = _common.load_config(train_tool.parse_args([DEMO, '--work-dir', str(tmp_path)]))
    with pytest.warns(UserWarning, match='no checkpoint'):
        train_tool.resolve_resume(cfg, 'auto')
    assert cfg.resume is False and cfg.load_from is None
    for step in (2, 4):
        torch.save({}, tmp_path / f'iter_{step}.pth')
    (tmp_path / 'last_checkpoint').write_text('')  # killed while mmengine wrote it
    train_tool.resolve_resume(cfg, 'auto')
    assert cfg.resume is True and cfg.load_from == str(tmp_path / 'iter_4.pth')
    train_tool.resolve_resume(cfg, 'x.pth')
    assert cfg.resume is True and cfg.load_from == 'x.pth'


def test_atomic_checkpoints_only_where_the_user_selects_them():
    """A user's stock CheckpointHook stays stock; --atomic-checkpoints switches it, keeps its
    arguments and says so."""
    cfg = _common.load_config(train_tool.parse_args([T_CONFIG]))
    cfg.default_hooks.checkpoint.type = 'CheckpointHook'  # as in a user's config
    _common.select_components(cfg)
    assert cfg.default_hooks.checkpoint.type == 'CheckpointHook'
    note = _common.use_atomic_checkpoints(cfg)
    assert cfg.default_hooks.checkpoint.type == 'convnext_dense.AtomicCheckpointHook'
    assert cfg.default_hooks.checkpoint.interval == 16000
    assert 'was CheckpointHook' in note
    assert _common.use_atomic_checkpoints(cfg) is None  # ours already: nothing to change
    assert train_tool.parse_args([T_CONFIG, '--atomic-checkpoints']).atomic_checkpoints


