# The paper's 3x schedule: 36 epochs, lr x0.1 after epochs 27 and 33, linear warm-up over the
# first 500 iterations from 0.001 x lr (mmdet 2.x schedule_1x, which the official configs
# extend); AdamW (0.9, 0.999), weight decay 0.05, layer-wise lr decay. Recipes set lr,
# decay_rate and num_layers. 16 images per batch; with `auto_scale_lr.enable=True` mmengine
# rescales lr linearly for another total batch size.
max_epochs = 36
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33],
         gamma=0.1),
]
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='convnext_dense.LearningRateDecayOptimizerConstructor',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6))
auto_scale_lr = dict(enable=False, base_batch_size=16)
