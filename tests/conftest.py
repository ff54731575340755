"""Fixtures shared by the tool-level tests: tiny toy datasets and tiny configs of the demos."""
import pytest
import torch

from helpers import DET_DEMO, SEG_DEMO, toy_dataset


@pytest.fixture(scope='module')
def toy_ade(tmp_path_factory):
    """8 + 2 toy ADE20K images of 64x48."""
    return toy_dataset(tmp_path_factory, 'ade', num_train=8, num_val=2, size=(64, 48))


@pytest.fixture(scope='module')
def toy_coco(tmp_path_factory):
    """4 + 2 toy COCO images of 64x48."""
    return toy_dataset(tmp_path_factory, 'coco', num_train=4, num_val=2, size=(64, 48))


SEG_TINY = f"""
_base_ = {SEG_DEMO!r}
crop_size = (64, 64)
model = dict(data_preprocessor=dict(size=crop_size))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(64, 48), ratio_range=(1.0, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False)
test_dataloader = val_dataloader
train_cfg = dict(max_iters=6, val_interval=1000)  # no validation: only losses matter
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2, max_keep_ckpts=5))
log_processor = dict(window_size=1)
randomness = dict(seed=0, deterministic=True)
"""

DET_TINY = f"""
_base_ = {DET_DEMO!r}
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoiceResize', scales=[(56, 42), (64, 48), (72, 54)], keep_ratio=True),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline, indices=2))
train_cfg = dict(max_epochs=2, val_interval=1000)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=5))
log_processor = dict(window_size=1)
randomness = dict(seed=0, deterministic=True)
"""


@pytest.fixture(scope='module')
def configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp('configs')
    (folder / 'seg_tiny.py').write_text(SEG_TINY)
    (folder / 'det_tiny.py').write_text(DET_TINY)
    # on CPU, torch's SyncBatchNorm refuses to run with 2 processes: plain BN for the heads
    (folder / 'seg_tiny_dist.py').write_text(
        "_base_ = './seg_tiny.py'\nnorm_cfg = dict(type='BN', requires_grad=True)\n"
        "model = dict(decode_head=dict(norm_cfg=norm_cfg), auxiliary_head=dict("
        "norm_cfg=norm_cfg))\n")
    return folder


@pytest.fixture
def no_deterministic_leak():
    """In-process runs may switch torch's deterministic mode on; switch it back."""
    yield
    torch.use_deterministic_algorithms(False)
