# Mask2Former's ADE20K schedule, from mmseg 1.2's
#   configs/mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py: 160k iterations of 16
#   images, poly decay (power 0.9) to 0 without warm-up; AdamW lr 1e-4, weight decay 0.05,
#   eps 1e-8; gradients clipped to L2 norm 0.01; validation and checkpoints every 5000
#   iterations, keeping the best mIoU.
# Ours: the ConvNeXt lr decay constructor replaces mmseg's DefaultOptimWrapperConstructor
# (recipe files set decay_rate / decay_type / num_layers). Its rule already gives norms,
# biases and other 1-D parameters weight decay 0 (mmseg's norm_decay_mult=0.0); the query /
# level embeddings (2-D nn.Embedding weights) get weight decay 0 through custom_keys, as
# mmseg's embed_multi. mmseg's backbone lr_mult=0.1 is not applied: the decay scales the
# backbone's lr.
max_iters = 160000
interval = 5000
embed_multi = dict(lr_mult=1.0, decay_mult=0.0)
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='convnext_dense.LearningRateDecayOptimizerConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05),
    paramwise_cfg=dict(
        decay_rate=0.9, decay_type='stage_wise', num_layers=6,
        custom_keys={'query_embed': embed_multi, 'query_feat': embed_multi,
                     'level_embed': embed_multi}),
    clip_grad=dict(max_norm=0.01, norm_type=2))
param_scheduler = [
    dict(type='PolyLR', eta_min=0, power=0.9, begin=0, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=interval)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
# the recipes' total batch; lets `auto_scale_lr` users rescale lr for other batch sizes
auto_scale_lr = dict(enable=False, base_batch_size=16)
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='convnext_dense.AtomicCheckpointHook', by_epoch=False,
                    interval=interval, save_best='mIoU'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
