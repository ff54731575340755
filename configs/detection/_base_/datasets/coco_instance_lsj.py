# COCO 2017 instance segmentation with large-scale jittering (LSJ), as mmdet 3.3's
#   configs/mask2former/mask2former_r50_8xb2-lsj-50e_coco.py trains Mask2Former: flip, resize
#   the 1024x1024 box by a random factor in 0.1..2.0 (aspect kept), crop 1024x1024 (boxes
#   recomputed from the crop, empty crops allowed), drop instances whose mask left the crop.
#   Test: one scale, long side <= 1333, short side <= 800.
# 16 images per batch: 2 per GPU on 8 GPUs. Set the data location with
#   --cfg-options data_root=/path/to/coco/   (annotations/, train2017/, val2017/)
dataset_type = 'CocoDataset'
data_root = 'data/coco/'
backend_args = None
lsj_size = (1024, 1024)

train_pipeline = [
    dict(type='convnext_dense.LoadImageFromFileChecked', to_float32=True,
         backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomResize', scale=lsj_size, ratio_range=(0.1, 2.0), resize_type='Resize',
         keep_ratio=True),
    dict(type='RandomCrop', crop_size=lsj_size, crop_type='absolute', recompute_bbox=True,
         allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-5, 1e-5), by_mask=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='convnext_dense.LoadImageFromFileChecked', to_float32=True,
         backend_args=backend_args),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader
val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + 'annotations/instances_val2017.json',
    metric=['bbox', 'segm'],
    format_only=False,
    backend_args=backend_args)
test_evaluator = val_evaluator
