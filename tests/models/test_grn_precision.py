"""ConvNeXt V2's GRN on fp16 activations: the spatial norm is taken in float32, so activations
whose fp16 norm (and sum of squares) overflows still give a finite output equal to float32's."""
import pytest
import torch

from convnext_dense.models.backbones.convnext import GRN


def _grn(channels: int) -> GRN:
    torch.manual_seed(0)
    grn = GRN(channels)
    with torch.no_grad():
        grn.gamma.normal_(0, 0.5)
        grn.beta.normal_(0, 0.5)
    return grn


def _large_activations(channels: int) -> torch.Tensor:
    """(2, 24, 24, C) fp16 with per-channel scales up to 3000: norms up to about 72000."""
    torch.manual_seed(1)
    scale = torch.linspace(1.0, 3000.0, channels)
    return (torch.randn(2, 24, 24, channels) * scale).half()


@pytest.mark.parametrize('half_params', [False, True], ids=['fp32-params', 'fp16-params'])
def test_grn_fp16_is_finite_and_matches_fp32(half_params):
    channels = 16
    grn = _grn(channels)
    x = _large_activations(channels)
    reference = _grn(channels)(x.float())
    assert torch.isinf(torch.linalg.vector_norm(x, dim=(1, 2))).any()  # an fp16 norm overflows
    if half_params:
        grn = grn.half()
    out = grn(x)
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()
    # fp16 keeps 11 significant bits: each element within a few 1e-3 of the magnitude of the
    # terms it sums (x and gamma * x * relative, up to ~2e4; they may cancel)
    terms = x.float().abs() + (reference - x.float()).abs()
    error = (out.float() - reference).abs()
    assert (error <= 2e-3 * terms + 1e-2).all(), (error / (terms + 1)).max()


def test_grn_fp16_backward_is_finite_and_matches_fp32():
    """fp16 activations, fp32 gamma / beta (as under autocast): the parameter gradients, sums
    over the whole map (here ~3e6, beyond fp16), come out finite and as in fp32."""
    grn, reference = _grn(16), _grn(16)
    x = _large_activations(16).requires_grad_()
    grn(x).float().sum().backward()
    assert x.grad.dtype == torch.float16 and torch.isfinite(x.grad).all()
    assert torch.isfinite(grn.gamma.grad).all() and torch.isfinite(grn.beta.grad).all()
    x32 = x.detach().float().requires_grad_()
    reference(x32).sum().backward()
    assert reference.gamma.grad.abs().max() > 65504
    # sums of fp16-rounded products that partly cancel: within 1e-3 of the largest gradient
    largest = reference.gamma.grad.abs().max().item()
    torch.testing.assert_close(grn.gamma.grad, reference.gamma.grad, rtol=0, atol=1e-3 * largest)
    torch.testing.assert_close(grn.beta.grad, reference.beta.grad, rtol=0, atol=0)
    torch.testing.assert_close(x.grad.float(), x32.grad, rtol=2e-3, atol=2e-3)


def test_grn_fp32_state_dict_layout_unchanged():
    grn = GRN(8)
    assert {k: tuple(v.shape) for k, v in grn.state_dict().items()} == {
        'gamma': (1, 1, 1, 8), 'beta': (1, 1, 1, 8)}
    x = torch.randn(2, 5, 5, 8)
    with torch.no_grad():
        grn.gamma.normal_()
        grn.beta.normal_()
    # the official formula in float32, unchanged
    gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(grn(x), grn.gamma * (x * nx) + grn.beta + x,
                               rtol=1e-6, atol=1e-6)
