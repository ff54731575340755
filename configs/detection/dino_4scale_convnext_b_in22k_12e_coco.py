# DINO (4 scales), ConvNeXt-B (ImageNet-22K pre-trained), COCO detection, 12 epochs of 16
# images, AdamW with layer-wise lr decay. Neither mmdet 3.3 nor the ConvNeXt paper has this
# model: the numbers are ours. Everything but the backbone is as
# dino_4scale_convnext_t_12e_coco.py (which names the mmdet 3.3 reference of each setting).
# Our choices:
#   ImageNet-22K weights (official convnext_base_22k_224.pth): mmdet 3.3's only DINO with a
#     large backbone (dino-5scale_swin-l_8xb2-12e_coco.py) starts from 22K weights too.
#   drop_path 0.6 and layer_wise decay 0.8 over 12 layers: the paper's values for ConvNeXt-B
#     IN-22K in COCO detection (Cascade Mask R-CNN B in22k 3x).
#   no backbone lr_mult 0.1 on top of the decay: the backbone's lr runs from
#     1e-4 * 0.8**13 = 5.5e-6 (stem) to 8e-5 (stage 4), the paper's scales for this backbone.
# 108.94M parameters, 508.1G FLOPs at 1280x800;
# measured as README.md, "Modern heads: Mask2Former and DINO", says.
#
# Offline: --cfg-options model.backbone.init_cfg.checkpoint=/path/to/convnext_base_22k_224.pth
_base_ = ['./dino_4scale_convnext_t_12e_coco.py']
# official ImageNet-22K weights
checkpoint_file = 'https://dl.fbaipublicfiles.com/convnext/convnext_base_22k_224.pth'
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[256, 512, 1024]))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.8, num_layers=12))
