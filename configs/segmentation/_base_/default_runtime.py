default_scope = 'mmseg'
custom_imports = dict(imports=['convnext_dense'], allow_failed_imports=False)
# Stop on a NaN/inf loss before it is saved; record seed, versions and random states (work dir
# run_info.json, checkpoint meta) so that --resume continues exactly. A config that sets its
# own custom_hooks replaces this list: keep these two in it.
custom_hooks = [
    dict(type='convnext_dense.StopOnNonFiniteLossHook'),
    dict(type='convnext_dense.ReproducibilityHook'),
]
# Distributed runs: mmengine's DDP wrapper, which also wraps a model on the CPU (gloo). (The
# checkpoint hook, convnext_dense.AtomicCheckpointHook, is set in schedules/.)
model_wrapper_cfg = dict(type='convnext_dense.AnyDeviceDistributedDataParallel',
                         broadcast_buffers=False, find_unused_parameters=False)
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # a collective that waits longer than timeout (s) for a dead or stuck rank raises
    dist_cfg=dict(backend='nccl', timeout=1800))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
# tools/test.py --tta wraps the model in this and runs the dataset's tta_pipeline
tta_model = dict(type='SegTTAModel')
