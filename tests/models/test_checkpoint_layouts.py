"""Backbone checkpoints of other origins: FCMAE (sparse, dense), open_clip, timm CLIP, DINOv3.

Each synthetic checkpoint is our own model's weights written out in the foreign layout, with
exact key names and shapes, by an inverse transform spelled out here from the documented
facts (independently of convert_checkpoint's rules). Converted back it must load with no
unexpected key, miss only our four output norms, and give bit-identical backbone outputs.
Where timm knows the layout, its key names and shapes are also checked against timm's own
models (built on the meta device) and its ``checkpoint_filter_fn``.
"""
import re

import pytest
import timm
import torch
import torch.nn.functional as F
from mmengine.logging import MMLogger
from timm.models.convnext import checkpoint_filter_fn

from convnext_dense.models import ConvNeXt, convert_checkpoint
from convnext_dense.checkpoint.layouts import detect_layout, sparse_to_dense_kernel

OUTPUT_NORMS = sorted(f'norm{i}.{p}' for i in range(4) for p in ('weight', 'bias'))


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Distinct, non-trivial values everywhere (layer scale and GRN included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith('gamma') or re.search(r'norm\d?\.weight$', name):
                param.copy_(1 + 0.3 * noise)
            elif param.dim() == 1 or '.grn.' in name:
                param.copy_(0.1 * noise)
            else:
                param.copy_(noise * param[0].numel() ** -0.5)


def ours(arch, seed=0):
    model = ConvNeXt(arch).eval()
    randomize_(model, seed)
    return model


def backbone_state(model):
    """Our state dict without the four output norms (no foreign checkpoint has them)."""
    return {k: v for k, v in model.state_dict().items() if not re.match(r'norm\d\.', k)}


def placeholder(*shape):
    """A tensor of the right shape that takes no memory (weights we only have to drop)."""
    return torch.zeros(()).expand(shape)


def assert_round_trip(source, checkpoint, layout_name):
    """``checkpoint`` converts to exactly ``source``'s backbone and computes what it does."""
    assert detect_layout(checkpoint).name == layout_name
    converted = convert_checkpoint(checkpoint)
    expected = backbone_state(source)
    assert sorted(converted) == sorted(expected)
    for key, value in expected.items():
        assert converted[key].shape == value.shape, key
        assert torch.equal(converted[key], value), key

    target = ConvNeXt(source.arch).eval()
    randomize_(target, seed=1)  # differs from the source everywhere before loading
    result = target.load_state_dict(converted, strict=False)
    assert sorted(result.missing_keys) == OUTPUT_NORMS
    assert result.unexpected_keys == []
    for i in range(4):  # the output norms are ours, not the checkpoint's: take the source's
        getattr(target, f'norm{i}').load_state_dict(getattr(source, f'norm{i}').state_dict())
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for got, want in zip(target(x), source(x)):
            assert want.abs().max() > 0.1
            assert torch.equal(got, want)


# ---------------------------------------------------------------------------------------------
# FCMAE (ConvNeXt-V2 sparse pre-training)
# MinkowskiEngine: a kernel has (K, C_in, C_out) (depthwise: (K, C)), K = k * k; kernel-volume
# index i enumerates offsets with the first spatial axis (H) fastest: i = dw_index * k +
# dh_index; odd k: offsets -k//2..k//2 around the site, even k: 0..k-1 from it.


def minkowski_offsets(size):
    """(dh, dw) of kernel-volume index 0, 1, ... in MinkowskiEngine's order."""
    low = -(size // 2) if size % 2 else 0
    return [(low + index % size, low + index // size) for index in range(size * size)]


def dense_to_sparse_kernel(weight, depthwise):
    """(C_out, C_in, k, k) -> (K, C_in, C_out); depthwise (C, 1, k, k) -> (K, C)."""
    c_out, c_in, size, _ = weight.shape
    offsets = minkowski_offsets(size)
    low = offsets[0][0]
    kernel = torch.empty(size * size, c_in, c_out)
    for index, (dh, dw) in enumerate(offsets):
        kernel[index] = weight[:, :, dh - low, dw - low].t()
    return kernel[:, 0, :].clone() if depthwise else kernel


def to_fcmae(model, decoder_dim=512, patch_size=32, in_chans=3):
    """``model``'s weights in the FCMAE pre-training layout, with its decoder (random)."""
    encoder = {}
    for key, value in backbone_state(model).items():
        if re.search(r'\.dwconv\.weight$|^downsample_layers\.[123]\.1\.weight$', key):
            value = dense_to_sparse_kernel(value, depthwise='dwconv' in key)
            key = key[:-len('weight')] + 'kernel'
        elif re.search(r'\.dwconv\.bias$|^downsample_layers\.[123]\.1\.bias$', key):
            value = value.reshape(1, -1)
        elif re.search(r'\.norm\.(weight|bias)$|^downsample_layers\.[123]\.0\.', key):
            key = re.sub(r'\.(weight|bias)$', r'.ln.\1', key)
        elif re.search(r'\.pwconv[12]\.', key):
            key = re.sub(r'\.(weight|bias)$', r'.linear.\1', key)
        elif '.grn.' in key:
            value = value.reshape(1, -1)
        encoder['encoder.' + key] = value
    return {'model': {**encoder, **fcmae_decoder(model, decoder_dim, patch_size, in_chans)}}


def fcmae_decoder(model, decoder_dim=512, patch_size=32, in_chans=3):
    """FCMAE's ``proj``, ``mask_token``, one dense V2 decoder block and ``pred`` (random)."""
    d, hidden = decoder_dim, 4 * decoder_dim
    generator = torch.Generator().manual_seed(3)
    decoder_shapes = {
        'proj.weight': (d, model.dims[-1], 1, 1), 'proj.bias': (d,),
        'mask_token': (1, d, 1, 1),
        'decoder.0.dwconv.weight': (d, 1, 7, 7), 'decoder.0.dwconv.bias': (d,),
        'decoder.0.norm.weight': (d,), 'decoder.0.norm.bias': (d,),
        'decoder.0.pwconv1.weight': (hidden, d), 'decoder.0.pwconv1.bias': (hidden,),
        'decoder.0.grn.gamma': (1, 1, 1, hidden), 'decoder.0.grn.beta': (1, 1, 1, hidden),
        'decoder.0.pwconv2.weight': (d, hidden), 'decoder.0.pwconv2.bias': (d,),
        'pred.weight': (patch_size ** 2 * in_chans, d, 1, 1),
        'pred.bias': (patch_size ** 2 * in_chans,)}
    return {k: torch.randn(shape, generator=generator) for k, shape in decoder_shapes.items()}


def to_fcmae_released(model, encoder_prefix=''):
    """The dense form of the FCMAE checkpoint, as released (``pt_only/*_fcmae.pt``): our
    names and shapes except GRN parameters (1, C), next to the decoder parts."""
    encoder = {encoder_prefix + k: v.reshape(1, -1) if '.grn.' in k else v
               for k, v in backbone_state(model).items()}
    return {'model': {**encoder, **fcmae_decoder(model)}}


@pytest.fixture(scope='module')
def atto():
    return ours('v2-atto')


def test_fcmae_keys_and_shapes(atto):
    """The stored names and shapes of the official V2-atto FCMAE checkpoint, spelled out."""
    state = to_fcmae(atto)['model']
    expected = {
        'encoder.downsample_layers.0.0.weight': (40, 3, 4, 4),
        'encoder.downsample_layers.0.1.weight': (40,),
        'encoder.downsample_layers.1.0.ln.weight': (40,),
        'encoder.downsample_layers.1.1.kernel': (4, 40, 80),
        'encoder.downsample_layers.1.1.bias': (1, 80),
        'encoder.stages.0.0.dwconv.kernel': (49, 40),
        'encoder.stages.0.0.dwconv.bias': (1, 40),
        'encoder.stages.0.0.norm.ln.weight': (40,),
        'encoder.stages.0.0.pwconv1.linear.weight': (160, 40),
        'encoder.stages.0.0.grn.gamma': (1, 160),
        'encoder.stages.0.0.grn.beta': (1, 160),
        'encoder.stages.0.0.pwconv2.linear.bias': (40,),
        'encoder.stages.3.1.dwconv.kernel': (49, 320),
        'proj.weight': (512, 320, 1, 1), 'mask_token': (1, 512, 1, 1),
        'pred.weight': (3072, 512, 1, 1)}
    assert {k: tuple(state[k].shape) for k in expected} == expected
    assert len([k for k in state if k.startswith('encoder.')]) == len(backbone_state(atto))


def test_fcmae_round_trip(atto):
    assert_round_trip(atto, to_fcmae(atto), 'FCMAE (sparse)')


@pytest.mark.parametrize('encoder_prefix', ['', 'encoder.'])
def test_fcmae_dense_round_trip(atto, encoder_prefix):
    checkpoint = to_fcmae_released(atto, encoder_prefix)
    assert checkpoint['model'][f'{encoder_prefix}stages.0.0.grn.gamma'].shape == (1, 160)
    assert_round_trip(atto, checkpoint, 'FCMAE (dense)')


def test_fcmae_loads_through_init_cfg(atto, tmp_path, monkeypatch):
    path = tmp_path / 'convnextv2_atto_1k_224_fcmae.pt'
    torch.save(to_fcmae(atto), path)
    assert_loads_through_init_cfg(atto, path, 'FCMAE (sparse)', monkeypatch)


def assert_loads_through_init_cfg(source, path, layout_name, monkeypatch):
    """``init_cfg=dict(type='Pretrained', checkpoint=path)`` gives ``source``'s backbone, with
    one summary naming the layout and only our eight output-norm keys missing."""
    messages = []
    monkeypatch.setattr(MMLogger.get_current_instance(), 'info', messages.append)
    model = ConvNeXt(source.arch, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    summary = '\n'.join(messages)
    assert f'from {path} (layout: {layout_name}).' in summary
    assert '8 key(s) missing' in summary and 'unexpected' not in summary
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in backbone_state(source).items())


def sparse_conv(features, kernel, bias, size, stride):
    """MinkowskiEngine's convolution on sites {(h, w): features (C_in,)}: an output site u
    (the active sites, or for stride 2 their cell corners) sums kernel[i] applied to the
    feature at u + offset i where that site is active. Depthwise when ``kernel`` is (K, C)."""
    outputs = {(h - h % stride, w - w % stride) for h, w in features}
    result = {}
    for h, w in outputs:
        total = bias.clone()
        for index, (dh, dw) in enumerate(minkowski_offsets(size)):
            x = features.get((h + dh, w + dw))
            if x is not None:
                total += x * kernel[index] if kernel.dim() == 2 else x @ kernel[index]
        result[(h, w)] = total
    return result


@pytest.mark.parametrize('size,stride,c_in,c_out', [(7, 1, 5, 5), (2, 2, 3, 4)])
def test_sparse_kernel_matches_minkowski_semantics(size, stride, c_in, c_out):
    """Dense conv with the converted kernel == the sparse convolution, on a 10x12 map with
    about half of its sites active (inactive ones are zeros for the dense conv)."""
    generator = torch.Generator().manual_seed(size)
    depthwise = stride == 1
    kernel = torch.randn((size * size, c_out) if depthwise else (size * size, c_in, c_out),
                         generator=generator)
    bias = torch.randn(c_out, generator=generator)
    dense = torch.randn(1, c_in, 10, 12, generator=generator)
    dense *= torch.rand(1, 1, 10, 12, generator=generator) < 0.5
    features = {(h, w): dense[0, :, h, w] for h in range(10) for w in range(12)
                if dense[0, :, h, w].abs().sum() > 0}

    expected = sparse_conv(features, kernel, bias, size, stride)
    weight = sparse_to_dense_kernel(kernel)
    assert weight.shape == ((c_out, 1, size, size) if depthwise else (c_out, c_in, size, size))
    padding = size // 2 if size % 2 else 0
    got = F.conv2d(dense, weight, bias, stride=stride, padding=padding,
                   groups=c_in if depthwise else 1)
    assert len(expected) > 10
    for (h, w), value in expected.items():
        torch.testing.assert_close(got[0, :, h // stride, w // stride], value,
                                   rtol=1e-5, atol=1e-5)
    # the kernel-volume order matters: reading it with W fastest gives another result
    swapped = weight.transpose(-1, -2)
    wrong = F.conv2d(dense, swapped, bias, stride=stride, padding=padding,
                     groups=c_in if depthwise else 1)
    assert (wrong - got).abs().max() > 0.5


def test_sparse_kernel_shape_errors_name_the_key():
    with pytest.raises(ValueError, match=r'stages\.0\.0\.dwconv\.kernel: kernel volume 27'):
        convert_checkpoint({'encoder.stages.0.0.dwconv.kernel': torch.zeros(27, 8)})


# ---------------------------------------------------------------------------------------------
# timm layout (timm-hub CLIP and DINOv3 weights; the open_clip trunk)


def to_timm(model):
    """``model``'s backbone in timm's ConvNeXt names."""
    renamed = {}
    for key, value in backbone_state(model).items():
        parts = key.split('.')
        if parts[0] == 'downsample_layers':
            head = 'stem' if parts[1] == '0' else f'stages.{parts[1]}.downsample'
            key = '.'.join([head] + parts[2:])
        else:  # stages.i.j.<module>.<param>
            module = {'dwconv': 'conv_dw', 'pwconv1': 'mlp.fc1', 'pwconv2': 'mlp.fc2',
                      'grn': 'mlp.grn'}.get(parts[3], parts[3])
            param = {'gamma': 'weight', 'beta': 'bias'}[parts[4]] if parts[3] == 'grn' \
                else '.'.join(parts[4:])
            key = '.'.join([f'stages.{parts[1]}.blocks.{parts[2]}', module, param]).rstrip('.')
            if parts[3] == 'grn':
                value = value.flatten()
        renamed[key] = value
    return renamed


def shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


def timm_shapes(name, **kwargs):
    with torch.device('meta'):
        return shapes(timm.create_model(name, **kwargs).state_dict())


@pytest.fixture(scope='module')
def base():
    return ours('base')


def to_open_clip(model, embed_dim=640, width=640, layers=12, vocab=49408, context=77):
    """open_clip ``convnext_base_w``: the timm trunk (with its ``head.norm``) under
    ``visual.trunk.``, a bias-free linear projection, and the text tower (placeholders)."""
    c = model.dims[-1]
    state = {'visual.trunk.' + k: v for k, v in to_timm(model).items()}
    state['visual.trunk.head.norm.weight'] = torch.ones(c)
    state['visual.trunk.head.norm.bias'] = torch.zeros(c)
    state['visual.head.proj.weight'] = torch.randn(embed_dim, c)
    text = {'positional_embedding': (context, width), 'text_projection': (width, embed_dim),
            'logit_scale': (), 'token_embedding.weight': (vocab, width),
            'ln_final.weight': (width,), 'ln_final.bias': (width,)}
    for i in range(layers):
        block = f'transformer.resblocks.{i}.'
        text.update({block + 'ln_1.weight': (width,), block + 'ln_1.bias': (width,),
                     block + 'attn.in_proj_weight': (3 * width, width),
                     block + 'attn.in_proj_bias': (3 * width,),
                     block + 'attn.out_proj.weight': (width, width),
                     block + 'attn.out_proj.bias': (width,),
                     block + 'ln_2.weight': (width,), block + 'ln_2.bias': (width,),
                     block + 'mlp.c_fc.weight': (4 * width, width),
                     block + 'mlp.c_fc.bias': (4 * width,),
                     block + 'mlp.c_proj.weight': (width, 4 * width),
                     block + 'mlp.c_proj.bias': (width,)})
    state.update({k: placeholder(*shape) for k, shape in text.items()})
    return state


def to_timm_clip(model, embed_dim=640):
    """timm's hub copy ``convnext_base.clip_laion2b``: trunk, head.norm, projection as head.fc
    (with a zero bias)."""
    c = model.dims[-1]
    return {**to_timm(model), 'head.norm.weight': torch.ones(c), 'head.norm.bias': torch.zeros(c),
            'head.fc.weight': torch.randn(embed_dim, c), 'head.fc.bias': torch.zeros(embed_dim)}


def test_open_clip_layout_is_what_timm_reads(base):
    """timm's own filter turns our synthetic open_clip file into exactly the names and shapes
    of timm's convnext_base with a 640-d head (what ``convnext_base.clip_laion2b`` is)."""
    expected = timm_shapes('convnext_base', num_classes=640)
    assert shapes(checkpoint_filter_fn(to_open_clip(base), None)) == expected
    assert shapes(to_timm_clip(base)) == expected


def test_open_clip_round_trip(base):
    checkpoint = to_open_clip(base)
    assert_round_trip(base, checkpoint, 'open_clip (timm trunk)')
    ddp = {'state_dict': {'module.' + k: v for k, v in checkpoint.items()}}  # a training file
    assert sorted(convert_checkpoint(ddp)) == sorted(backbone_state(base))


def test_timm_hub_clip_round_trip(base):
    assert_round_trip(base, to_timm_clip(base), 'timm')


# ---------------------------------------------------------------------------------------------
# DINOv3 ConvNeXt: the official V1 layout plus the final ``norm`` and ``norms`` (3 Identity and
# the final norm again, so ``norms.3.*`` == ``norm.*``); timm's hub copy in timm's layout.


@pytest.fixture(scope='module')
def tiny():
    return ours('tiny')


def to_dinov3(model):
    c = model.dims[-1]
    norm = {'weight': 1 + torch.rand(c), 'bias': torch.rand(c)}
    return {**backbone_state(model), **{f'norm.{k}': v for k, v in norm.items()},
            **{f'norms.3.{k}': v for k, v in norm.items()}}


def to_timm_dinov3(model):
    c = model.dims[-1]
    return {**to_timm(model), 'head.norm.weight': 1 + torch.rand(c),
            'head.norm.bias': torch.rand(c)}


def test_dinov3_layouts_are_what_timm_reads(tiny):
    with torch.device('meta'):  # what convnext_tiny.dinov3_lvd1689m is in timm
        reference = timm.create_model('convnext_tiny', num_classes=0)
    expected = shapes(reference.state_dict())
    assert shapes(checkpoint_filter_fn(to_dinov3(tiny), reference)) == expected
    assert shapes(to_timm_dinov3(tiny)) == expected


@pytest.mark.parametrize('write,layout', [(to_dinov3, 'DINOv3'), (to_timm_dinov3, 'timm')])
def test_dinov3_round_trip(tiny, write, layout):
    assert_round_trip(tiny, write(tiny), layout)


def test_existing_layouts_still_recognised(tiny):
    official = {'model': {**backbone_state(tiny), 'head.weight': torch.zeros(10, 768)}}
    assert detect_layout(official).name == 'official'
    # a detector: its heads must not decide the backbone's layout
    detector = {'state_dict': {**{'backbone.' + k: v for k, v in backbone_state(tiny).items()},
                               'roi_head.blocks.0.stem.0.weight': torch.zeros(1)}}
    assert detect_layout(detector).name == 'official'
    assert sorted(convert_checkpoint(detector)) == sorted(backbone_state(tiny))


def test_timm_hub_safetensors_loads_through_init_cfg(tiny, tmp_path, monkeypatch):
    """The Hugging Face hub copy of convnext_tiny.dinov3_lvd1689m is a model.safetensors."""
    from safetensors.torch import save_file
    path = tmp_path / 'model.safetensors'
    save_file({k: v.contiguous() for k, v in to_timm_dinov3(tiny).items()}, str(path))
    assert_loads_through_init_cfg(tiny, path, 'timm', monkeypatch)


def test_converters_refuse_views_larger_than_their_storage_before_copying():
    """A 4-byte storage viewed with stride 0 at shape (49, 2**24) would become 3.3 GB when a
    converter makes it contiguous: refused by name first, whatever handed the tensor over."""
    import resource

    from convnext_dense.checkpoint.layouts import convert_checkpoint, sparse_to_dense_kernel
    kernel = torch.zeros(1).expand(49, 1 << 24)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match=r'stages\.0\.0\.dwconv\.kernel: .* views '
                                         r'822083584 elements of a storage of 1'):
        convert_checkpoint({'encoder.stages.0.0.dwconv.kernel': kernel, 'mask_token': kernel})
    with pytest.raises(ValueError, match='views 822083584 elements'):
        sparse_to_dense_kernel(kernel)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB
    # a plain view inside its storage converts as before
    dense = sparse_to_dense_kernel(torch.arange(49 * 3.).reshape(49, 3))
    assert dense.shape == (3, 1, 7, 7) and dense[2, 0, 1, 0] == 1 * 3 + 2
