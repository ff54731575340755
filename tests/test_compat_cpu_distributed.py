"""compat: mmengine's pytorch launcher and DDP wrapper on a machine without GPU."""
import socket

import pytest
import torch
import torch.distributed as dist

import convnext_dense  # noqa: F401  (applies the patches)

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason='checks the no-GPU path')


def test_pytorch_launcher_uses_gloo_and_no_set_device(monkeypatch):
    import mmengine.dist.utils as dist_utils
    calls = []
    monkeypatch.setattr(torch.distributed, 'init_process_group',
                        lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(torch.cuda, 'set_device',
                        lambda *a: pytest.fail('set_device called without GPU'))
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '1')
    with pytest.warns(UserWarning, match='gloo'):
        dist_utils.init_dist('pytorch', backend='nccl')
    assert calls == [dict(backend='gloo')]
    dist_utils.init_dist('pytorch', backend='gloo', timeout=60)
    assert calls[-1]['backend'] == 'gloo' and calls[-1]['timeout'].total_seconds() == 60


def test_ddp_wrapper_accepts_device_ids_for_a_cpu_model():
    from mmengine.model import BaseModel
    from mmengine.model.wrappers import MMDistributedDataParallel

    class Tiny(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 1)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            return self.linear(inputs)

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0,
                            world_size=1)
    try:
        # what mmengine's Runner.wrap_model passes
        model = MMDistributedDataParallel(module=Tiny(), device_ids=[0],
                                          broadcast_buffers=False)
        assert model.device_ids is None
        out = model(torch.ones(3, 2))
        out.sum().backward()
        assert model.module.linear.weight.grad is not None
    finally:
        dist.destroy_process_group()
