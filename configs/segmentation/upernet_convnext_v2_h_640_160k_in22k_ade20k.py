# UperNet + ConvNeXt V2-H (FCMAE pre-trained, ImageNet-22K fine-tuned), ADE20K, crop 640,
# 160k iterations, 16 images per batch (8 GPUs x 2), lr decay, mixed precision.
# Target (paper, arXiv 2301.00808, Table 7, "FCMAE, 22K ft", 640x640): multi-scale mIoU 57.0
#   (tools/test.py --tta); 707M parameters, 5113G FLOPs at 2560x640.
#
# Every setting and its source as in upernet_convnext_v2_t_512_160k_ade20k.py (sources P, I8,
# V1, I15, R there), except:
#   crop 640 and every scale x 1.25 (train resize 2560x640, slide test stride 426,
#     multi-scale test at 0.75..1.25 x 2560x640): P's Table 7 gives this row's input as 640x640
#     and its FLOPs at (2560, 640); the rest follows V1's 640 recipes.
#   init: P says "ImageNet-1K pre-training is followed by ImageNet-22K supervised fine-tuning".
#     The released V2-H weights of that kind (R, "ImageNet-22K fine-tuned models") were also
#     fine-tuned on ImageNet-1K at 384x384 afterwards; we take that checkpoint, the nearest
#     released one. num_layers 12.
# Params and FLOPs: README.md, "The paper's recipes".
#
# Offline, point to a local copy of the checkpoint with
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/convnextv2_huge_22k_384_ema.pt
_base_ = [
    './_base_/models/upernet_convnext.py', './_base_/datasets/ade20k_640x640.py',
    './_base_/default_runtime.py', './_base_/schedules/schedule_160k.py'
]
crop_size = (640, 640)
# official FCMAE-pre-trained, ImageNet-22K (then ImageNet-1K 384) fine-tuned weights (R)
checkpoint_file = ('https://dl.fbaipublicfiles.com/convnext/convnextv2/im22k/'
                   'convnextv2_huge_22k_384_ema.pt')
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='v2-huge',
        drop_path_rate=0.4,
        layer_scale_init_value=0.0,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[352, 704, 1408, 2816], num_classes=150),
    auxiliary_head=dict(in_channels=1408, num_classes=150),
    # single-scale test: sliding 640x640 windows, stride 426
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(426, 426)))
# P's multi-scale test (tools/test.py --tta) scaled to 640, on whole images, each also flipped
test_scale = (2560, 640)
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
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=12))
