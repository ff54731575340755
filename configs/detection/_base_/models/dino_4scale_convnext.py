# DINO, 4 feature scales (strides 8/16/32 from the backbone + one stride-64 level made by the
# neck), 900 queries, on our ConvNeXt, in mmdet 3.3. Everything but the backbone (and the
# neck's input channels) is mmdet 3.3's configs/dino/dino-4scale_r50_8xb2-12e_coco.py:
# ChannelMapper with GN, 6 deformable encoder and 6 decoder layers (FFN 2048, no dropout),
# two-stage with box refinement, contrastive denoising (100 dn queries, label noise 0.5, box
# noise 1.0), focal / L1 / GIoU losses and Hungarian matching, 300 detections per image.
# Ours: ConvNeXt stages 1-3 (out_indices (1, 2, 3), strides 8/16/32, as the R50's C3-C5) with
# no frozen stages (the paper's dense recipes freeze nothing; the R50's frozen_stages=1 and
# frozen BN are ResNet conventions). Recipe files set arch, drop_path_rate, init_cfg and
# neck.in_channels.
num_levels = 4
model = dict(
    type='DINO',
    num_queries=900,  # matching queries
    with_box_refine=True,
    as_two_stage=True,
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=1),
    backbone=dict(
        type='convnext_dense.ConvNeXt',
        arch='tiny',
        drop_path_rate=0.4,
        layer_scale_init_value=1.0,
        out_indices=(1, 2, 3)),
    neck=dict(
        type='ChannelMapper',
        in_channels=[192, 384, 768],  # the backbone's dims of stages 1-3
        kernel_size=1,
        out_channels=256,
        act_cfg=None,
        norm_cfg=dict(type='GN', num_groups=32),
        num_outs=num_levels),
    encoder=dict(
        num_layers=6,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=256, num_levels=num_levels, dropout=0.0),
            ffn_cfg=dict(embed_dims=256, feedforward_channels=2048, ffn_drop=0.0))),
    decoder=dict(
        num_layers=6,
        return_intermediate=True,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=256, num_heads=8, dropout=0.0),
            cross_attn_cfg=dict(embed_dims=256, num_levels=num_levels, dropout=0.0),
            ffn_cfg=dict(embed_dims=256, feedforward_channels=2048, ffn_drop=0.0)),
        post_norm_cfg=None),
    positional_encoding=dict(num_feats=128, normalize=True, offset=0.0, temperature=20),
    bbox_head=dict(
        type='DINOHead',
        num_classes=80,
        sync_cls_avg_factor=True,
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                      loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
    dn_cfg=dict(
        label_noise_scale=0.5,
        box_noise_scale=1.0,
        group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=100)),
    train_cfg=dict(
        assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='FocalLossCost', weight=2.0),
                dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                dict(type='IoUCost', iou_mode='giou', weight=2.0)])),
    test_cfg=dict(max_per_img=300))
