"""tools/demo.py on an image, a folder and a 3-frame video, for a detector and a segmentor:
the one-line summaries, the drawn files, and one-line errors for bad input."""
import os.path as osp
import re
import sys

import numpy as np
import pytest
import torch

from helpers import DET_DEMO, SEG_DEMO, TOOLS, toy_dataset

sys.path.insert(0, TOOLS)
import _common  # noqa: E402
import demo  # noqa: E402

TOY_CLASSES = ('circle', 'square', 'triangle', 'star', 'cross')


def _checkpoint(config, path, classes):
    """Random weights of ``config``'s model saved as tools/train.py saves them (with the
    classes in meta.dataset_meta)."""
    import convnext_dense  # noqa: F401
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(config)
    init_default_scope(cfg.default_scope)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': {'classes': classes}}}, path)
    return str(path)


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    root = toy_dataset(tmp_path_factory, 'coco', num_train=1, num_val=3, size=(128, 96))
    return root / 'val'


@pytest.fixture(scope='module')
def det_ckpt(tmp_path_factory):
    return _checkpoint(DET_DEMO, tmp_path_factory.mktemp('det') / 'det.pth', TOY_CLASSES)


@pytest.fixture(scope='module')
def seg_ckpt(tmp_path_factory):
    return _checkpoint(SEG_DEMO, tmp_path_factory.mktemp('seg') / 'seg.pth',
                       ('background',) + TOY_CLASSES)


def _run(capsys, *argv):
    """``python tools/demo.py argv`` in this process: (exit status, stdout lines, stderr)."""
    code = 0
    try:
        _common.run_tool(demo.main, [str(a) for a in argv])
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    # mmengine's loader logs which backend read the checkpoint; the rest is ours
    lines = [line for line in out.splitlines()
             if line.strip() and not line.startswith('Loads checkpoint by')]
    return code, lines, err


DET_LINE = re.compile(r'^(\S+\.jpg): (\d+) detections? \(((?:\w+ \d+(?:, )?)+)\)$|'
                      r'^(\S+\.jpg): no detections with score >= 0\.3$')


def _assert_detection_line(line, name):
    match = DET_LINE.match(line)
    assert match, line
    if match.group(1):
        assert match.group(1) == name
        counts = [int(part.rsplit(' ', 1)[1]) for part in match.group(3).split(', ')]
        assert sum(counts) == int(match.group(2))
        assert {part.rsplit(' ', 1)[0] for part in match.group(3).split(', ')} <= \
            set(TOY_CLASSES)
    else:
        assert match.group(4) == name


def test_image_folder_and_video_with_a_detector(images, det_ckpt, tmp_path, capsys):
    import cv2
    first = sorted(images.iterdir())[0]
    code, lines, err = _run(capsys, DET_DEMO, det_ckpt, first, '--out', tmp_path / 'one')
    assert code == 0, err
    assert len(lines) == 2, lines
    _assert_detection_line(lines[0], first.name)
    assert lines[1] == f'drew 1 image in {tmp_path / "one"}'
    drawn = cv2.imread(str(tmp_path / 'one' / first.name))
    assert drawn.shape == cv2.imread(str(first)).shape

    code, lines, err = _run(capsys, DET_DEMO, det_ckpt, images, '--out', tmp_path / 'all',
                            '--score-thr', '0')
    assert code == 0, err
    names = sorted(p.name for p in images.iterdir())
    assert len(names) == 3 and len(lines) == 4
    for line, name in zip(lines, names):
        assert line.startswith(f'{name}: ')
    assert lines[-1] == f'drew 3 images in {tmp_path / "all"}'
    assert sorted(p.name for p in (tmp_path / 'all').iterdir()) == names

    video = tmp_path / 'clip.mp4'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'mp4v'), 5, (128, 96))
    for name in names:
        writer.write(cv2.imread(str(images / name)))
    writer.release()
    code, lines, err = _run(capsys, DET_DEMO, det_ckpt, video, '--out', tmp_path / 'video')
    assert code == 0, err
    assert len(lines) == 1 and lines[0].startswith('clip.mp4: 3 frames, '), lines
    assert lines[0].endswith(f'; drawn in {tmp_path / "video" / "clip.mp4"}')
    capture = cv2.VideoCapture(str(tmp_path / 'video' / 'clip.mp4'))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == 3
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == \
        (128, 96)


def test_segmentor_summary_names_the_largest_classes(images, seg_ckpt, tmp_path, capsys):
    first = sorted(images.iterdir())[0]
    code, lines, err = _run(capsys, SEG_DEMO, seg_ckpt, first, '--out', tmp_path)
    assert code == 0, err
    match = re.match(rf'^{re.escape(first.name)}: (\d+) class(?:es)?, largest '
                     r'((?:\w+ <?\d+%(?:, )?){1,3})$', lines[0])
    assert match, lines
    shares = [int(part.rsplit(' ', 1)[1].strip('<%')) for part in match.group(2).split(', ')]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 101
    assert len(shares) == min(3, int(match.group(1)))
    assert osp.isfile(tmp_path / first.name)


def test_bad_input_is_one_line(images, det_ckpt, seg_ckpt, tmp_path, capsys):
    code, _, err = _run(capsys, DET_DEMO, det_ckpt, tmp_path / 'nope.jpg')
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f'error: input {tmp_path / "nope.jpg"} does not exist; give an image, a folder of '
        'images or a video.')
    empty = tmp_path / 'empty'
    empty.mkdir()
    code, _, err = _run(capsys, DET_DEMO, det_ckpt, empty)
    assert code == 2 and 'holds no images' in err
    # a segmentor's checkpoint for a detector config: stops with the fit report, naming it
    code, _, err = _run(capsys, DET_DEMO, seg_ckpt, sorted(images.iterdir())[0])
    assert code == 2 and err.startswith('error: ') and 'seg.pth' in err
    assert 'Traceback' not in err
    # a corrupt image in a folder is skipped with its name; alone it is an error
    folder = tmp_path / 'mixed'
    folder.mkdir()
    good = sorted(images.iterdir())[0]
    (folder / good.name).write_bytes(good.read_bytes())
    (folder / 'cut.jpg').write_bytes(good.read_bytes()[:200])
    code, lines, err = _run(capsys, DET_DEMO, det_ckpt, folder, '--out', tmp_path / 'o')
    assert code == 0, err
    assert lines[1].startswith('cut.jpg: skipped, Image ') and 'is corrupt' in lines[1]
    assert lines[-1] == f'drew 1 image in {tmp_path / "o"} (1 skipped)'
    code, _, err = _run(capsys, DET_DEMO, det_ckpt, folder / 'cut.jpg')
    assert code == 2 and 'cut.jpg is corrupt' in err
