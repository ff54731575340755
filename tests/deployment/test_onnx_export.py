"""ONNX export of ConvNeXt backbones (convnext_dense.deployment), checked with onnxruntime:
V1-T exported with dynamic shapes agrees with PyTorch at two input sizes and batch sizes; the
check fails loudly on a wrong file; the TorchScript fallback states why it was used; UperNet's
pyramid pooling is replaced by a pool that is right at every size; a bare V2-atto backbone
config loads its checkpoint and exports; a detector's backbone + FPN exports, its whole model
is refused with the reason; an exported segmentor runs inside OnnxSegmentor."""
import pytest
import torch
import torch.nn as nn

pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')

from mmengine.config import Config  # noqa: E402

from convnext_dense.deployment import (OnnxCheckError, OnnxSegmentor,  # noqa: E402
                                       ShapeAgnosticAdaptiveAvgPool2d, build_pytorch_model,
                                       check_inputs, compare, export_module, export_onnx,
                                       replace_adaptive_pools)
from convnext_dense.deployment.onnx_export import FeatureMaps  # noqa: E402
from convnext_dense.models.backbones.convnext import ConvNeXt  # noqa: E402


def randomised(backbone: ConvNeXt) -> ConvNeXt:
    """Weights that make every block count: layer scale 1 (not 1e-6) and random GRN
    parameters (not the identity zeros), as in a trained network."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in backbone.named_parameters():
            if name.endswith('.gamma') and param.dim() == 1:
                param.fill_(1.0)
            elif '.grn.' in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return backbone.eval()


@pytest.mark.parametrize('output_size', [1, 2, 3, 6, (2, 5)])
@pytest.mark.parametrize('size', [(6, 6), (4, 7), (17, 3), (2, 2), (13, 29)])
def test_shape_agnostic_pool_matches_adaptive_avg_pool(output_size, size):
    x = torch.randn(2, 3, *size)
    want = nn.AdaptiveAvgPool2d(output_size)(x)
    got = ShapeAgnosticAdaptiveAvgPool2d(output_size)(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize('dynamo', [True, False])
def test_shape_agnostic_pool_stays_right_at_other_sizes_in_onnx(tmp_path, dynamo):
    from convnext_dense.deployment.runtime import create_session, run_session
    out = str(tmp_path / 'pool.onnx')
    kwargs = (dict(dynamic_shapes=({0: 'batch', 2: 'height', 3: 'width'},)) if dynamo else
              dict(dynamic_axes={'input': {0: 'batch', 2: 'height', 3: 'width'}},
                   opset_version=17))
    torch.onnx.export(ShapeAgnosticAdaptiveAvgPool2d(6), (torch.randn(1, 4, 12, 12),), out,
                      dynamo=dynamo, input_names=['input'], **kwargs)
    session = create_session(out)
    for size in [(18, 18), (13, 13), (8, 9), (3, 4)]:  # nn.AdaptiveAvgPool2d's export fails
        x = torch.randn(2, 4, *size)
        got = torch.from_numpy(run_session(session, x.numpy())[0])
        torch.testing.assert_close(got, nn.AdaptiveAvgPool2d(6)(x), atol=1e-6, rtol=1e-5)


def test_replace_adaptive_pools_keeps_global_pools():
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Sequential(nn.AdaptiveAvgPool2d(6)),
                          nn.AdaptiveAvgPool2d((2, 3)))
    assert replace_adaptive_pools(model) == 2
    assert type(model[0]) is nn.AdaptiveAvgPool2d
    assert isinstance(model[1][0], ShapeAgnosticAdaptiveAvgPool2d)
    assert model[2].output_size == (2, 3)


def test_v1_tiny_backbone_dynamic_export_matches_at_two_sizes(tmp_path):
    import onnx
    module = FeatureMaps(randomised(ConvNeXt('tiny'))).eval()
    inputs = check_inputs((128, 160), dynamic=True)
    assert [tuple(x.shape) for x in inputs] == [(1, 3, 128, 160), (2, 3, 168, 232)]
    out = str(tmp_path / 'tiny.onnx')
    result = export_onnx(module, inputs[0], out, [f'feat{i}' for i in range(4)], dynamic=True,
                         fallback=False)
    assert result['exporter'] == 'dynamo' and result['fallback_reason'] is None
    graph = onnx.load(out).graph
    assert {node.domain for node in graph.node} <= {'', 'ai.onnx'}  # standard ops only
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == \
        ['batch', '', 'height', 'width']
    rows = compare(module, out, inputs)
    assert [row['shape'] for row in rows] == [
        (1, 96, 32, 40), (1, 192, 16, 20), (1, 384, 8, 10), (1, 768, 4, 5),
        (2, 96, 42, 58), (2, 192, 21, 29), (2, 384, 10, 14), (2, 768, 5, 7)]
    for row in rows:  # measured: below 2e-5 for outputs of magnitude ~5
        assert row['max_abs'] > 1.0 and row['max_abs_diff'] < 1e-4, row


def test_check_fails_loudly_on_a_file_of_other_weights(tmp_path):
    torch.manual_seed(0)
    exported, other = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)
    out = str(tmp_path / 'conv.onnx')
    x = check_inputs((16, 16), dynamic=False)
    export_onnx(exported, x[0], out, ['feat0'])
    assert compare(exported, out, x)[0]['max_abs_diff'] < 1e-5
    with pytest.raises(OnnxCheckError, match=r'does not reproduce PyTorch: output feat0'):
        compare(other, out, x)


def test_torchscript_fallback_states_why(tmp_path, monkeypatch):
    real_export = torch.onnx.export

    def dynamo_fails(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError('simulated torch.export failure\nsecond line')
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, 'export', dynamo_fails)
    module = FeatureMaps(randomised(ConvNeXt('v2-atto', out_indices=(3,)))).eval()
    inputs = check_inputs((64, 96), dynamic=True)
    out = str(tmp_path / 'atto.onnx')
    result = export_onnx(module, inputs[0], out, ['feat0'], dynamic=True)
    assert result['exporter'] == 'torchscript'
    assert result['fallback_reason'] == 'RuntimeError: simulated torch.export failure'
    assert all(row['max_abs_diff'] < 1e-4 for row in compare(module, out, inputs))
    with pytest.raises(RuntimeError, match='simulated'):
        export_onnx(module, inputs[0], out, ['feat0'], fallback=False)


def test_whole_detector_export_is_refused_with_the_reason():
    cfg = Config(dict(default_scope='mmdet', model=dict(type='MaskRCNN', backbone=dict())))
    with pytest.raises(NotImplementedError, match=r'NMS.*RoIAlign.*--part features'):
        export_module(cfg, nn.Identity(), 'model')
    with pytest.raises(ValueError, match='part must be one of'):
        export_module(cfg, nn.Identity(), 'heads')


def test_query_heads_are_refused_and_large_weights_go_to_external_data(tmp_path,
                                                                         monkeypatch):
    from convnext_dense.deployment import onnx_export
    cfg = Config(dict(default_scope='mmseg', model=dict(type='EncoderDecoder', backbone={})))
    segmentor = nn.Module()
    segmentor.decode_head = nn.Identity()  # e.g. Mask2FormerHead: no plain logits
    with pytest.raises(NotImplementedError, match='decode head Identity.*--part backbone'):
        export_module(cfg, segmentor, 'model')
    monkeypatch.setattr(onnx_export, 'EXTERNAL_DATA_BYTES', 1000)  # V2-H UperNet: 2.8 GB
    module, out = nn.Conv2d(3, 64, 3), str(tmp_path / 'big.onnx')
    x = check_inputs((16, 16), dynamic=False)
    assert export_onnx(module, x[0], out, ['feat0'])['external_data']
    assert (tmp_path / 'big.onnx.data').stat().st_size >= 64 * 27 * 4
    assert compare(module, out, x)[0]['max_abs_diff'] < 1e-5


class TinySegmentor(nn.Module):
    """(N, 3, H, W) -> (N, 6, H, W) 'logits'."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_onnx_segmentor_runs_the_file_and_refuses_other_shapes(tmp_path):
    torch.manual_seed(0)
    module = TinySegmentor().eval()
    out = str(tmp_path / 'seg.onnx')
    x = check_inputs((32, 48), dynamic=False)[0]
    export_onnx(module, x, out, ['logits'])
    segmentor = OnnxSegmentor(out, test_cfg=dict(mode='whole'))
    assert segmentor.out_channels == 6 and segmentor.num_classes == 6
    logits = segmentor.encode_decode(x, [dict(img_shape=(32, 48))])
    torch.testing.assert_close(logits, module(x).detach(), atol=1e-5, rtol=1e-5)
    # mmseg's sliding window asks for the crop size; padding-free whole images for pad_shape
    resized = segmentor.encode_decode(x, [dict(img_shape=(30, 40), pad_shape=(64, 96))])
    assert resized.shape == (1, 6, 64, 96)
    with pytest.raises(ValueError, match=r'exported for inputs of shape \[1, 3, 32, 48\].*'
                                         r'--dynamic'):
        segmentor.encode_decode(torch.zeros(1, 3, 48, 48), [dict(img_shape=(48, 48))])


class TwoMaps(nn.Module):
    def forward(self, x):
        return x * 2, x[:, :, ::2, ::2]


def test_onnx_segmentor_refuses_a_backbone_file(tmp_path):
    out = str(tmp_path / 'backbone.onnx')
    export_onnx(TwoMaps(), check_inputs((16, 16), False)[0], out, ['feat0', 'feat1'])
    with pytest.raises(ValueError, match='is not a segmentor export'):
        OnnxSegmentor(out)
    with pytest.raises(FileNotFoundError, match='export one with tools/deployment'):
        OnnxSegmentor(str(tmp_path / 'missing.onnx'))


def test_bare_v2_atto_backbone_config_with_checkpoint_exports(tmp_path):
    torch.manual_seed(0)
    source = randomised(ConvNeXt('v2-atto'))
    torch.save(source.state_dict(), tmp_path / 'atto.pth')
    cfg = Config(dict(default_scope='mmseg',
                      model=dict(type='convnext_dense.ConvNeXt', arch='v2-atto')))
    model = build_pytorch_model(cfg, str(tmp_path / 'atto.pth'))
    assert torch.equal(model.stages[2][1].grn.gamma, source.stages[2][1].grn.gamma)
    module, names = export_module(cfg, model, 'model')  # a bare backbone: its maps
    assert names == ['feat0', 'feat1', 'feat2', 'feat3']
    inputs = check_inputs((96, 128), dynamic=True)
    out = str(tmp_path / 'atto.onnx')
    assert export_onnx(module, inputs[0], out, names, dynamic=True)['exporter'] == 'dynamo'
    rows = compare(module, out, inputs)
    assert [row['shape'] for row in rows] == [
        (1, 40, 24, 32), (1, 80, 12, 16), (1, 160, 6, 8), (1, 320, 3, 4),
        (2, 40, 34, 50), (2, 80, 17, 25), (2, 160, 8, 12), (2, 320, 4, 6)]
    for row in rows:  # measured: below 1e-5
        assert row['max_abs'] > 1.0 and row['max_abs_diff'] < 1e-4, row


def test_detector_backbone_and_fpn_export(tmp_path):
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope

    from helpers import DET_DEMO
    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(DET_DEMO)
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = build_pytorch_model(cfg, None)
    module, names = export_module(cfg, model, 'features')
    inputs = check_inputs((96, 128), dynamic=False)
    out = str(tmp_path / 'fpn.onnx')
    assert export_onnx(module, inputs[0], out, names)['exporter'] == 'dynamo'
    rows = compare(module, out, inputs)
    # the demo's FPN: 64 channels at strides 4, 8, 16, 32 and an extra stride-64 map
    assert [row['shape'] for row in rows] == [(1, 64, 24, 32), (1, 64, 12, 16),
                                              (1, 64, 6, 8), (1, 64, 3, 4), (1, 64, 2, 2)]
    assert all(row['max_abs_diff'] < 1e-4 for row in rows)
