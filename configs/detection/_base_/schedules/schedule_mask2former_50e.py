# Mask2Former's COCO schedule, from mmdet 3.3's
#   configs/mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py: 368750 iterations of 16
#   images (50 epochs of COCO train2017), lr x0.1 at iterations 327778 and 355092, no warm-up;
#   AdamW lr 1e-4, weight decay 0.05, eps 1e-8; gradients clipped to L2 norm 0.01; validation
#   and checkpoints every 5000 iterations and at the end.
# Ours: the ConvNeXt layer-wise lr decay constructor replaces mmdet's DefaultOptimWrapperConstructor
# (recipe files set decay_rate / num_layers). Its rule already gives norms, biases and other
# 1-D parameters weight decay 0 (mmdet's norm_decay_mult=0.0); the query / level embeddings
# (2-D nn.Embedding weights) get weight decay 0 through custom_keys, as mmdet's embed_multi.
# mmdet's backbone lr_mult=0.1 is not applied: the layer decay is what scales the backbone's lr.
max_iters = 368750
interval = 5000
embed_multi = dict(lr_mult=1.0, decay_mult=0.0)
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='convnext_dense.LearningRateDecayOptimizerConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05),
    paramwise_cfg=dict(
        decay_rate=0.7, decay_type='layer_wise', num_layers=6,
        custom_keys={'query_embed': embed_multi, 'query_feat': embed_multi,
                     'level_embed': embed_multi}),
    clip_grad=dict(max_norm=0.01, norm_type=2))
param_scheduler = dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False,
                       milestones=[327778, 355092], gamma=0.1)
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=interval,
                 # one more validation at the very end
                 dynamic_intervals=[(max_iters // interval * interval + 1, max_iters)])
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
# (validation and checkpoints every `interval` iterations: the recipe files set default_hooks
# and log_processor, which _base_/default_runtime.py also defines)
# the recipes' total batch; lets `auto_scale_lr` users rescale lr for other batch sizes
auto_scale_lr = dict(enable=False, base_batch_size=16)
