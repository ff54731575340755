# Mask2Former + ConvNeXt-T (ImageNet-1K pre-trained), ADE20K semantic segmentation, crop 512,
# 160k iterations of 16 images (8 GPUs x 2), AdamW with stage-wise lr decay. Neither mmseg 1.2
# nor the ConvNeXt paper has this model: the numbers are ours.
# Where each setting comes from (mmseg 1.2's configs/mask2former/
# mask2former_r50_8xb2-160k_ade20k-512x512.py, read from the installed package):
#   head, pixel decoder, losses, matcher, whole-image test, test padding to 32
#     (_base_/models/mask2former_convnext.py);
#   training augmentation: short side resized to one of 0.5..2.0 x 512 (step 0.1), long side
#     <= 2048, crop 512 (at most 75% one class), flip, photometric distortion (below);
#   schedule: poly 0.9, no warm-up, AdamW lr 1e-4 / weight decay 0.05 / eps 1e-8, clip 0.01,
#     no weight decay on query_embed / query_feat / level_embed
#     (_base_/schedules/schedule_mask2former_160k.py);
#   test scale 2048x512, ADE20K data settings and --tta (multi-scale + flip): our UperNet
#     recipes' _base_/datasets/ade20k.py (the same test scale as mmseg's ADE20K base).
# Our choices:
#   drop_path 0.4 and stage_wise decay 0.9 with num_layers 6: the paper's values for ConvNeXt-T
#     on ADE20K (UperNet T 512, upernet_convnext_t_512_160k_ade20k.py).
#   no backbone lr_mult 0.1 (mmseg's Swin/ResNet Mask2Former configs have it): with the decay
#     the backbone's lr runs from 1e-4 * 0.9**7 = 4.8e-5 (stem) to 7.3e-5 (stage 4), the
#     scales the paper fine-tuned ConvNeXt-T with on ADE20K; x0.1 more would be a tenth of them.
#   fp32 (OptimWrapper), as the reference.
# 47.74M parameters, 265.8G FLOPs at 2048x512 (67.6G at 512x512);
# measured as README.md, "Modern heads: Mask2Former and DINO", says.
#
# The backbone starts from the official ImageNet checkpoint, downloaded once into torch's hub
# cache and loaded weights-only; offline, point to a local copy with
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/convnext_tiny_1k_224.pth
_base_ = [
    './_base_/models/mask2former_convnext.py', './_base_/datasets/ade20k.py',
    './_base_/default_runtime.py', './_base_/schedules/schedule_mask2former_160k.py'
]
crop_size = (512, 512)
# official ImageNet-1K weights
checkpoint_file = 'https://dl.fbaipublicfiles.com/convnext/convnext_tiny_1k_224.pth'
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.4,
        layer_scale_init_value=1.0,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150))
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
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6))
