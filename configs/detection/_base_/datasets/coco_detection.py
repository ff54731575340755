# COCO 2017 detection (boxes only) with DETR's augmentation, as mmdet 3.3's
#   configs/dino/dino-4scale_r50_8xb2-12e_coco.py trains DINO: flip, then one of
#   (a) resize to a random short side in 480..800 (step 32), long side <= 1333, or
#   (b) resize to a short side of 400/500/600 (long side <= 4200), crop a random 384..600 box
#       (absolute range), then (a);
#   images without annotations are kept (filter_empty_gt=False). Test: one scale, 1333x800.
# The paper's Cascade data (coco_instance.py, which this file inherits: dataloaders, data
# location, evaluator), with boxes only, the 4200 long-side bound of the crop branch and the
# empty images kept.
# 16 images per batch: 2 per GPU on 8 GPUs. Set the data location with
#   --cfg-options data_root=/path/to/coco/   (annotations/, train2017/, val2017/)
_base_ = ['./coco_instance.py']
backend_args = None
multi_scale = [(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333),
               (672, 1333), (704, 1333), (736, 1333), (768, 1333), (800, 1333)]
train_pipeline = [
    dict(type='convnext_dense.LoadImageFromFileChecked', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoice',
         transforms=[
             [dict(type='RandomChoiceResize', scales=multi_scale, keep_ratio=True)],
             [dict(type='RandomChoiceResize', scales=[(400, 4200), (500, 4200), (600, 4200)],
                   keep_ratio=True),
              dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
                   allow_negative_crop=True),
              dict(type='RandomChoiceResize', scales=multi_scale, keep_ratio=True)],
         ]),
    dict(type='PackDetInputs'),
]
# The test pipeline loads images with the stock name, which mmdet's DetInferencer looks for;
# tools/train.py and tools/test.py run it with the checked loader (tools/_common.py).
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    dataset=dict(filter_cfg=dict(filter_empty_gt=False), pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(metric='bbox')
test_evaluator = val_evaluator
