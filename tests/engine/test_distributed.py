"""Data-parallel runs without GPU: the launcher option of our tools (gloo, no set_device) and
the registered DDP wrapper that takes a CPU model; mmengine's own pieces stay as they are."""
import datetime
import os.path as osp
import socket
import sys

import pytest
import torch
import torch.distributed as dist

import convnext_dense  # noqa: F401  (registers the wrapper)
from convnext_dense.engine import distributed

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))),
                            'tools'))
import _common  # noqa: E402


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine without accelerator, where set_device must not be called."""
    calls = []
    monkeypatch.setattr(distributed, 'accelerator_available', lambda: False)
    monkeypatch.setattr(torch.distributed, 'init_process_group',
                        lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(torch.distributed, 'is_initialized', lambda: False)
    monkeypatch.setattr(torch.cuda, 'set_device',
                        lambda *a: pytest.fail('set_device called without GPU'))
    return calls


def test_process_group_without_accelerator_uses_gloo(no_gpu):
    with pytest.warns(UserWarning, match='gloo'):
        assert distributed.init_process_group_without_accelerator(backend='nccl') == 'gloo'
    assert no_gpu == [dict(backend='gloo')]
    distributed.init_process_group_without_accelerator(backend='gloo', timeout=60)
    assert no_gpu[-1] == dict(backend='gloo', timeout=datetime.timedelta(seconds=60))
    with pytest.raises(ValueError, match='init_backend'):
        distributed.init_process_group_without_accelerator(init_backend='deepspeed')


def test_tools_launcher_initialises_it_before_the_runner(no_gpu):
    from mmengine.config import Config
    cfg = Config(dict(launcher='pytorch', env_cfg=dict(dist_cfg=dict(backend='gloo',
                                                                     timeout=1800))))
    _common.init_distributed(cfg)
    assert no_gpu == [dict(backend='gloo', timeout=datetime.timedelta(seconds=1800))]
    _common.init_distributed(Config(dict(launcher='none')))
    assert len(no_gpu) == 1
    # a config without model_wrapper_cfg gets the CPU-capable wrapper for a distributed run
    _common.select_components(cfg)
    assert cfg.model_wrapper_cfg.type == 'convnext_dense.AnyDeviceDistributedDataParallel'


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs):
        return self.linear(inputs)


@pytest.fixture
def one_process_group():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


def test_registered_wrapper_takes_a_cpu_model(one_process_group):
    from mmengine.model.wrappers import MMDistributedDataParallel
    from mmengine.registry import MODEL_WRAPPERS
    # what mmengine's Runner.wrap_model does with model_wrapper_cfg
    cfg = dict(type='convnext_dense.AnyDeviceDistributedDataParallel', broadcast_buffers=False)
    model = MODEL_WRAPPERS.build(cfg, default_args=dict(module=Tiny(), device_ids=[0]))
    assert isinstance(model, MMDistributedDataParallel) and model.device_ids is None
    model(torch.ones(3, 2)).sum().backward()
    assert model.module.linear.weight.grad is not None
    # mmengine's own wrapper is unchanged: it still refuses device ids for a CPU model
    with pytest.raises(ValueError, match='device_ids'):
        MMDistributedDataParallel(module=Tiny(), device_ids=[0])
