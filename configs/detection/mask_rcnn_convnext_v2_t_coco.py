# Mask R-CNN, ConvNeXt V2-T (FCMAE pre-trained, ImageNet-1K fine-tuned), FPN, 3x schedule
# (36 epochs, 32 images per batch), large-scale jittering at 1024x1024, soft-NMS at test,
# AdamW with layer-wise lr decay, mixed precision: the ConvNeXt V2 paper's COCO recipe.
# The paper (arXiv 2301.00808, Table 6) reports V2-B/L/H only; V2-T is the small recipe of
# this family and has no paper number to aim at.
#
# Sources (the B/L/H recipes refer to them too):
#   P  the paper, ar5iv.labs.arxiv.org/html/2301.00808, read through the stored copy
#      github.com/someya-takashi/llm-wiki-computer-vision, raw/papers/ConvNeXt V2_ Co-designing
#      and Scaling ConvNets with Masked Autoencoders.md: Appendix A.3 (settings) and Table 6
#      (results, FLOPs at 1280x800; "All COCO fine-tuning experiments rely on ImageNet-1K
#      pre-trained models").
#   I13 github.com/facebookresearch/ConvNeXt-V2/issues/13 quotes A.3's sweep; nobody answers
#      which value each size used.
#   M  mmdet 3.3 projects/ConvNeXt-V2/configs/mask-rcnn_convnext-v2-b_fpn_lsj-3x-fcmae_coco.py
#      ("pre-release"; its README reports its own V2-B run: box 52.9 / mask 46.4).
#   I15 github.com/facebookresearch/ConvNeXt-V2/issues/15 + commit 2553895 (GRN weight decay).
#   R  github.com/facebookresearch/ConvNeXt-V2 README.md (checkpoint URLs).
# Settings:
#   P: MMDetection, Mask R-CNN; 3x schedule = 36 epochs; batch size 32 (8 GPUs x 4); AdamW lr
#     1e-4, weight decay 0.05; large-scale jittering (1024x1024, scale range 0.1..2.0); single
#     scale test with soft-NMS; init from the final ImageNet-1K weights.
#   Not stated in P, chosen here:
#     Mask R-CNN + FPN heads as the V1 recipe (_base_/models/mask_rcnn_convnext_fpn.py), as M.
#     3x milestones 27 / 33 and 500 linear warm-up iterations: mmdet's 3x schedule
#       (_base_/schedules/schedule_3x.py); M uses 27 / 33 with 1000 warm-up iterations.
#     LSJ pipeline: _base_/datasets/coco_instance_lsj.py (flip, resize 1024 x 0.1..2.0, crop
#       1024, test at 1333x800), the mmdet LSJ recipe; M's is the same up to filters.
#     soft-NMS on the final boxes only (test_cfg.rcnn), RPN keeps NMS, as M.
#     layer_wise decay 0.95: one of P's sweep {0.9, 0.95}; M used 0.95 and matched P's V2-B box
#       AP (52.9). num_layers 6 (3 + 9 + 3 blocks), as V1 T.
#     drop path 0.3: P sweeps {0.2, 0.3, 0.4, 0.5} without saying which size took which. We
#       anchor B at M's 0.4 (it reproduced P's box AP) and give smaller models less and larger
#       ones more, as all P's ImageNet fine-tuning tables do: T 0.3, B 0.4, L 0.5, H 0.5.
#     the ImageNet-1K fine-tuned checkpoint (R) for "final ImageNet-1K weights" (A.4 says the
#       same for ADE20K explicitly); M uses the same weights.
#     fp16 AMP, as M; GRN takes its norm in fp32.
#   GRN gamma/beta: no weight decay, the maintainers' advice (I15) and our constructor's
#     default; paramwise_cfg.grn_weight_decay=True turns it back on.
# Params and FLOPs at 1280x800: README.md, "The paper's recipes" (tools/analysis/get_flops.py).
#
# The backbone checkpoint is downloaded once into torch's hub cache and loaded weights-only;
# offline, point to a local copy with
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/convnextv2_tiny_1k_224_ema.pt
_base_ = [
    './_base_/models/mask_rcnn_convnext_fpn.py',
    './_base_/datasets/coco_instance_lsj.py',
    './_base_/schedules/schedule_3x.py',
    './_base_/default_runtime.py',
]
# official FCMAE-pre-trained, ImageNet-1K fine-tuned weights (R)
checkpoint_file = ('https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/'
                   'convnextv2_tiny_1k_224_ema.pt')
model = dict(
    backbone=dict(
        arch='v2-tiny',
        drop_path_rate=0.3,
        layer_scale_init_value=0.0,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[96, 192, 384, 768]),
    test_cfg=dict(rcnn=dict(nms=dict(type='soft_nms', iou_threshold=0.5))))
# 32 images per batch: 4 per GPU on 8 GPUs
train_dataloader = dict(batch_size=4)
auto_scale_lr = dict(enable=False, base_batch_size=32)
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.95, decay_type='layer_wise', num_layers=6))
