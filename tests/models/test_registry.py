"""convnext_dense.ConvNeXt builds from mmdet's and mmseg's registries and drops into stock configs."""
import os.path as osp

import torch
from mmengine.config import Config

import convnext_dense
from convnext_dense.models import ConvNeXt


def test_builds_from_mmdet_and_mmseg_registries():
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS
    for registry in (DET_MODELS, SEG_MODELS):
        model = registry.build(dict(type='convnext_dense.ConvNeXt', arch='v2-atto',
                                    out_indices=(2, 3)))
        assert isinstance(model, ConvNeXt) and model.dims == [40, 80, 160, 320]
    assert convnext_dense.MODELS.scope == 'convnext_dense'


def test_stock_mmdet_config_with_our_backbone_runs_forward():
    """mmdet's own Mask R-CNN R-50 config, backbone swapped: builds, runs loss and predict."""
    import mmdet
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.structures import InstanceData
    register_all_modules()
    cfg = Config.fromfile(osp.join(osp.dirname(mmdet.__file__),
                                   '.mim/configs/mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'))
    cfg.model.backbone = dict(type='convnext_dense.ConvNeXt', arch='v2-atto',
                              drop_path_rate=0.1)
    cfg.model.neck.in_channels = [40, 80, 160, 320]
    model = MODELS.build(cfg.model)
    model.init_weights()

    image = torch.randint(0, 255, (3, 128, 160), dtype=torch.uint8)
    sample = DetDataSample(metainfo=dict(img_shape=(128, 160), ori_shape=(128, 160),
                                         scale_factor=(1.0, 1.0), pad_shape=(128, 160)))
    masks = torch.zeros(1, 128, 160, dtype=torch.bool)
    masks[0, 20:60, 30:90] = True
    from mmdet.structures.mask import BitmapMasks
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[30., 20., 90., 60.]]),
                                       labels=torch.tensor([3]),
                                       masks=BitmapMasks(masks.numpy(), 128, 160))
    data = model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), training=True)
    losses = model(**data, mode='loss')
    assert {'loss_rpn_cls', 'loss_cls', 'loss_bbox', 'loss_mask'} <= set(losses)
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(v) for v in losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.stages[3][1].pwconv2.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(dict(inputs=[image], data_samples=[sample])),
                        mode='predict')
    assert len(results) == 1 and 'bboxes' in results[0].pred_instances
