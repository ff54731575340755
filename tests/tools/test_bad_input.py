"""Bad input through the tools: a missing config or checkpoint, an unknown arch, a
--cfg-options typo, a checkpoint of another model or shape: each an error that names the
file, key or value and says what to do."""


import pytest
import torch

import convnext_dense  # noqa: F401  (registries)

from helpers import SEG_DEMO, load_tool, seg_args

train_tool = load_tool('train')
test_tool = load_tool('test')
_common = load_tool('_common')


# ----------------------------------------------------------------------------- bad input
def test_missing_config_names_file_and_remedy(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'nope\.py does not exist; give the path'):
        _common.load_config(train_tool.parse_args([str(tmp_path / 'nope.py')]))


def test_unknown_arch_surfaces_through_train_tool(tmp_path):
    args = [SEG_DEMO, '--work-dir', str(tmp_path), '--cfg-options',
            'model.backbone.arch=v2-attoo']
    with pytest.raises(ValueError, match=r"Unknown ConvNeXt arch 'v2-attoo'.*v2-atto"):
        train_tool.main(args)


def test_cfg_options_typo_is_refused_with_the_closest_key():
    parse = train_tool.parse_args
    cases = {'train_dataloader.batchsize=2': 'train_dataloader.batch_size',
             'model.decode_head.num_clases=3': 'model.decode_head.num_classes',
             'data_rot=/x': 'data_root'}
    for option, suggestion in cases.items():
        with pytest.raises(_common.CfgOptionError) as info:
            _common.load_config(parse([SEG_DEMO, '--cfg-options', option]))
        message = str(info.value)
        assert f'did you mean {suggestion}?' in message and 'demo_upernet' in message, message
        assert '+' + option.split('=')[0] in message  # the escape hatch is named
    with pytest.raises(_common.CfgOptionError, match='index 9 is out of range'):
        _common.load_config(parse([SEG_DEMO, '--cfg-options', 'param_scheduler.9.end=3']))
    # deliberate new keys: '+' forces one; a key without a close sibling is accepted as it is
    cfg = _common.load_config(parse([SEG_DEMO, '--cfg-options', '+train_dataloader.batchsize=3',
                                     'log_processor.num_digits=8', 'param_scheduler.1.end=7',
                                     'model.backbone.init_cfg.type=Pretrained']))
    assert cfg.train_dataloader.batchsize == 3 and cfg.train_dataloader.batch_size == 8
    assert cfg.log_processor.num_digits == 8 and cfg.param_scheduler[1].end == 7
    assert cfg.model.backbone.init_cfg.type == 'Pretrained'


def test_missing_checkpoint_paths_are_named(tmp_path):
    missing = str(tmp_path / 'gone.pth')
    with pytest.raises(FileNotFoundError, match=r'checkpoint .*gone\.pth does not exist; give'):
        test_tool.main([SEG_DEMO, missing])
    with pytest.raises(FileNotFoundError, match=r'--resume checkpoint .*gone\.pth does not exist'):
        train_tool.main([SEG_DEMO, '--work-dir', str(tmp_path), '--resume', missing])
    with pytest.raises(FileNotFoundError, match=r'load_from checkpoint .*gone\.pth does not exist'):
        train_tool.main([SEG_DEMO, '--work-dir', str(tmp_path), '--cfg-options',
                         f'load_from={missing}'])
    from mmengine.runner.checkpoint import _load_checkpoint
    with pytest.raises(FileNotFoundError, match=r'gone\.pth does not exist; check the path'):
        _load_checkpoint(missing)


def _seg_model_state(toy_ade):
    from mmengine.registry import MODELS
    cfg = _common.load_config(train_tool.parse_args([SEG_DEMO]))
    return MODELS.build(cfg.model).state_dict()


def test_checkpoint_of_another_shape_or_model_is_an_error(toy_ade, tmp_path):
    from convnext_dense.checkpoint.fit import check_checkpoint_fits
    state = _seg_model_state(toy_ade)
    assert tuple(state['decode_head.conv_seg.weight'].shape) == (6, 64, 1, 1)
    # 7 classes instead of 6: mmengine alone would only warn and evaluate a half-loaded model
    wrong = dict(state, **{'decode_head.conv_seg.weight': torch.zeros(7, 64, 1, 1),
                           'decode_head.conv_seg.bias': torch.zeros(7)})
    torch.save({'state_dict': wrong}, tmp_path / 'classes7.pth')
    argv = [SEG_DEMO, str(tmp_path / 'classes7.pth'), '--work-dir', str(tmp_path / 'w'),
            '--cfg-options', f'data_root={toy_ade}', 'test_dataloader.num_workers=0',
            'test_dataloader.persistent_workers=False']
    with pytest.raises(ValueError) as info:
        test_tool.main(argv)
    message = str(info.value)
    assert 'classes7.pth' in message and '2 tensor(s) have another shape' in message
    assert 'decode_head.conv_seg.weight: checkpoint (7, 64, 1, 1) vs model (6, 64, 1, 1)' \
        in message
    assert 'decode_head.conv_seg.bias: checkpoint (7,) vs model (6,)' in message
    # a bare backbone state dict (no 'backbone.' prefix): another model altogether
    bare = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    torch.save(bare, tmp_path / 'bare.pth')
    argv[1] = str(tmp_path / 'bare.pth')
    with pytest.raises(ValueError, match=r'bare\.pth shares no tensor name .*convert_checkpoint'):
        test_tool.main(argv)
    # the backbone only: testing it would evaluate random heads
    torch.save({'state_dict': {k: v for k, v in state.items() if k.startswith('backbone.')}},
               tmp_path / 'backbone.pth')
    argv[1] = str(tmp_path / 'backbone.pth')
    with pytest.raises(ValueError, match=r'backbone\.pth lacks \d+ of the \d+ tensors'):
        test_tool.main(argv)
    # load_from for fine-tuning: mismatches are an error unless --skip-mismatched
    from mmengine.registry import MODELS
    model = MODELS.build(_common.load_config(train_tool.parse_args([SEG_DEMO])).model)
    with pytest.raises(ValueError, match='--skip-mismatched'):
        check_checkpoint_fits(model, {'state_dict': wrong}, 'classes7.pth')
    check_checkpoint_fits(model, {'state_dict': wrong}, 'classes7.pth', skip_mismatched=True)
    assert train_tool.parse_args([SEG_DEMO, '--skip-mismatched']).skip_mismatched
    # load_from a checkpoint that lacks tensors stops like tools/test.py, before training,
    # unless partial loading is asked for
    common = seg_args(toy_ade, tmp_path / 'ft', 'train_cfg.max_iters=1',
                      'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
                      f'load_from={tmp_path / "backbone.pth"}')
    with pytest.raises(ValueError, match=r'(?s)backbone\.pth lacks \d+ of the \d+ tensors.*'
                                         r'pass --skip-mismatched'):
        train_tool.main([SEG_DEMO, *common])
    assert not (tmp_path / 'ft' / 'iter_1.pth').exists()
    train_tool.main([SEG_DEMO, '--skip-mismatched', *common])
    assert (tmp_path / 'ft' / 'iter_1.pth').exists()
