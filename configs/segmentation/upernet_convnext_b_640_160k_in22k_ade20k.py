# UperNet + ConvNeXt-B (ImageNet-22K pre-trained), ADE20K, crop 640, 160k iterations,
# 16 images per batch (8 GPUs x 2). Targets the official mIoU 52.6 single-scale /
# 53.1 multi-scale + flip (tools/test.py --tta); 122.10M parameters (as the paper).
# Official trained model (facebookresearch/ConvNeXt semantic_segmentation/README.md),
# loaded as it is (mmseg 0.x keys and mmcv 1.x meta are read weights-only):
#   python tools/test.py configs/segmentation/upernet_convnext_b_640_160k_in22k_ade20k.py \
#       https://dl.fbaipublicfiles.com/convnext/ade20k/upernet_convnext_base_22k_640x640.pth
# It should reproduce ADE20K val mIoU 52.6 single-scale, 53.1 multi-scale + flip (add --tta).
_base_ = [
    './_base_/models/upernet_convnext.py', './_base_/datasets/ade20k_640x640.py',
    './_base_/default_runtime.py', './_base_/schedules/schedule_160k.py'
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
    decode_head=dict(in_channels=[128, 256, 512, 1024], num_classes=150),
    auxiliary_head=dict(in_channels=512, num_classes=150),
    # single-scale test: sliding 640x640 windows, stride 426
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(426, 426)))
# the official multi-scale + flip test ran on whole images
tta_test_cfg = dict(mode='whole')
# The official run trained in fp16 (use_fp16=True): AMP with dynamic loss scaling.
# tools/train.py falls back to fp32 with a warning when there is no GPU.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(lr=1e-4),
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=12))
