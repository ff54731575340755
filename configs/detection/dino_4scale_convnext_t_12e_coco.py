# DINO (4 scales), ConvNeXt-T (ImageNet-1K pre-trained), COCO detection, 12 epochs of 16 images,
# DETR multi-scale + crop augmentation, AdamW with layer-wise lr decay. Neither mmdet 3.3 nor
# the ConvNeXt paper has this model: the numbers are ours.
# Where each setting comes from: mmdet 3.3's configs/dino/dino-4scale_r50_8xb2-12e_coco.py for
#   the detector (_base_/models/dino_4scale_convnext.py), the augmentation and metric
#   (_base_/datasets/coco_detection.py), and the schedule, AdamW lr 1e-4 / weight decay 1e-4,
#   gradient clip 0.1 (_base_/schedules/schedule_dino_12e.py); the backbone is ConvNeXt-T with
#   the official ImageNet-1K weights, stages 1-3 in place of the R50's C3-C5.
# Our choices:
#   drop_path 0.4 and layer_wise decay 0.7 over 6 layers: the paper's values for ConvNeXt-T in
#     COCO detection (Cascade Mask R-CNN T 3x); its 12-epoch Mask R-CNN T 1x also kept drop
#     path 0.4, so the short schedule is no reason to change it.
#   no backbone lr_mult 0.1 (the reference's): with the decay the backbone's lr runs from
#     1e-4 * 0.7**7 = 8.2e-6 (stem) to 7e-5 (stage 4), within the range the paper fine-tuned
#     ConvNeXt-T with; a further x0.1 would put all of it below 7e-6.
#   weight decay 1e-4 (the reference's, not the paper's 0.05): DINO's head is tuned with it.
#   fp32 (OptimWrapper), as the reference.
# 48.49M parameters, 284.7G FLOPs at 1280x800;
# measured as README.md, "Modern heads: Mask2Former and DINO", says.
#
# The backbone starts from the official ImageNet checkpoint, downloaded once into torch's hub
# cache and loaded weights-only; offline, point to a local copy with
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/convnext_tiny_1k_224.pth
_base_ = [
    './_base_/models/dino_4scale_convnext.py',
    './_base_/datasets/coco_detection.py',
    './_base_/schedules/schedule_dino_12e.py',
    './_base_/default_runtime.py',
]
# official ImageNet-1K weights
checkpoint_file = 'https://dl.fbaipublicfiles.com/convnext/convnext_tiny_1k_224.pth'
model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.4,
        layer_scale_init_value=1.0,
        out_indices=(1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[192, 384, 768]))
optim_wrapper = dict(
    optimizer=dict(lr=1e-4),
    paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6))
