"""Untrusted checkpoints through every tool: a pickle payload never runs on any loading path
(load_from, --resume, init_cfg, tools/test.py, tools/convert_checkpoint.py), and config text
inside a checkpoint is never executed (--resume, tools/test.py, the inferencers)."""
import os

import pytest
import torch

import convnext_dense  # noqa: F401  (registries)

from helpers import SEG_DEMO, load_tool, seg_args

train_tool = load_tool('train')
test_tool = load_tool('test')
convert_tool = load_tool('convert_checkpoint')


# ----------------------------------------------------------------------------- untrusted files
def test_malicious_checkpoint_never_runs_on_any_loading_path(toy_ade, tmp_path):
    from convnext_dense.compat import UnsafeCheckpointError
    marker = tmp_path / 'pwned'
    evil = evil_checkpoint(tmp_path / 'evil.pth', marker)
    names_global = r"evil\.pth: it contains '(posix|os)\.system'"
    common = seg_args(toy_ade, tmp_path / 'w', 'train_dataloader.num_workers=0',
                      'train_dataloader.persistent_workers=False')
    attempts = {
        'load_from': lambda: train_tool.main([SEG_DEMO, *common, f'load_from={evil}']),
        '--resume': lambda: train_tool.main([SEG_DEMO, '--resume', evil, *common]),
        'init_cfg Pretrained': lambda: train_tool.main(
            [SEG_DEMO, *common, 'model.backbone.init_cfg.type=Pretrained',
             f'model.backbone.init_cfg.checkpoint={evil}']),
        'tools/test.py': lambda: test_tool.main([SEG_DEMO, evil, *common]),
        'tools/convert_checkpoint.py': lambda: convert_tool.main([evil,
                                                                  str(tmp_path / 'out.pth')]),
    }
    for path, attempt in attempts.items():
        with pytest.raises(UnsafeCheckpointError, match=names_global):
            attempt()
        assert not marker.exists(), f'the payload ran through {path}'
    assert not (tmp_path / 'out.pth').exists()


def evil_checkpoint(path, marker):
    """A checkpoint whose unpickling would run ``touch marker`` (see tests/test_compat.py)."""

    class Payload:
        def __reduce__(self):
            return os.system, (f'touch {marker}',)

    torch.save({'state_dict': {'backbone.norm0.weight': torch.ones(40)},
                'meta': {'epoch': 1, 'iter': 2, 'note': Payload()}}, str(path))
    return str(path)


def test_config_text_inside_a_checkpoint_is_never_executed(toy_ade, configs, tmp_path,
                                                          no_deterministic_leak):
    """A real training checkpoint given config text that creates a file when executed: in
    ``meta['config']`` (Runner.resume executes it for its GPU-count check), ``meta['cfg']`` and
    ``message_hub.runtime_info.cfg`` (inferencers given only weights execute them). --resume,
    tools/test.py and MMSegInferencer run none of it; the resumed run saves its own config
    text; the GPU-count check still stops a resume from a 2-GPU run, read by parsing."""
    from mmseg.apis import MMSegInferencer
    marker = tmp_path / 'pwned'
    config = str(configs / 'seg_tiny.py')
    data = f'data_root={toy_ade}'
    train_tool.main([config, '--work-dir', str(tmp_path / 'a'), '--cfg-options', data,
                     'train_cfg.max_iters=2'])
    checkpoint = torch.load(tmp_path / 'a' / 'iter_2.pth', weights_only=False)  # our own file
    payload = f"import os\nos.system('touch {marker}')\n"
    checkpoint['meta']['config'] = payload
    checkpoint['meta']['cfg'] = payload + checkpoint['meta']['cfg']
    checkpoint['message_hub']['runtime_info']['cfg'] = payload
    evil = str(tmp_path / 'evil.pth')
    torch.save(checkpoint, evil)

    train_tool.main([config, '--work-dir', str(tmp_path / 'b'), '--resume', evil,
                     '--cfg-options', data, 'train_cfg.max_iters=4'])
    saved = torch.load(tmp_path / 'b' / 'iter_4.pth', weights_only=False)
    for text in (saved['meta']['cfg'], saved['message_hub']['runtime_info']['cfg']):
        assert 'os.system' not in text and 'max_iters = 4' in text.replace('max_iters=4',
                                                                          'max_iters = 4')
    test_tool.main([config, evil, '--work-dir', str(tmp_path / 't'), '--cfg-options', data])
    with pytest.raises(RuntimeError, match=r'evil\.pth carries its training config as text.*'
                                           r'pass the config file'):
        MMSegInferencer(model=None, weights=evil, device='cpu')

    checkpoint['meta']['config'] = 'gpu_ids = range(0, 2)\n' + payload
    torch.save(checkpoint, evil)
    with pytest.raises(RuntimeError, match='Number of GPUs used for current experiment is not'):
        train_tool.main([config, '--work-dir', str(tmp_path / 'c'), '--resume', evil,
                         '--cfg-options', data, 'train_cfg.max_iters=4'])
    assert not marker.exists()
