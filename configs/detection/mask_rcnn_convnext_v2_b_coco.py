# Mask R-CNN, ConvNeXt V2-B (FCMAE pre-trained, ImageNet-1K fine-tuned), FPN, 3x schedule
# (36 epochs, 32 images per batch), large-scale jittering at 1024x1024, soft-NMS at test,
# AdamW with layer-wise lr decay, mixed precision: the ConvNeXt V2 paper's COCO recipe.
# Target (paper, arXiv 2301.00808, Table 6, COCO val2017): box AP 52.9, mask AP 46.6;
#   486G FLOPs at 1280x800 (the paper gives no parameter count).
#
# Every setting and its source as in mask_rcnn_convnext_v2_t_coco.py (sources P, I13, M, I15,
# R there), except:
#   drop path 0.4: M's value, which reproduced P's box AP (P sweeps {0.2, 0.3, 0.4, 0.5}
#     without a per-size value; our rule in the V2-T header).
#   layer_wise decay 0.95 (P's sweep {0.9, 0.95}) over num_layers 12 (27 blocks in stage 3).
#   init: the official FCMAE-pre-trained, ImageNet-1K fine-tuned V2-B (R).
# Params and FLOPs at 1280x800: README.md, "The paper's recipes".
#
# Offline, point to a local copy of the checkpoint with
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/convnextv2_base_1k_224_ema.pt
_base_ = ['./mask_rcnn_convnext_v2_t_coco.py']
# official FCMAE-pre-trained, ImageNet-1K fine-tuned weights (R)
checkpoint_file = ('https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/'
                   'convnextv2_base_1k_224_ema.pt')
model = dict(
    backbone=dict(
        arch='v2-base',
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(
    paramwise_cfg=dict(decay_rate=0.95, decay_type='layer_wise', num_layers=12))
