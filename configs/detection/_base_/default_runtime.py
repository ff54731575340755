# Runtime shared by the detection configs (mmdet 3.x scope, our package imported).
default_scope = 'mmdet'
custom_imports = dict(imports=['convnext_dense'], allow_failed_imports=False)
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # mmengine's CheckpointHook writing atomically (temporary file, fsync, rename): a run killed
    # while saving keeps its previous checkpoints intact
    checkpoint=dict(type='convnext_dense.AtomicCheckpointHook', interval=1, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='DetVisualizationHook'))
# Stop on a NaN/inf loss before it is saved; record seed, versions and random states (work dir
# run_info.json, checkpoint meta) so that --resume continues exactly. A config that sets its
# own custom_hooks replaces this list: keep these two in it.
custom_hooks = [
    dict(type='convnext_dense.StopOnNonFiniteLossHook'),
    dict(type='convnext_dense.ReproducibilityHook'),
]
# Distributed runs: mmengine's DDP wrapper, which also wraps a model on the CPU (gloo); with
# tools/dist_train.sh, nccl for GPUs, gloo when no GPU is visible.
model_wrapper_cfg = dict(type='convnext_dense.AnyDeviceDistributedDataParallel',
                         broadcast_buffers=False, find_unused_parameters=False)
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # a collective that waits longer than timeout (s) for a dead or stuck rank raises
    dist_cfg=dict(backend='nccl', timeout=1800))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=True)
log_level = 'INFO'
load_from = None
resume = False
