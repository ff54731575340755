"""--cfg-options that either work or stop: a top-level config variable is applied where the
config used it; a key nothing reads, a list of heads addressed as one head, a typo in a config
file and an unknown arch each stop with one line and exit status 2, before the Runner logs the
config. Run in this process through tools/_common.run_tool (what `python tools/train.py`
runs), so each case costs a config parse, not a Python start."""
import os.path as osp
import sys

import pytest

from helpers import DET_DEMO, REPO, SEG_DEMO, TOOLS

sys.path.insert(0, TOOLS)
import _common  # noqa: E402
import train  # noqa: E402

CASCADE_T = osp.join(REPO, 'configs', 'detection', 'cascade_convnext_t_coco.py')


def _args(config, *options, work_dir='/nonexistent/work'):
    return train.parse_args([config, '--work-dir', work_dir]
                            + (['--cfg-options', *options] if options else []))


def _error(capsys, argv):
    """The one line that ``python tools/train.py argv`` prints before exiting with 2."""
    with pytest.raises(SystemExit) as exit_info:
        _common.run_tool(train.main, argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_max_iters_reaches_the_loop_and_the_schedule(capsys):
    cfg = _common.load_config(_args(SEG_DEMO, 'max_iters=4'))
    assert cfg.train_cfg.max_iters == 4 and cfg.train_cfg.val_interval == 4
    assert cfg.param_scheduler[1].end == 4  # PolyLR(end=max_iters)
    assert capsys.readouterr().out.strip() == (
        f'--cfg-options: {SEG_DEMO} re-read with max_iters = 4; that changed '
        'param_scheduler.1.end, train_cfg.max_iters, train_cfg.val_interval')
    # everything else is the file's
    assert cfg.model.decode_head.num_classes == 6 and cfg.train_dataloader.batch_size == 8


def test_num_classes_variable_reaches_every_head_then_the_class_check_stops(capsys, tmp_path):
    cfg = _common.load_config(_args(DET_DEMO, 'num_classes=3'))
    heads = cfg.model.roi_head
    assert [h.num_classes for h in heads.bbox_head] == [3, 3, 3]
    assert heads.mask_head.num_classes == 3
    capsys.readouterr()
    line = _error(capsys, [DET_DEMO, '--work-dir', str(tmp_path / 'work'), '--cfg-options',
                           'num_classes=3'])
    assert line.startswith('error: train_dataloader.dataset has 5 classes (metainfo classes: '
                           'circle, square, triangle, star, cross) but '
                           'model.roi_head.bbox_head.0.num_classes is 3 (and 3 more head(s))')
    assert not (tmp_path / 'work').exists()  # before the Runner


def test_a_dotted_key_into_a_dict_variable(capsys):
    cfg = _common.load_config(_args(SEG_DEMO, 'toy_dataset.img_suffix=.png'))
    for split in ('train', 'val', 'test'):
        assert cfg[f'{split}_dataloader'].dataset.img_suffix == '.png'


def test_data_root_variable_keeps_its_folder_slash():
    cfg = _common.load_config(_args(DET_DEMO, 'data_root=/data/shapes'))
    assert cfg.train_dataloader.dataset.data_root == '/data/shapes/'
    assert cfg.val_evaluator.ann_file == '/data/shapes/annotations/instances_val.json'


def test_variables_of_a_base_named_by_its_absolute_path(tmp_path):
    child = tmp_path / 'child.py'
    child.write_text(f'_base_ = "{SEG_DEMO}"\ntrain_dataloader = dict(batch_size=2)\n')
    cfg = _common.load_config(_args(str(child), 'data_root=/data/shapes', 'max_iters=4'))
    assert cfg.train_dataloader.dataset.data_root == '/data/shapes'
    assert cfg.train_cfg.max_iters == 4 and cfg.train_dataloader.batch_size == 2


def test_a_top_level_key_nothing_reads_is_refused(capsys, tmp_path):
    line = _error(capsys, [CASCADE_T, '--work-dir', str(tmp_path), '--cfg-options',
                           'num_classes=3'])
    assert line == (
        f'error: --cfg-options num_classes: {CASCADE_T} has no top-level variable num_classes, '
        'so nothing would read it; the keys named num_classes are '
        'model.roi_head.bbox_head.0.num_classes model.roi_head.bbox_head.1.num_classes '
        'model.roi_head.bbox_head.2.num_classes model.roi_head.mask_head.num_classes: set '
        'those, e.g. model.roi_head.bbox_head.0.num_classes=3 '
        'model.roi_head.bbox_head.1.num_classes=3 model.roi_head.bbox_head.2.num_classes=3 '
        'model.roi_head.mask_head.num_classes=3; write +num_classes=... to add the key anyway.')
    # on purpose: accepted, and nothing else changes
    cfg = _common.load_config(_args(CASCADE_T, '+num_classes=3'))
    assert cfg.num_classes == 3 and cfg.model.roi_head.mask_head.num_classes == 80


def test_a_list_of_heads_addressed_as_one_shows_the_index_syntax(capsys, tmp_path):
    line = _error(capsys, [CASCADE_T, '--work-dir', str(tmp_path), '--cfg-options',
                           'model.roi_head.bbox_head.num_classes=3'])
    assert line == (
        'error: --cfg-options model.roi_head.bbox_head.num_classes: model.roi_head.bbox_head in '
        f'{CASCADE_T} is a list of 3; set each entry by its index: '
        'model.roi_head.bbox_head.0.num_classes=3 model.roi_head.bbox_head.1.num_classes=3 '
        'model.roi_head.bbox_head.2.num_classes=3')
    # and that syntax works
    cfg = _common.load_config(_args(CASCADE_T, *(f'model.roi_head.bbox_head.{i}.num_classes=3'
                                                 for i in range(3))))
    assert [h.num_classes for h in cfg.model.roi_head.bbox_head] == [3, 3, 3]
    assert cfg.model.roi_head.bbox_head[2].bbox_coder.target_stds == [0.033, 0.033, 0.067, 0.067]


@pytest.mark.parametrize('body, message', [
    ("model = dict(backbone=dict(drop_path_rat=0.1))",
     '{cfg}: model.backbone.drop_path_rat is not an argument of convnext_dense.ConvNeXt; did '
     'you mean model.backbone.drop_path_rate?'),
    ("model = dict(backbone=dict(type='ConvNext'))",
     "{cfg}: model.backbone.type is 'ConvNext', which is not in the mmdet model registry; did "
     "you mean 'convnext_dense.ConvNeXt'?"),
    ("model = dict(neck=dict(type='FPNN'))",
     "{cfg}: model.neck.type is 'FPNN', which is not in the mmdet model registry; did you mean "
     "'FPN'?"),
])
def test_typos_inside_a_config_file_are_one_line_with_a_suggestion(body, message, capsys,
                                                                   tmp_path):
    config = tmp_path / 'typo.py'
    config.write_text(f'_base_ = {DET_DEMO!r}\n{body}\n')
    line = _error(capsys, [str(config), '--work-dir', str(tmp_path / 'work')])
    assert line == 'error: ' + message.format(cfg=config)
    assert not (tmp_path / 'work').exists()


def test_a_typo_in_a_pipeline_is_one_line(capsys, tmp_path, tmp_path_factory):
    from helpers import toy_dataset
    root = toy_dataset(tmp_path_factory, 'ade', num_train=2, num_val=2, size=(64, 48))
    config = tmp_path / 'typo.py'
    config.write_text(f'_base_ = {SEG_DEMO!r}\n'
                      f"data_root = '{root}'\n"
                      "train_pipeline = [dict(type='LoadImageFromFile'), "
                      "dict(type='RandomFlipp', prob=0.5), dict(type='PackSegInputs')]\n"
                      'train_dataloader = dict(dataset=dict(pipeline=train_pipeline))\n')
    line = _error(capsys, [str(config), '--work-dir', str(tmp_path / 'work')])
    assert line == (f"error: {config}: train_dataloader.dataset.pipeline.1.type is 'RandomFlipp', "
                    "which is not in the mmseg transform registry; did you mean 'RandomFlip'?")


def test_unknown_arch_stops_before_the_config_is_logged(tmp_path):
    """As a user runs it: the whole output is the one error line."""
    from test_tool_errors import tool
    code, stdout, stderr = tool('train.py', DET_DEMO, '--work-dir', str(tmp_path / 'work'),
                                '--cfg-options', 'model.backbone.arch=tinny')
    assert (code, stdout) == (2, '')
    assert stderr == (
        "error: Unknown ConvNeXt arch 'tinny'. Valid archs: tiny, small, base, large, xlarge, "
        'v2-atto, v2-femto, v2-pico, v2-nano, v2-tiny, v2-base, v2-large, v2-huge; or pass '
        'dict(depths=[...], dims=[...]).\n')
    assert not (tmp_path / 'work').exists()  # the Runner (and its config dump) never started


def test_vis_tensorboard_adds_the_backend_or_names_the_install_command(capsys, monkeypatch,
                                                                      tmp_path):
    cfg = _common.load_config(_args(SEG_DEMO))
    monkeypatch.setattr(train, '_tensorboard_missing', lambda: False)
    train.setup_visualization(cfg, ['tensorboard'])
    assert [b['type'] for b in cfg.visualizer.vis_backends] == ['LocalVisBackend',
                                                                'TensorboardVisBackend']
    monkeypatch.setattr(train, '_tensorboard_missing', lambda: True)
    line = _error(capsys, [SEG_DEMO, '--work-dir', str(tmp_path / 'work'), '--vis',
                           'tensorboard'])
    assert line == ('error: TensorBoard logging (--vis tensorboard or a TensorboardVisBackend '
                    'in the config) needs the tensorboard package: pip install ".[tensorboard]" '
                    '(or pip install tensorboard).')
    assert not (tmp_path / 'work').exists()
    # the backend named through --cfg-options: the same line, not a traceback at the first log
    line = _error(capsys, [SEG_DEMO, '--work-dir', str(tmp_path / 'work'), '--cfg-options',
                           'visualizer.vis_backends.0.type=TensorboardVisBackend'])
    assert line.startswith('error: TensorBoard logging')


def test_dict_syntax_on_the_command_line_is_refused(capsys, tmp_path):
    line = _error(capsys, [SEG_DEMO, '--work-dir', str(tmp_path), '--cfg-options',
                           "visualizer.vis_backends=[dict(type='TensorboardVisBackend')]"])
    assert line == ("error: --cfg-options visualizer.vis_backends: "
                    "dict(type='TensorboardVisBackend') stays a string on the command line; set "
                    'the keys inside it one by one, e.g. visualizer.vis_backends.0.type=... '
                    '(TensorBoard: tools/train.py --vis tensorboard)')
