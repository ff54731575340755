"""What the tests share: repository paths, toy datasets, running tools/*.py in a subprocess,
reading metrics from their logs, a free TCP port for multi-process runs, and building a
config's model on the meta device."""
import os
import os.path as osp
import re
import socket
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(REPO, 'tools')
DET_DEMO = osp.join(REPO, 'configs', 'detection', 'demo_cascade_convnext_atto_toy.py')
SEG_DEMO = osp.join(REPO, 'configs', 'segmentation', 'demo_upernet_convnext_atto_toy.py')
# The sample data (tiny_coco/, ade20k_sample/): $CONVNEXT_DENSE_SAMPLE_DATA, else the folder
# next to the repository that CI provides; tests that need it skip where it is absent.
SAMPLE_DATA_ENV = 'CONVNEXT_DENSE_SAMPLE_DATA'
SHARED_DATA = os.environ.get(SAMPLE_DATA_ENV) or osp.join(osp.dirname(REPO), 'shared', 'data')


def run(cmd, cwd, timeout=600, env=None, threads='1'):
    """Run ``cmd``; return stdout + stderr, failing the test with the output's tail if it
    exits non-zero. ``threads`` sets OMP_NUM_THREADS (tiny inputs: 1 avoids oversubscribing
    the CI machine's 2 cores); ``env`` entries override the rest."""
    env = {**os.environ, 'OMP_NUM_THREADS': threads, 'PYTHONWARNINGS': 'ignore', **(env or {})}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    return output


def run_tool(name, *args, cwd, **kwargs):
    """``python tools/<name> *args`` through :func:`run`."""
    return run([sys.executable, osp.join(TOOLS, name), *args], cwd=cwd, **kwargs)


def metric(output, name):
    """The last value a log printed as ``<name>: <number>``."""
    found = re.findall(rf'{name}: (-?[\d.]+)', output)
    assert found, f'{name} not printed:\n{output[-3000:]}'
    return float(found[-1])


def toy_dataset(tmp_path_factory, kind, num_train, num_val, size):
    """A seed-0 toy COCO (``kind='coco'``) or ADE20K (``'ade'``) set of ``size`` (w, h) images
    in a fresh temporary folder; returns the folder."""
    from convnext_dense.datasets.toy import write_ade, write_coco
    root = tmp_path_factory.mktemp(f'toy_{kind}')
    write = dict(coco=write_coco, ade=write_ade)[kind]
    write(str(root), seed=0, num_train=num_train, num_val=num_val, size=size)
    return root


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def build_on_meta(cfg):
    """The model of ``cfg`` (an mmengine Config of mmdet or mmseg) in its ``default_scope``,
    with parameters on the meta device: shapes only, no memory, no init."""
    import torch
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(cfg.default_scope)
    with torch.device('meta'):
        return MODELS.build(cfg.model)


def assert_convnext_recipe(cfg, scope, arch, pretrain, drop_path):
    """``cfg`` runs in ``scope`` ('mmdet' / 'mmseg') with our plug-in imported, and its backbone
    is ConvNeXt ``arch`` with ``drop_path`` initialised from the official ``pretrain`` ('1k' /
    '22k') ImageNet file."""
    assert cfg.default_scope == scope and cfg.custom_imports.imports == ['convnext_dense']
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.arch, backbone.drop_path_rate) == \
        ('convnext_dense.ConvNeXt', arch, drop_path)
    assert backbone.init_cfg.type == 'Pretrained'
    assert backbone.init_cfg.checkpoint == \
        f'https://dl.fbaipublicfiles.com/convnext/convnext_{arch}_{pretrain}_224.pth'
