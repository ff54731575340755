"""tools/analysis/get_flops.py lands within 2% of the paper's FLOPs and parameters, and counts
Mask2Former (mmdet and mmseg) and DINO as README.md's "Modern heads" table says."""
import functools
import importlib
import importlib.util
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
from helpers import load_tool

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def get_flops(config, *args):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    result = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'analysis', 'get_flops.py'),
         osp.join(REPO, 'configs', 'detection', config), *args],
        capture_output=True, text=True, env=env, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert 'Not counted (as in the paper): element-wise ops' in output
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


@functools.lru_cache(maxsize=None)
def _tool():
    """tools/analysis/get_flops.py as a module."""
    return load_tool('analysis/get_flops')


def _complexity(config, shape):
    """``get_flops.complexity`` in this process (exact integers, FLOPs per op) under the
    config's scope, restored afterwards."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    cfg = Config.fromfile(osp.join(REPO, 'configs', config))
    scope = cfg.default_scope
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope(scope):
        return _tool().complexity(cfg, shape)


# At (H, W) = (320, 256) the ConvNeXt maps at strides 8 / 16 / 32 have 40x32 + 20x16 + 10x8 =
# 1680 positions (DINO adds a stride-64 map, 5x4: 1700). A deformable attention query samples
# heads 8 x dims 32 x points 4 x levels values, each counted 4 (bilinear); Mask2Former's 9
# masked cross-attention layers take 100 queries x 8 heads x 32 dims against levels 32, 16, 8
# in turn (aten::baddbmm, b*n*k*m).
SMALL = (320, 256)


@pytest.mark.parametrize('config,params,flops', [
    ('detection/mask2former_convnext_t_lsj_50e_coco.py', 47_722_417, 22_209_647_520),
    ('segmentation/mask2former_convnext_t_512_160k_ade20k.py', 47_740_407, 22_227_567_520),
])
def test_mask2former_flops_at_a_small_shape(config, params, flops):
    result = _complexity(config, SMALL)
    ops = result['by_operator']
    # pixel decoder: 6 deformable encoder layers over the 3 levels
    assert ops['grid_sampler'] == 6 * 1680 * (8 * 32 * 4 * 3) * 4
    # transformer decoder: each level is the key of 3 of the 9 layers
    assert ops['baddbmm'] == 3 * 1680 * 100 * 8 * 32
    assert result['params'] == params
    assert result['flops'] == pytest.approx(flops, rel=1e-4)
    assert {'aten::softmax', 'aten::sigmoid', 'aten::gelu'} <= set(result['uncounted'])


def test_dino_flops_at_a_small_shape():
    result = _complexity('detection/dino_4scale_convnext_t_12e_coco.py', SMALL)
    ops = result['by_operator']
    # 6 encoder layers over the 1700 positions of 4 levels, 6 decoder layers over 900 queries
    # (no denoising queries: eval mode)
    assert ops['grid_sampler'] == (6 * 1700 + 6 * 900) * (8 * 32 * 4 * 4) * 4
    assert 'baddbmm' not in ops
    assert result['params'] == 48_493_100
    assert result['flops'] == pytest.approx(34_882_918_400, rel=1e-4)
    assert {'aten::softmax', 'aten::topk'} <= set(result['uncounted'])
