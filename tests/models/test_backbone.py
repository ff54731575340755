"""ConvNeXt backbone: equality with timm, checkpoint layouts, counts, freezing, checkpointing."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from convnext_dense.models import ConvNeXt, convert_checkpoint, load_backbone_checkpoint
from convnext_dense.models.backbones.convnext import ARCHS
from helpers import V2_DIMS, V2_PAPER_PARAMS

ROOT = Path(__file__).resolve().parents[2]
TINY_ARCH = dict(depths=[1, 2, 1, 1], dims=[8, 16, 24, 32])


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter (layer scale, GRN, norms included) a non-trivial value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith(('gamma', 'grn.weight')) or 'norm' in name and 'weight' in name:
                param.copy_(1 + 0.3 * noise)  # layer scale ~1: every block matters
            elif param.dim() == 1 or 'grn' in name:
                param.copy_(0.1 * noise)
            else:
                param.copy_(noise * (1.0 / param[0].numel()) ** 0.5)


def timm_stage_outputs(model, x):
    x = model.stem(x)
    outs = []
    for stage in model.stages:
        x = stage(x)
        outs.append(x)
    return outs


@pytest.mark.parametrize('timm_name,arch', [('convnext_tiny', 'tiny'),
                                            ('convnextv2_atto', 'v2-atto')])
def test_equals_timm_after_conversion(timm_name, arch):
    reference = timm.create_model(timm_name, pretrained=False).eval()
    randomize_(reference)
    ours = ConvNeXt(arch).eval()
    randomize_(ours, seed=1)  # own norm{i} stay random; everything else comes from timm
    result = ours.load_state_dict(convert_checkpoint(reference.state_dict()), strict=False)
    assert sorted(result.missing_keys) == [f'norm{i}.{p}' for i in range(4)
                                           for p in ('bias', 'weight')]
    assert result.unexpected_keys == []

    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = [getattr(ours, f'norm{i}')(y) for i, y in
                    enumerate(timm_stage_outputs(reference, x))]
        got = ours(x)
    assert [tuple(y.shape) for y in got] == [(2, d, 96 // s, 128 // s) for d, s in
                                             zip(ours.dims, (4, 8, 16, 32))]
    for y, e in zip(got, expected):
        assert_close_scaled(y, e)


def assert_close_scaled(actual, expected, rel=2e-5):
    """``actual`` equals ``expected`` up to float32 rounding, measured against the size of the
    values compared rather than in absolute units.

    The two models run the same arithmetic through different kernels (timm's layout and ours;
    and oneDNN picks AVX2, AVX-512 or AMX code per CPU, each summing in its own order). The
    rounding error left behind grows with the magnitudes flowing through the network: the tiny
    model's outputs reach about 6 and differ by up to 9.3e-6 on an AVX-512 EPYC, 1.14e-5 on an
    AMX Xeon, where a fixed ``atol=1e-5`` failed. So the tolerance is ``rel`` times the
    largest value compared, about 170 float32 ulps of it (plus ``rel`` of each element), 10x
    the error measured; a wrong conversion (a tensor transposed, swapped or left out) is off by
    the size of the values themselves (swapping two blocks' depthwise weights: 2.4).
    """
    scale = expected.abs().max().item()
    error = (actual - expected).abs().max().item()
    assert scale > 0.1, f'values too small ({scale}) for this check to mean anything'
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * scale,
                               msg=lambda m: f'{m}\n(max abs error {error:.3g}, largest '
                                             f'value compared {scale:.3g})')


def to_mmpretrain_layout(state_dict):
    """Rename our keys the way mmpretrain / mmdet 3.x name them."""
    converted = {}
    for key, value in state_dict.items():
        key = (key.replace('.dwconv.', '.depthwise_conv.').replace('.pwconv1.', '.pointwise_conv1.')
               .replace('.pwconv2.', '.pointwise_conv2.'))
        if '.grn.' in key:
            value = value.flatten()
        converted['backbone.' + key] = value
    converted['head.fc.weight'] = torch.zeros(1000, 8)
    return converted


@pytest.mark.parametrize('arch', ['tiny', 'v2-atto'])
def test_mmpretrain_layout_round_trip(arch):
    source = ConvNeXt(arch).eval()
    randomize_(source)
    target = ConvNeXt(arch).eval()
    result = target.load_state_dict(convert_checkpoint(to_mmpretrain_layout(source.state_dict())))
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(source(x), target(x)):
            assert torch.equal(a, b)


def test_official_layouts_are_identity_and_heads_dropped():
    model = ConvNeXt('v2-atto')
    own = model.state_dict()
    classification = {'model': {**{k: v for k, v in own.items() if not k.startswith('norm')},
                                'norm.weight': torch.ones(320), 'head.weight': torch.ones(10, 320)}}
    converted = convert_checkpoint(classification)
    assert set(converted) == {k for k in own if not re.match(r'norm\d', k)}
    assert all(converted[k] is own[k] for k in converted)  # the same tensors, untouched
    dense = {'state_dict': {**{'backbone.' + k: v for k, v in own.items()},
                            'neck.lateral_convs.0.conv.weight': torch.ones(1)}}
    converted = convert_checkpoint(dense)
    assert list(converted) == list(own)
    assert all(converted[k] is own[k] for k in own)


# Backbone parameters with the four stage norms (ConvNeXt paper and official dense configs).
V1_PARAMS = {'tiny': 27.82, 'small': 49.46, 'base': 87.57, 'large': 196.23, 'xlarge': 348.15}
V2_PARAMS = V2_PAPER_PARAMS  # the paper's ImageNet classifiers (tests/helpers.py)


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('arch', list(V1_PARAMS))
def test_v1_parameter_counts(arch):
    with torch.device('meta'):
        model = ConvNeXt(arch, layer_scale_init_value=1.0)
    assert round(count(model) / 1e6, 2) == V1_PARAMS[arch]


@pytest.mark.parametrize('arch', list(V2_PARAMS))
def test_v2_parameter_counts(arch):
    with torch.device('meta'):
        model = ConvNeXt(arch)
    dims = model.dims
    classifier = count(model) - 2 * sum(dims) + 2 * dims[3] + 1001 * dims[3]
    digits = 0 if V2_PARAMS[arch] >= 80 else 1
    assert round(classifier / 1e6, digits) == V2_PARAMS[arch]
    assert set(ARCHS) >= set(V2_PARAMS) and tuple(dims) == V2_DIMS[arch]


def test_out_indices_subset_shapes_and_norms():
    model = ConvNeXt(TINY_ARCH, out_indices=(1, 3))
    outs = model(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 16, 8, 12), (1, 32, 2, 3)]
    assert all(o.is_contiguous() for o in outs)
    assert not hasattr(model, 'norm0') and hasattr(model, 'norm3')
    assert len(ConvNeXt(TINY_ARCH, out_indices=-1)(torch.randn(1, 3, 32, 32))) == 1


def test_frozen_stages_no_grad_and_eval_mode():
    model = ConvNeXt(TINY_ARCH, frozen_stages=1, drop_path_rate=0.5)
    model.train()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    prefixes = {'.'.join(n.split('.')[:2]) if n.startswith(('stages', 'downsample')) else
                n.split('.')[0] for n in frozen}
    assert prefixes == {'downsample_layers.0', 'downsample_layers.1', 'stages.0',
                                 'stages.1', 'norm0', 'norm1'}
    assert not model.stages[1].training and model.stages[2].training
    assert not model.downsample_layers[0].training and model.downsample_layers[2].training
    sum(o.sum() for o in model(torch.randn(1, 3, 64, 64))).backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)
    assert model.stages[2][0].pwconv1.weight.grad is not None


def test_with_cp_same_outputs_and_gradients():
    x = torch.randn(2, 3, 64, 64)
    plain = ConvNeXt(TINY_ARCH, layer_scale_init_value=1.0)
    randomize_(plain)
    checkpointed = ConvNeXt(TINY_ARCH, layer_scale_init_value=1.0, with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    grads = []
    for model in (plain, checkpointed):
        sum((o ** 2).mean() for o in model(x)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    outs = [plain(x), checkpointed(x)]
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_unknown_arch_lists_valid_ones():
    with pytest.raises(ValueError, match="Unknown ConvNeXt arch 'tinyy'.*tiny, small.*v2-huge"):
        ConvNeXt('tinyy')
    with pytest.raises(ValueError, match='missing'):
        ConvNeXt(dict(depths=[1, 1, 1, 1]))


def test_pretrained_init_cfg_converts_timm_checkpoint(tmp_path):
    reference = timm.create_model('convnextv2_atto', pretrained=False)
    randomize_(reference)
    path = tmp_path / 'timm_atto.pth'
    torch.save(reference.state_dict(), path)
    model = ConvNeXt('v2-atto', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    grn = reference.stages[2].blocks[3].mlp.grn.weight
    assert torch.equal(model.stages[2][3].grn.gamma.flatten(), grn)
    assert torch.equal(model.downsample_layers[0][0].weight, reference.stem[0].weight)


def test_checkpoint_with_wrong_shape_names_the_key(tmp_path):
    path = tmp_path / 'other.pth'
    torch.save({'state_dict': ConvNeXt(dict(depths=[1, 2, 1, 1], dims=[8, 16, 24, 40]))
                .state_dict()}, path)
    with pytest.raises(ValueError, match=r'stages\.3\.0\.dwconv\.weight: checkpoint '
                                         r'\(40, 1, 7, 7\) vs model \(32, 1, 7, 7\)'):
        load_backbone_checkpoint(ConvNeXt(TINY_ARCH), str(path))
    with pytest.raises(FileNotFoundError, match='missing.pth.*init_cfg'):
        load_backbone_checkpoint(ConvNeXt(TINY_ARCH), str(tmp_path / 'missing.pth'))


def test_load_reports_missing_and_unexpected(tmp_path):
    state = ConvNeXt(TINY_ARCH).state_dict()
    state.pop('norm2.weight')
    state['extra.weight'] = torch.ones(1)
    path = tmp_path / 'partial.pth'
    torch.save(state, path)
    model = ConvNeXt(TINY_ARCH)
    randomize_(model, seed=3)  # differs from the saved values everywhere
    report = load_backbone_checkpoint(model, str(path))
    assert report == dict(missing=['norm2.weight'], unexpected=['extra.weight'])
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if k != 'extra.weight')


def test_convert_checkpoint_tool(tmp_path):
    reference = timm.create_model('convnextv2_atto', pretrained=False)
    randomize_(reference)  # distinct values everywhere: a swapped tensor cannot go unnoticed
    src, dst = tmp_path / 'timm.pth', tmp_path / 'ours.pth'
    torch.save(reference.state_dict(), src)
    subprocess.run([sys.executable, str(ROOT / 'tools/convert_checkpoint.py'), str(src), str(dst)],
                   check=True, capture_output=True)
    converted = torch.load(dst, weights_only=True)['state_dict']
    model = ConvNeXt('v2-atto')
    result = model.load_state_dict(converted, strict=False)
    assert sorted(result.missing_keys) == [f'norm{i}.{p}' for i in range(4)
                                           for p in ('bias', 'weight')]
    assert not result.unexpected_keys
    # every tensor is timm's own, in our layout, bit for bit
    timm_state = reference.state_dict()
    assert len(converted) == len([k for k in timm_state if not k.startswith('head.')])
    for ours, theirs in timm_to_ours(model):
        assert torch.equal(converted[ours].flatten(), timm_state[theirs].flatten()), ours
        assert torch.equal(model.state_dict()[ours], converted[ours]), ours


def timm_to_ours(model):
    """(our key, timm key) of every backbone tensor of ``model``, spelled out independently of
    convert_checkpoint's rules."""
    pairs = []
    for name in model.state_dict():
        parts = name.split('.')
        if parts[0] == 'downsample_layers':
            theirs = (f'stem.{parts[2]}' if parts[1] == '0' else
                      f'stages.{parts[1]}.downsample.{parts[2]}') + '.' + '.'.join(parts[3:])
        elif parts[0] == 'stages':
            rest = '.'.join(parts[3:])
            rest = {'dwconv': 'conv_dw', 'pwconv1': 'mlp.fc1', 'pwconv2': 'mlp.fc2',
                    'grn': 'mlp.grn'}.get(parts[3], parts[3]) + rest[len(parts[3]):]
            rest = rest.replace('grn.gamma', 'grn.weight').replace('grn.beta', 'grn.bias')
            theirs = f'stages.{parts[1]}.blocks.{parts[2]}.{rest}'
        else:
            continue  # norm0..3: ours only
        pairs.append((name, theirs))
    return pairs


def test_norm_eps_of_a_dict_arch_matches_timm_clip_xxlarge_style_models():
    """timm's CLIP ConvNeXt-XXL uses LayerNorm eps 1e-5 (ours and the official models 1e-6):
    a dict arch with ``norm_eps=1e-5`` reproduces such a model; the default eps does not."""
    from timm.models.convnext import ConvNeXt as TimmConvNeXt
    reference = TimmConvNeXt(depths=TINY_ARCH['depths'], dims=TINY_ARCH['dims'],
                             norm_eps=1e-5, ls_init_value=1.0).eval()
    randomize_(reference)
    converted = convert_checkpoint(reference.state_dict())
    # a low-contrast input: per-pixel channel variances near 1e-5, where the eps matters
    x = 3e-3 * torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        stages = timm_stage_outputs(reference, x)
    errors = {}
    for eps in (1e-5, 1e-6):
        ours = ConvNeXt(dict(TINY_ARCH, norm_eps=eps)).eval()
        ours.load_state_dict(converted, strict=False)
        assert all(m.eps == eps for m in ours.modules() if isinstance(m, torch.nn.LayerNorm))
        with torch.no_grad():
            got = ours(x)
            expected = [getattr(ours, f'norm{i}')(y) for i, y in enumerate(stages)]
        errors[eps] = max(float((g - e).abs().max()) for g, e in zip(got, expected))
    # measured on an AVX-512 EPYC: 1.8e-6 with the right eps, 7.6e-4 with the default
    assert errors[1e-5] < 2e-5, errors
    assert errors[1e-6] > 2e-4, errors
