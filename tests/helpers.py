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


def load_tool(path):
    """``tools/<path>.py`` (e.g. ``'train'``, ``'analysis/get_flops'``) as a module, loaded once
    per process; tools/ and the script's own folder go on ``sys.path`` for its imports
    (``_common``, ``bench_common``). Loaded by path: ``test`` would otherwise be Python's own
    test package."""
    import importlib.util
    name = 'convnext_dense_tool_' + path.replace('/', '_')
    if name in sys.modules:
        return sys.modules[name]
    file = osp.join(TOOLS, f'{path}.py')
    for folder in (osp.dirname(file), TOOLS):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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


def seg_args(toy_ade, work, *extra_options):
    """tools/train.py / test.py arguments for a segmentation config on the toy set ``toy_ade``,
    writing to ``work``, with ``extra_options`` added to ``--cfg-options``."""
    return ['--work-dir', str(work), '--cfg-options', f'data_root={toy_ade}',
            'randomness.deterministic=False', *extra_options]


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


# ConvNeXt V2 paper (arXiv 2301.00808), ImageNet classifiers' parameters in M: backbone, final
# norm and 1000-way fc (Table 1 / 3; rounded to 0.1M below 80M, to 1M above).
V2_PAPER_PARAMS = {'v2-atto': 3.7, 'v2-femto': 5.2, 'v2-pico': 9.1, 'v2-nano': 15.6,
                   'v2-tiny': 28.6, 'v2-base': 89, 'v2-large': 198, 'v2-huge': 660}


def v2_backbone_params_from_paper(dims) -> float:
    """Parameters (M) of our V2 backbone with its four output norms, from the paper's classifier
    count: less the final norm (2 x C4) and the fc (1001 x C4), plus the stage norms."""
    arch = {tuple(d): a for a, d in V2_DIMS.items()}[tuple(dims)]
    return V2_PAPER_PARAMS[arch] + (2 * sum(dims) - 2 * dims[3] - 1001 * dims[3]) / 1e6


V2_DIMS = {'v2-atto': (40, 80, 160, 320), 'v2-femto': (48, 96, 192, 384),
           'v2-pico': (64, 128, 256, 512), 'v2-nano': (80, 160, 320, 640),
           'v2-tiny': (96, 192, 384, 768), 'v2-base': (128, 256, 512, 1024),
           'v2-large': (192, 384, 768, 1536), 'v2-huge': (352, 704, 1408, 2816)}
