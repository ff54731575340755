# The paper's UperNet schedule: 160k iterations, AdamW lr 1e-4, weight decay 0.05,
# stage-wise lr decay 0.9, poly (power 1.0) with 1500 linear warm-up iterations.
# Warm-up and poly both start at iteration 0 and multiply, so
#   lr(t) = lr * (1 - t / 160000) * (1e-6 + (1 - 1e-6) * min(t, 1500) / 1500),
# which is exactly mmcv 1.x's poly policy with linear warm-up (warmup_ratio 1e-6) that the
# official configs use. mmengine's schedulers reach their final value at iteration end - 1,
# hence the + 1s.
max_iters = 160000
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='convnext_dense.LearningRateDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500 + 1),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=max_iters + 1),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
# the recipes' total batch; lets `auto_scale_lr` users rescale lr for other batch sizes
auto_scale_lr = dict(enable=False, base_batch_size=16)
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='convnext_dense.AtomicCheckpointHook', by_epoch=False,
                    interval=16000),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
