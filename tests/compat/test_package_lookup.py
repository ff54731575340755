"""convnext_dense.compat.package_lookup: mmengine's package lookup without pkg_resources."""
import os
import subprocess
import sys

from convnext_dense import compat


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
