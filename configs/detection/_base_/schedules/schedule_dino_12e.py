# DINO's 12-epoch COCO schedule, from mmdet 3.3's configs/dino/dino-4scale_r50_8xb2-12e_coco.py:
# 12 epochs of 16 images per batch, lr x0.1 after epoch 11, no warm-up; AdamW lr 1e-4,
# weight decay 1e-4; gradients clipped to L2 norm 0.1.
# Ours: the ConvNeXt layer-wise lr decay constructor replaces mmdet's backbone lr_mult=0.1
# (recipe files set decay_rate / num_layers). Its rule gives biases and 1-D parameters
# (norms) weight decay 0, where the reference decays every parameter (mmengine's default).
# The reference has no no-decay keys for DINO's query / level / denoising-label
# embeddings, so they keep weight decay 1e-4 here too.
max_epochs = 12
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='convnext_dense.LearningRateDecayOptimizerConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6),
    clip_grad=dict(max_norm=0.1, norm_type=2))
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[11],
         gamma=0.1),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
# the recipes' total batch; lets `auto_scale_lr` users rescale lr for other batch sizes
auto_scale_lr = dict(enable=False, base_batch_size=16)
