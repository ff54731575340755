"""Expected errors of tools/*.py: one line on stderr, exit status 2, no traceback; --debug or
CONVNEXT_DENSE_DEBUG=1 show the traceback; an unexpected error keeps its traceback."""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from helpers import SEG_DEMO, TOOLS

sys.path.insert(0, TOOLS)
import _common  # noqa: E402


def tool(name, *args, env=None):
    """(exit status, stdout, stderr) of ``python tools/<name> *args``."""
    result = subprocess.run(
        [sys.executable, osp.join(TOOLS, name), *args], capture_output=True, text=True,
        timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore',
                          **(env or {})})
    return result.returncode, result.stdout, result.stderr


def assert_one_line_error(result, *words):
    code, stdout, stderr = result
    assert code == 2, (code, stdout[-2000:], stderr[-3000:])
    assert 'Traceback' not in stdout + stderr, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith('error: '), stderr[-3000:]
    for word in words:
        assert word in lines[-1], lines[-1]
    return lines


def test_errors_before_the_runner_are_exactly_one_line(tmp_path):
    lines = assert_one_line_error(tool('train.py', str(tmp_path / 'nope.py')), 'nope.py',
                                  'does not exist')
    assert len(lines) == 1
    lines = assert_one_line_error(
        tool('train.py', SEG_DEMO, '--cfg-options', 'train_dataloader.batchsize=2'),
        'did you mean train_dataloader.batch_size?')
    assert len(lines) == 1
    lines = assert_one_line_error(tool('test.py', SEG_DEMO, str(tmp_path / 'gone.pth')),
                                  'gone.pth does not exist')
    assert len(lines) == 1
    lines = assert_one_line_error(
        tool('convert_checkpoint.py', str(tmp_path / 'gone.pth'), str(tmp_path / 'out.pth')),
        'source checkpoint', 'gone.pth does not exist')
    assert len(lines) == 1


def test_unsafe_checkpoint_and_missing_data_are_one_line(tmp_path):
    class Payload:
        def __reduce__(self):
            return os.system, (f'touch {tmp_path / "pwned"}',)

    torch.save({'state_dict': {}, 'meta': Payload()}, tmp_path / 'evil.pth')
    lines = assert_one_line_error(
        tool('convert_checkpoint.py', str(tmp_path / 'evil.pth'), str(tmp_path / 'out.pth')),
        'evil.pth', 'system')
    assert len(lines) == 1 and not (tmp_path / 'pwned').exists()
    # found after the Runner is built (its log lines come first): the last line says it
    assert_one_line_error(tool('train.py', SEG_DEMO, '--work-dir', str(tmp_path / 'w'),
                               '--cfg-options', f'data_root={tmp_path / "nowhere"}'),
                          'dataset root', 'nowhere')


def test_unknown_arch_is_one_line(tmp_path):
    assert_one_line_error(tool('train.py', SEG_DEMO, '--work-dir', str(tmp_path),
                               '--cfg-options', 'model.backbone.arch=v2-attoo'),
                          "Unknown ConvNeXt arch 'v2-attoo'")


def test_debug_shows_the_traceback(tmp_path):
    missing = str(tmp_path / 'nope.py')
    for result in (tool('train.py', missing, '--debug'),
                   tool('test.py', missing, 'x.pth', env={'CONVNEXT_DENSE_DEBUG': '1'})):
        code, _, stderr = result
        assert code == 1 and 'Traceback' in stderr and 'nope.py does not exist' in stderr


def test_which_errors_are_expected():
    """A UserError (ours) and a missing file are one line; a plain ValueError, even one raised
    inside convnext_dense or tools/, may be a bug and keeps its traceback."""
    from convnext_dense.errors import ConfigError, InputError, UserError
    from convnext_dense.models import ConvNeXt
    assert _common.expected_error(ValueError('a bug, somewhere else')) is None
    missing = FileNotFoundError('no such file')
    assert _common.expected_error(missing) is missing
    with pytest.raises(ConfigError) as info:
        ConvNeXt('tinny')
    assert _common.expected_error(info.value) is info.value
    assert isinstance(info.value, ValueError)  # callers catching ValueError still do
    from convnext_dense.checkpoint import DamagedCheckpointError, UnsafeCheckpointError
    from convnext_dense.errors import CheckpointMismatchError
    for error in (InputError('bad image'), _common.CfgOptionError('typo'),
                  UnsafeCheckpointError('a global'), DamagedCheckpointError('truncated'),
                  CheckpointMismatchError('another model')):
        assert isinstance(error, UserError) and _common.expected_error(error) is error
    try:  # a built-in error from anywhere (here Python's own): may be a bug
        int('x')
    except ValueError as error:
        assert _common.expected_error(error) is None

    def raise_outside(error):  # a raise statement outside convnext_dense and tools/
        raise error

    # ours, re-raised by another library (as mmengine's registry does): ours is reported
    with pytest.raises(ValueError) as info:
        try:
            _common.check_cfg_options(_common.Config(dict(a=dict(batch_size=1))),
                                      {'a.batchsize': 1}, 'cfg')
        except KeyError as error:
            raise_outside(ValueError(f'class `X` in y.py: {error}'))
    reported = _common.expected_error(info.value)
    assert isinstance(reported, _common.CfgOptionError)
    assert _common._message(reported).startswith('--cfg-options a.batchsize: cfg has no key')
