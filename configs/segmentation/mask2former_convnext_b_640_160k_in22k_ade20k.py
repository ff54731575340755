# Mask2Former + ConvNeXt-B (ImageNet-22K pre-trained), ADE20K semantic segmentation, crop 640,
# 160k iterations of 16 images (8 GPUs x 2), AdamW with stage-wise lr decay. Neither mmseg 1.2
# nor the ConvNeXt paper has this model: the numbers are ours.
# Where each setting comes from: as mask2former_convnext_t_512_160k_ade20k.py, at crop 640 as
#   mmseg 1.2's configs/mask2former/mask2former_swin-b-in22k-384x384-pre_8xb2-160k_ade20k-640x640.py
#   (short side 0.5..2.0 x 640, long side <= 2560; test scale 2560x640,
#   _base_/datasets/ade20k_640x640.py). Test images are padded to a multiple of 32 as in the
#   512 reference (the 640 one does not set it; we keep it at 640 too).
# Our choices:
#   ImageNet-22K weights (official convnext_base_22k_224.pth), as mmseg's Swin-B 640 config.
#   drop_path 0.4 and stage_wise decay 0.9 with num_layers 12: the paper's values for
#     ConvNeXt-B IN-22K at 640 on ADE20K (upernet_convnext_b_640_160k_in22k_ade20k.py).
#   no backbone lr_mult 0.1 on top of the decay: the backbone's lr runs from
#     1e-4 * 0.9**13 = 2.5e-5 (stem) to 3.9e-5 (stage 4), the paper's scales for it.
# 107.61M parameters, 494.9G FLOPs at 2048x512 (194.3G at 640x640);
# measured as README.md, "Modern heads: Mask2Former and DINO", says.
#
# Offline: --cfg-options model.backbone.init_cfg.checkpoint=/path/to/convnext_base_22k_224.pth
_base_ = [
    './_base_/models/mask2former_convnext.py', './_base_/datasets/ade20k_640x640.py',
    './_base_/default_runtime.py', './_base_/schedules/schedule_mask2former_160k.py'
]
crop_size = (640, 640)
# official ImageNet-22K weights
checkpoint_file = 'https://dl.fbaipublicfiles.com/convnext/convnext_base_22k_224.pth'
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='base',
        drop_path_rate=0.4,
        layer_scale_init_value=1.0,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[128, 256, 512, 1024], num_classes=150))
train_pipeline = [
    dict(type='convnext_dense.LoadImageFromFileChecked'),
    dict(type='LoadAnnotations'),  # reduce_zero_label comes from the dataset
    dict(type='RandomChoiceResize', scales=[int(crop_size[0] * x * 0.1) for x in range(5, 21)],
         resize_type='ResizeShortestEdge', max_size=4 * crop_size[0]),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
optim_wrapper = dict(
    optimizer=dict(lr=1e-4),
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=12))
