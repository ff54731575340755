# Demo: Cascade Mask R-CNN with a ConvNeXt V2-atto backbone, trained from scratch on the toy
# shapes set (convnext_dense.datasets.toy, 5 classes, 256x192 images): 400 iterations of 4
# images, about ten minutes on a 2-core CPU with one thread (OMP_NUM_THREADS=1; several
# threads on a busy CPU are much slower). `make demo` generates the data, trains, evaluates
# and draws the predictions:
#   python -m convnext_dense.datasets.toy coco data/toy_coco --num-train 400 --num-val 50
#   python tools/train.py configs/detection/demo_cascade_convnext_atto_toy.py
#   python tools/test.py configs/detection/demo_cascade_convnext_atto_toy.py CKPT --show-dir DIR
#
# Same detector as the paper's recipes (FPN; three cascade stages of 4conv1fc ConvFCBBoxHead
# with GIoU loss on decoded boxes, weight 10; FCN mask head; AdamW with layer-wise lr decay;
# flip + multi-scale training) but narrow (64-channel FPN, 32-channel RoI heads, 32 sampled
# RoIs per image), with BatchNorm instead of SyncBN so that it also trains with gloo on CPUs.
_base_ = [
    './_base_/models/cascade_mask_rcnn_convnext_fpn.py',
    './_base_/default_runtime.py',
]
classes = ('circle', 'square', 'triangle', 'star', 'cross')  # convnext_dense.datasets.TOY_CLASSES
metainfo = dict(classes=classes,
                palette=[(220, 20, 60), (0, 130, 230), (250, 170, 30), (0, 170, 80),
                         (160, 60, 200)])
num_classes = len(classes)
channels = 64  # FPN / RPN
head_channels = 32  # RoI box and mask heads
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    backbone=dict(
        arch='v2-atto',
        drop_path_rate=0.0,  # short training from scratch: no stochastic depth
        layer_scale_init_value=None,  # the arch default: none for V2
        out_indices=(0, 1, 2, 3),
        init_cfg=None),  # from scratch
    neck=dict(in_channels=[40, 80, 160, 320], out_channels=channels),
    rpn_head=dict(in_channels=channels, feat_channels=channels),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=channels),
        bbox_head=[
            dict(head, in_channels=channels, conv_out_channels=head_channels,
                 fc_out_channels=256, num_classes=num_classes, norm_cfg=norm_cfg)
            for head in _base_.model.roi_head.bbox_head],
        mask_roi_extractor=dict(out_channels=channels),
        mask_head=dict(num_convs=2, in_channels=channels, conv_out_channels=head_channels,
                       num_classes=num_classes)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=300),
        rcnn=[dict(stage, sampler=dict(stage.sampler, num=32))
              for stage in _base_.model.train_cfg.rcnn]),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=100),
        rcnn=dict(max_per_img=20)))

# ---------------------------------------------------------------- data: data/toy_coco
dataset_type = 'CocoDataset'
data_root = 'data/toy_coco/'
train_pipeline = [
    dict(type='convnext_dense.LoadImageFromFileChecked'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoiceResize', scales=[(192, 144), (224, 168), (256, 192)],
         keep_ratio=True),
    dict(type='PackDetInputs'),
]
# The test pipeline loads images with the stock name, which mmdet's DetInferencer looks for;
# tools/train.py and tools/test.py run it with the checked loader (tools/_common.py).
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 192), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val.json',
                     metric=['bbox', 'segm'], format_only=False)
test_evaluator = val_evaluator

# ---------------------------------------------------------------- schedule
max_epochs = 4  # 100 iterations of 4 images each
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[3],
         gamma=0.1),
]
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='convnext_dense.LearningRateDecayOptimizerConstructor',
    optimizer=dict(type='AdamW', lr=2e-3, betas=(0.9, 0.999), weight_decay=0.05),
    # From scratch, GRN keeps its weight decay (the V2 fine-tuning default exempts it); the
    # README's demo numbers were measured so.
    paramwise_cfg=dict(decay_rate=0.9, decay_type='layer_wise', num_layers=6,
                       grn_weight_decay=True),
    clip_grad=dict(max_norm=20.0, norm_type=2))
auto_scale_lr = dict(enable=False, base_batch_size=4)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='convnext_dense.AtomicCheckpointHook', interval=2, max_keep_ckpts=2))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
