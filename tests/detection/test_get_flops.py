"""tools/analysis/get_flops.py lands within 2% of the paper's FLOPs and parameters."""
import os
import os.path as osp
import re
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def get_flops(config, *args):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    result = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'analysis', 'get_flops.py'),
         osp.join(REPO, 'configs', 'detection', config), *args],
        capture_output=True, text=True, env=env, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    flops = float(re.search(r'FLOPs: ([\d.]+) G', output).group(1))
    params = float(re.search(r'Params: ([\d.]+) M', output).group(1))
    shape = re.search(r'Input shape: \(3, (\d+), (\d+)\)', output).groups()
    return flops, params, tuple(int(s) for s in shape)


@pytest.mark.slow
@pytest.mark.parametrize('config,flops,params', [
    ('cascade_convnext_t_coco.py', 741, 85.93),
    ('mask_rcnn_convnext_t_coco.py', 262, 48.10),
])
def test_flops_and_params_at_1280x800(config, flops, params):
    measured, measured_params, shape = get_flops(config)
    assert shape == (1280, 800)
    assert abs(measured - flops) / flops < 0.02, f'{config}: {measured}G vs {flops}G'
    assert abs(measured_params - params) < 0.01


def test_flops_scale_with_the_input_and_the_model():
    """Small inputs, small model: FLOPs grow with the image area (backbone, neck, RPN) plus a
    fixed RoI-head part, and the RoI part follows --num-proposals."""
    base = ['--cfg-options', 'model.backbone.arch=v2-atto',
            'model.neck.in_channels=[40,80,160,320]']
    f1, p1, _ = get_flops('mask_rcnn_convnext_t_coco.py', '--shape', '256', *base)
    f2, p2, _ = get_flops('mask_rcnn_convnext_t_coco.py', '--shape', '512', *base)
    f3, _, _ = get_flops('mask_rcnn_convnext_t_coco.py', '--shape', '256',
                         '--num-proposals', '100', '--num-mask-rois', '10', *base)
    assert p1 == p2
    # Shared2FC box head: 1000 RoIs x (256*49*1024 + 1024*1024 + 1024*(81+320)) multiply-adds;
    # mask head: 100 RoIs x (4 3x3 convs at 14x14 + 2x2 deconv + 1x1 logits at 28x28)
    box = 1000 * (256 * 49 * 1024 + 1024 * 1024 + 1024 * (81 + 320)) / 1e9
    mask = 100 * (4 * 14 * 14 * 256 * 256 * 9 + 14 * 14 * 256 * 256 * 4
                  + 28 * 28 * 256 * 80) / 1e9
    assert f1 - f3 == pytest.approx(0.9 * box + 0.9 * mask, rel=0.02)
    dense1, dense2 = f1 - box - mask, f2 - box - mask  # image-dependent part
    assert dense2 / dense1 == pytest.approx(4.0, rel=0.05)
