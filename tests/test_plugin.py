"""``import convnext_dense`` (and using our components) changes nothing in mmengine, mmcv, mmdet
or mmseg that a config does not select: the classes' methods and the functions that issue 15
names are the very objects a fresh process without convnext_dense has."""
import json
import os
import subprocess
import sys

import torch

import convnext_dense  # noqa: F401

# Prints {name: description} of each stock object; the description names the code object
# (file, first line, qualified name), which a replacement or a wrapper would change.
DESCRIBE = r'''
import importlib, json

def describe(obj):
    function = getattr(obj, '__func__', obj)
    code = getattr(function, '__code__', None)
    return [type(obj).__name__, getattr(function, '__module__', None),
            getattr(function, '__qualname__', None),
            [code.co_filename, code.co_firstlineno, code.co_name] if code else None]

from mmengine.dataset import BaseDataset
from mmengine.fileio.backends import registry_utils
from mmengine.fileio.backends.local_backend import LocalBackend
from mmengine.model.wrappers import MMDistributedDataParallel
from mmcv.transforms import LoadImageFromFile
from mmdet.datasets import CocoDataset
from mmseg.datasets import ADE20KDataset, BaseSegDataset
checkpoint = importlib.import_module('mmengine.runner.checkpoint')
runner = importlib.import_module('mmengine.runner.runner')
dist_utils = importlib.import_module('mmengine.dist.utils')
roi_align = importlib.import_module('mmcv.ops.roi_align')
nms = importlib.import_module('mmcv.ops.nms')
msda = importlib.import_module('mmcv.ops.multi_scale_deform_attn')
focal = importlib.import_module('mmcv.ops.focal_loss')


class DefinedLater(BaseDataset):
    pass


objects = {
    'LocalBackend.put': LocalBackend.put,
    'LocalBackend.put_text': LocalBackend.put_text,
    'fileio backend local': registry_utils.backends['local'],
    'fileio prefixes': sorted((k, v.__name__) for k, v in
                              registry_utils.prefix_to_backends.items()),
    'mmengine.runner.checkpoint.find_latest_checkpoint': checkpoint.find_latest_checkpoint,
    'mmengine.runner.runner.find_latest_checkpoint': runner.find_latest_checkpoint,
    'MMDistributedDataParallel.__init__': MMDistributedDataParallel.__init__,
    'mmengine.dist.utils._init_dist_pytorch': dist_utils._init_dist_pytorch,
    'mmengine.dist.utils.init_dist': dist_utils.init_dist,
    "BaseDataset.__dict__['__init_subclass__']": BaseDataset.__dict__.get('__init_subclass__'),
    'BaseDataset.full_init': BaseDataset.full_init,
    'CocoDataset.full_init': CocoDataset.full_init,
    'BaseSegDataset.full_init': BaseSegDataset.full_init,
    'ADE20KDataset.full_init': ADE20KDataset.full_init,
    'DefinedLater.full_init': DefinedLater.full_init,
    'LoadImageFromFile.transform': LoadImageFromFile.transform,
    'mmcv RoIAlign.forward': roi_align.RoIAlign.forward,
    'mmcv NMSop.apply': nms.NMSop.apply,
    "mmcv NMSop.__dict__['apply']": nms.NMSop.__dict__.get('apply'),
    'mmcv MultiScaleDeformableAttention.forward': msda.MultiScaleDeformableAttention.forward,
    'mmcv MultiScaleDeformableAttnFunction.forward':
        msda.MultiScaleDeformableAttnFunction.forward,
    'mmcv SigmoidFocalLossFunction.forward': focal.SigmoidFocalLossFunction.forward,
    'mmcv ext_module of the routed ops': [type(m.ext_module).__name__
                                          for m in (roi_align, nms, msda, focal)],
}
RAW = ('fileio prefixes', 'mmcv ext_module of the routed ops')  # plain values, not callables
described = {name: obj if name in RAW else describe(obj) for name, obj in objects.items()}
'''


def stock_descriptions():
    """The descriptions in a fresh process that never imports convnext_dense."""
    code = DESCRIBE + ("import sys\nassert 'convnext_dense' not in sys.modules\n"
                       "print(json.dumps(described))\n")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            env={**os.environ, 'OMP_NUM_THREADS': '1',
                                 'PYTHONWARNINGS': 'ignore'})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def use_our_components():
    """What a user of ours does: build a detector and switch it to the fast path, build the
    checked image loader, a checked dataset config, the atomic hook and the DDP wrapper."""
    from mmcv.ops import RoIAlign
    from convnext_dense.datasets import LoadImageFromFileChecked
    from convnext_dense.engine import AtomicCheckpointHook
    from convnext_dense.fast import enable_fast_inference
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), RoIAlign((2, 2), 1.0))
    enable_fast_inference(model, compile=False, low_precision=False, keep_memory=False)
    LoadImageFromFileChecked()
    AtomicCheckpointHook()


def test_stock_objects_are_untouched():
    stock = stock_descriptions()
    use_our_components()
    namespace = {}
    exec(DESCRIBE, namespace)
    ours = json.loads(json.dumps(namespace['described']))
    assert ours.keys() == stock.keys()
    changed = {name: (stock[name], ours[name]) for name in stock if stock[name] != ours[name]}
    assert not changed, changed
    # the descriptions are of the libraries' own code
    assert 'mmcv' in stock['mmcv RoIAlign.forward'][3][0]
    assert stock["BaseDataset.__dict__['__init_subclass__']"][0] == 'NoneType'
