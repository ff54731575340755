# UperNet + ConvNeXt V2-T (FCMAE pre-trained, ImageNet-1K fine-tuned), ADE20K, crop 512, 160k
# iterations, 16 images per batch (8 GPUs x 2), lr decay, mixed precision: the ConvNeXt V2
# paper's ADE20K recipe. The paper (arXiv 2301.00808, Table 7) reports V2-B/L/H only; V2-T is
# the small recipe of this family and has no paper number to aim at.
#
# Sources (the B/L/H recipes refer to them too):
#   P  the paper, ar5iv.labs.arxiv.org/html/2301.00808, read through the stored copy
#      github.com/someya-takashi/llm-wiki-computer-vision, raw/papers/ConvNeXt V2_ Co-designing
#      and Scaling ConvNets with Masked Autoencoders.md: Appendix A.4 (settings) and Table 7
#      (mIoU, #param, FLOPs at 2048x512).
#   I8 github.com/facebookresearch/ConvNeXt-V2/issues/8, s9xie (author): "please refer to the
#      ConvNeXt V1 repo for the detection/segmentation code. We used the latest
#      mmsegmentation library."
#   V1 the ConvNeXt V1 UperNet recipes, facebookresearch/ConvNeXt semantic_segmentation/
#      configs/convnext/upernet_convnext_*_160k_ade20k_{ss,ms}.py (our upernet_convnext_*.py).
#   I15 github.com/facebookresearch/ConvNeXt-V2/issues/15 + commit 2553895 (GRN weight decay).
#   R  github.com/facebookresearch/ConvNeXt-V2 README.md (checkpoint URLs).
# Settings:
#   P: MMSegmentation, UperNet; AdamW, weight decay 0.05, batch size 16; 160k iterations at
#     512x512; multi-scale test at 0.75 / 0.875 / 1.0 / 1.125 / 1.25 x 2048x512 (P's mIoU are
#     multi-scale: tools/test.py --tta); init from the weights after supervised ImageNet-1K
#     fine-tuning ("superior to using the self-supervised pre-trained weights directly").
#   Not stated in P, chosen here (I8: V2 reused the V1 code, so V1's values, each inside P's
#   sweep where P has one):
#     lr 1e-4 (P sweeps {1e-4, 2e-4, 3e-4}); decay rate 0.9 (P sweeps {0.8, 0.9}), stage_wise as
#       V1 UperNet, num_layers 6 (3 + 9 + 3 blocks); drop path 0.4 (P sweeps
#       {0.1, 0.2, 0.3, 0.4}; V1 UperNet T/B/L/XL all used 0.4).
#     UperNet + FCN auxiliary head (weight 0.4), train augmentation, poly schedule with 1500
#       warm-up iterations, single-scale slide test (stride 341): V1 UperNet T 512.
#     horizontal flip in the multi-scale test: V1 and mmseg's --aug-test flip; P names only the
#       scales.
#     fp16 AMP, as V1 UperNet T; GRN takes its norm in fp32.
#   GRN gamma/beta: no weight decay, the maintainers' advice (I15) and our constructor's
#     default; paramwise_cfg.grn_weight_decay=True turns it back on.
# Params and FLOPs at 2048x512: README.md, "The paper's recipes" (tools/analysis/get_flops.py).
#
# The backbone checkpoint is downloaded once into torch's hub cache and loaded weights-only;
# offline, point to a local copy with
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/convnextv2_tiny_1k_224_ema.pt
_base_ = [
    './_base_/models/upernet_convnext.py', './_base_/datasets/ade20k.py',
    './_base_/default_runtime.py', './_base_/schedules/schedule_160k.py'
]
crop_size = (512, 512)
# official FCMAE-pre-trained, ImageNet-1K fine-tuned weights (R)
checkpoint_file = ('https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/'
                   'convnextv2_tiny_1k_224_ema.pt')
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='v2-tiny',
        drop_path_rate=0.4,
        layer_scale_init_value=0.0,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150),
    # single-scale test: sliding 512x512 windows, stride 341
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
# P's multi-scale test (tools/test.py --tta), on whole images as V1, each also flipped
test_scale = (2048, 512)
img_ratios = [0.75, 0.875, 1.0, 1.125, 1.25]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale=(int(test_scale[0] * r), int(test_scale[1] * r)),
                  keep_ratio=True) for r in img_ratios],
            [dict(type='RandomFlip', prob=0., direction='horizontal'),
             dict(type='RandomFlip', prob=1., direction='horizontal')],
            [dict(type='LoadAnnotations')],
            [dict(type='PackSegInputs')],
        ]),
]
tta_test_cfg = dict(mode='whole')
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(lr=1e-4),
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6))
