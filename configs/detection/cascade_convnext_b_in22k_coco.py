# Cascade Mask R-CNN, ConvNeXt-B (ImageNet-22K pre-trained), FPN, 3x schedule (36 epochs),
# multi-scale + crop training, AdamW with layer-wise lr decay; mixed
# precision (AmpOptimWrapper, dynamic loss scale) as the official fp16 run (tools/train.py
# falls back to fp32 on a machine without GPU).
# Official recipe: facebookresearch/ConvNeXt object_detection/configs/convnext/
#   cascade_mask_rcnn_convnext_base_patch4_window7_mstrain_480-800_giou_4conv1f_adamw_3x_coco_in22k.py
# Target (paper, COCO val2017, single scale 1333x800): box AP 54.0, mask AP 46.9;
# 146M parameters, 964G FLOPs at 1280x800 (tools/analysis/get_flops.py).
#
# The backbone starts from the official ImageNet checkpoint, downloaded once into torch's hub
# cache and loaded weights-only; offline, point to a local copy with
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/convnext_base_22k_224.pth
# Official trained model (facebookresearch/ConvNeXt object_detection/README.md),
# loaded as it is (mmdet 2.x keys and mmcv 1.x meta are read weights-only):
#   python tools/test.py configs/detection/cascade_convnext_b_in22k_coco.py \
#       https://dl.fbaipublicfiles.com/convnext/coco/cascade_mask_rcnn_convnext_base_22k_3x.pth
# It should reproduce COCO val2017 box AP 54.0, mask AP 46.9.
_base_ = [
    './_base_/models/cascade_mask_rcnn_convnext_fpn.py',
    './_base_/datasets/coco_instance.py',
    './_base_/schedules/schedule_3x.py',
    './_base_/default_runtime.py',
]
# official ImageNet weights
checkpoint_file = 'https://dl.fbaipublicfiles.com/convnext/convnext_base_22k_224.pth'
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.6,
        layer_scale_init_value=1.0,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.8, decay_type='layer_wise', num_layers=12))
