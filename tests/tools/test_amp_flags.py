"""tools/train.py --amp [{fp16,bf16}]: the optim_wrapper edits (the GPU runs them in
tests/cuda/test_cuda_amp_syncbn.py)."""
import os.path as osp
import sys

import pytest
import torch
from helpers import load_tool

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(REPO, 'tools'))
SEG = osp.join(REPO, 'configs', 'segmentation')
UPERNET_T = osp.join(SEG, 'upernet_convnext_t_512_160k_ade20k.py')  # AmpOptimWrapper, fp16
DEMO = osp.join(SEG, 'demo_upernet_convnext_atto_toy.py')  # OptimWrapper


def _train_tool():
    return load_tool('train')


train = _train_tool()


def _config(path):
    from mmengine.config import Config
    return Config.fromfile(path)


def test_amp_flag_values():
    assert train.parse_args([DEMO]).amp is None
    assert train.parse_args([DEMO, '--amp']).amp == 'fp16'
    assert train.parse_args([DEMO, '--amp', '--resume']).amp == 'fp16'
    assert train.parse_args([DEMO, '--amp', 'fp16']).amp == 'fp16'
    assert train.parse_args([DEMO, '--amp', 'bf16']).amp == 'bf16'
    with pytest.raises(SystemExit):
        train.parse_args([DEMO, '--amp', 'fp8'])


@pytest.fixture
def gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)


def test_bf16_sets_the_dtype_and_turns_loss_scaling_off(gpu):
    for path in (DEMO, UPERNET_T):
        cfg = _config(path)
        train._setup_amp(cfg, 'bf16')
        wrapper = cfg.optim_wrapper
        assert wrapper.type == 'AmpOptimWrapper' and wrapper.dtype == 'bfloat16'
        assert wrapper.loss_scale == dict(enabled=False)
        assert wrapper.optimizer.type == 'AdamW'  # the rest of the wrapper is kept


def test_fp16_is_dynamic_loss_scaling(gpu):
    for requested in (True, 'fp16'):
        cfg = _config(DEMO)
        train._setup_amp(cfg, requested)
        assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
        assert cfg.optim_wrapper.dtype == 'float16' and cfg.optim_wrapper.loss_scale == 'dynamic'
    cfg = _config(UPERNET_T)  # a bf16 config key, overridden by --amp fp16
    cfg.optim_wrapper.dtype, cfg.optim_wrapper.loss_scale = 'bfloat16', dict(enabled=False)
    train._setup_amp(cfg, 'fp16')
    assert cfg.optim_wrapper.dtype == 'float16' and cfg.optim_wrapper.loss_scale == 'dynamic'


def test_no_flag_keeps_the_config(gpu):
    cfg = _config(UPERNET_T)
    before = cfg.optim_wrapper.to_dict()
    train._setup_amp(cfg, None)
    assert cfg.optim_wrapper.to_dict() == before


def test_bf16_without_gpu_falls_back_to_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg = _config(DEMO)
    with pytest.warns(UserWarning, match='needs a GPU'):
        train._setup_amp(cfg, 'bf16')
    assert cfg.optim_wrapper.type == 'OptimWrapper'
    assert 'dtype' not in cfg.optim_wrapper and 'loss_scale' not in cfg.optim_wrapper


def test_other_wrappers_are_refused(gpu):
    cfg = _config(DEMO)
    cfg.optim_wrapper.type = 'ApexOptimWrapper'
    with pytest.raises(ValueError, match='--amp needs optim_wrapper.type'):
        train._setup_amp(cfg, 'bf16')
