# UperNet + ConvNeXt V2-B (FCMAE pre-trained, ImageNet-1K fine-tuned), ADE20K, crop 512, 160k
# iterations, 16 images per batch (8 GPUs x 2), lr decay, mixed precision: the ConvNeXt V2
# paper's ADE20K recipe.
# Target (paper, arXiv 2301.00808, Table 7): multi-scale mIoU 52.1 (tools/test.py --tta);
#   122M parameters, 1170G FLOPs at 2048x512.
#
# Every setting and its source as in upernet_convnext_v2_t_512_160k_ade20k.py (sources P, I8,
# V1, I15, R there), except num_layers 12 (27 blocks in stage 3, as every V1 recipe with 27)
# and the checkpoint: the official FCMAE-pre-trained, ImageNet-1K fine-tuned V2-B (R).
# lr 1e-4, decay 0.9 and drop path 0.4 are V1's values inside P's sweeps, as for V2-T; P does
# not say which value each size used.
# Params and FLOPs at 2048x512: README.md, "The paper's recipes".
#
# Offline, point to a local copy of the checkpoint with
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/convnextv2_base_1k_224_ema.pt
_base_ = ['./upernet_convnext_v2_t_512_160k_ade20k.py']
# official FCMAE-pre-trained, ImageNet-1K fine-tuned weights (R)
checkpoint_file = ('https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/'
                   'convnextv2_base_1k_224_ema.pt')
model = dict(
    backbone=dict(
        arch='v2-base',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
optim_wrapper = dict(
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=12))
