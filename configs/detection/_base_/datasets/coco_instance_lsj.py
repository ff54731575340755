# COCO 2017 instance segmentation with large-scale jittering (LSJ), as mmdet 3.3's
#   configs/mask2former/mask2former_r50_8xb2-lsj-50e_coco.py trains Mask2Former: flip, resize
#   the 1024x1024 box by a random factor in 0.1..2.0 (aspect kept), crop 1024x1024 (boxes
#   recomputed from the crop, empty crops allowed), drop instances whose mask left the crop.
#   Test: one scale, long side <= 1333, short side <= 800.
# Dataloaders, data location and evaluator: coco_instance.py, which this file inherits.
# 16 images per batch: 2 per GPU on 8 GPUs. Set the data location with
#   --cfg-options data_root=/path/to/coco/   (annotations/, train2017/, val2017/)
_base_ = ['./coco_instance.py']
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
# The test pipeline loads images with the stock name, which mmdet's DetInferencer looks for;
# tools/train.py and tools/test.py run it with the checked loader (tools/_common.py).
test_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True,
         backend_args=backend_args),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
