"""The detection demo end to end on the GPU, as ``make demo-det`` runs it: the toy COCO set
(400 training and 50 validation images of 256x192), tools/train.py with the demo config as it
is (4 epochs) in under 2 minutes, tools/test.py on the checkpoint, and tools/test.py --fast
(autocast + torch.compile) on the GPU."""
import os.path as osp
import re
import time

import pytest

from cuda_helpers import record_figure
from helpers import DET_DEMO, metric, run_tool

pytestmark = pytest.mark.cuda

EPOCHS = 4  # the demo config's max_epochs


def tool(*args, cwd):
    return run_tool(*args, cwd=cwd, threads='4', timeout=900)


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    from convnext_dense.datasets.toy import write_coco
    data = tmp_path_factory.mktemp('toy_coco')
    start = time.perf_counter()
    write_coco(str(data), seed=0, num_train=400, num_val=50, size=(256, 192))
    generate_s = time.perf_counter() - start
    work = tmp_path_factory.mktemp('demo_det')
    start = time.perf_counter()
    train = tool('train.py', DET_DEMO, '--work-dir', str(work), '--cfg-options',
                 f'data_root={data}/', cwd=work)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    test = tool('test.py', DET_DEMO, str(work / f'epoch_{EPOCHS}.pth'), '--work-dir',
                str(work / 'test'), '--cfg-options', f'data_root={data}/', cwd=work)
    test_s = time.perf_counter() - start
    record_figure('detection demo (make demo-det): train 4 epochs of 400 toy images + test 50',
                  generate_data_s=round(generate_s, 1), train_s=round(train_s, 1),
                  test_s=round(test_s, 1))
    return data, work, train, train_s, test


def test_demo_trains_in_under_two_minutes(demo):
    _, work, train, train_s, _ = demo
    assert osp.isfile(work / f'epoch_{EPOCHS}.pth')
    assert re.search(rf'Epoch\(train\)\s*\[{EPOCHS}\]', train)
    assert train_s < 120, f'tools/train.py took {train_s:.0f} s'


def test_demo_test_reports_coco_metrics(demo):
    *_, test = demo
    for name in ('coco/bbox_mAP', 'coco/segm_mAP'):
        assert 0.0 <= metric(test, name) <= 1.0
    # 4 epochs on the toy shapes find them (0.41 box mAP on the CPU, README), untrained 0.001
    assert metric(test, 'coco/bbox_mAP') > 0.2


def test_fast_inference_runs_on_the_gpu(demo):
    data, work, _, _, test = demo
    start = time.perf_counter()
    fast = tool('test.py', DET_DEMO, str(work / f'epoch_{EPOCHS}.pth'), '--fast', '--work-dir',
                str(work / 'test_fast'), '--cfg-options', f'data_root={data}/', cwd=work)
    fast_s = time.perf_counter() - start
    assert re.search(r"fast inference: .*'compile': True", fast), fast[-3000:]
    plain, quick = metric(test, 'coco/bbox_mAP'), metric(fast, 'coco/bbox_mAP')
    record_figure('detection demo: tools/test.py --fast (compile included)',
                  test_fast_s=round(fast_s, 1), bbox_mAP=plain, bbox_mAP_fast=quick,
                  segm_mAP=metric(test, 'coco/segm_mAP'),
                  segm_mAP_fast=metric(fast, 'coco/segm_mAP'))
    assert abs(quick - plain) <= 0.05  # low-precision autocast: close, not equal
