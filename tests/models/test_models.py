"""DeepLabV3+ models: shapes, output stride, parameter groups, pretrained loading, checkpointing."""

import urllib.error

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rloss.models import MODEL_NAMES, PretrainedWeightsUnavailable, build_model

H, W = 65, 97  # odd sizes, not multiples of 16


def _ids(params):
    return [id(p) for p in params]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_builds_and_shapes_and_param_groups(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=5).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, H, W))
    assert y.shape == (1, 5, H, W)
    assert torch.isfinite(y).all()

    backbone, head = _ids(model.backbone_parameters()), _ids(model.head_parameters())
    assert len(set(backbone)) == len(backbone) and len(set(head)) == len(head)
    assert not set(backbone) & set(head)
    assert set(backbone) | set(head) == set(_ids(model.parameters()))
    assert backbone and head

    # channels_last must not break anything
    model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        y2 = model(torch.randn(1, 3, H, W).contiguous(memory_format=torch.channels_last))
    assert y2.shape == (1, 5, H, W)


def test_tiny_is_small_and_trains_on_batches():
    model = build_model("deeplabv3plus_tiny", num_classes=3)
    n = sum(p.numel() for p in model.parameters())
    assert n < 1_500_000
    y = model.train()(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 3, 64, 64)
    # micro: every width halved, so about a quarter of tiny's parameters.
    micro = build_model("deeplabv3plus_micro", num_classes=3)
    assert sum(p.numel() for p in micro.parameters()) < n / 3.5
    assert micro.train()(torch.randn(2, 3, 40, 40)).shape == (2, 3, 40, 40)


def _aspp_input_size(model, h, w):
    seen = {}

    def hook(module, inputs):
        seen["shape"] = inputs[0].shape  # returns None: the input is left unchanged

    handle = model.aspp.register_forward_pre_hook(hook)
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, h, w))
    handle.remove()
    return tuple(seen["shape"][-2:])


@pytest.mark.parametrize("output_stride", [16, 8])
def test_resnet_output_stride(output_stride):
    model = build_model("deeplabv3plus_resnet50", num_classes=2, output_stride=output_stride)
    h, w = 33, 49
    expect = (-(-h // output_stride), -(-w // output_stride))
    assert _aspp_input_size(model, h, w) == expect
    assert [b[0].dilation[0] for b in model.aspp.branches[1:4]] == (
        [6, 12, 18] if output_stride == 16 else [12, 24, 36])


@pytest.mark.parametrize("name", ["deeplabv3plus_mobilenet_v3_large", "deeplabv3plus_tiny", "deeplabv3plus_micro"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_other_backbones_output_stride(name, output_stride):
    model = build_model(name, num_classes=2, output_stride=output_stride)
    assert _aspp_input_size(model, H, W) == (-(-H // output_stride), -(-W // output_stride))


def test_unsupported_output_stride_and_bad_names():
    with pytest.raises(ValueError, match="output_stride"):
        build_model("deeplabv3plus_mobilenet_v3_large", 2, output_stride=4)
    with pytest.raises(ValueError) as e:
        build_model("deeplabv3plus_vgg", 2)
    for name in MODEL_NAMES:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="pretrained"):
        build_model("deeplabv3plus_tiny", 2, pretrained=True)


@pytest.mark.parametrize("ctor,name", [
    ("resnet50", "deeplabv3plus_resnet50"),
    ("mobilenet_v3_large", "deeplabv3plus_mobilenet_v3_large"),
])
def test_pretrained_from_weights_path(tmp_path, ctor, name):
    import torchvision

    torch.manual_seed(123)
    reference = getattr(torchvision.models, ctor)(weights=None)  # full net, classifier included
    with torch.no_grad():
        for p in reference.parameters():  # make the values distinctive
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / "backbone.pth"
    torch.save(reference.state_dict(), path)

    model = build_model(name, num_classes=3, pretrained=True, weights_path=path)
    loaded = model.backbone.net.state_dict()
    expected = reference.state_dict()
    assert loaded.keys() <= expected.keys()
    for k, v in loaded.items():
        assert torch.equal(v, expected[k]), k


def test_missing_and_corrupt_weights_path(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(PretrainedWeightsUnavailable, match="nope.pth"):
        build_model("deeplabv3plus_resnet50", 2, pretrained=True, weights_path=missing)

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(PretrainedWeightsUnavailable, match="corrupt.pth") as e:
        build_model("deeplabv3plus_mobilenet_v3_large", 2, pretrained=True, weights_path=corrupt)
    assert "deeplabv3plus_mobilenet_v3_large" in str(e.value)
    assert issubclass(PretrainedWeightsUnavailable, RuntimeError)


def test_wrong_state_dict_raises(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(3)}, path)
    with pytest.raises(PretrainedWeightsUnavailable, match="other.pth"):
        build_model("deeplabv3plus_resnet50", 2, pretrained=True, weights_path=path)


def _no_network(monkeypatch):
    calls = []

    def fail(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    monkeypatch.setattr("urllib.request.urlopen", fail)
    return calls


def test_pretrained_without_cache_or_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    calls = _no_network(monkeypatch)
    with pytest.raises(PretrainedWeightsUnavailable) as e:
        build_model("deeplabv3plus_resnet50", 2, pretrained=True)
    msg = str(e.value)
    assert "TORCH_HOME" in msg
    assert str(tmp_path / "hub" / "checkpoints") in msg
    assert "https://download.pytorch.org/models/resnet50" in msg
    assert "deeplabv3plus_resnet50" in msg and "weights_path" in msg and "pretrained=False" in msg
    assert calls, "the download should have been attempted (and stubbed)"


def test_pretrained_from_torch_home_cache(tmp_path, monkeypatch):
    import torchvision
    from torchvision.models import MobileNet_V3_Large_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    calls = _no_network(monkeypatch)
    ckpt_dir = tmp_path / "hub" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    filename = MobileNet_V3_Large_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    torch.manual_seed(7)
    reference = torchvision.models.mobilenet_v3_large(weights=None)
    torch.save(reference.state_dict(), ckpt_dir / filename)
    model = build_model("deeplabv3plus_mobilenet_v3_large", 2, pretrained=True)
    assert not calls
    for k, v in model.backbone.net.state_dict().items():
        assert torch.equal(v, reference.state_dict()[k]), k

    (ckpt_dir / filename).write_bytes(b"truncated")
    with pytest.raises(PretrainedWeightsUnavailable, match="TORCH_HOME"):
        build_model("deeplabv3plus_mobilenet_v3_large", 2, pretrained=True)


def test_gradients_reach_all_tiny_parameters():
    torch.manual_seed(0)
    model = build_model("deeplabv3plus_tiny", num_classes=4).train()
    x = torch.randn(2, 3, 64, 64)
    target = torch.randint(0, 4, (2, 64, 64))
    F.cross_entropy(model(x), target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def _loss_and_grads(checkpoint_backbone, train):
    torch.manual_seed(0)
    model = build_model("deeplabv3plus_tiny", num_classes=4, checkpoint_backbone=checkpoint_backbone)
    model.train(train)
    if train:
        model.aspp.project[-1].p = 0.0  # dropout off so the two runs are comparable
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 48, 56, generator=g)
    target = torch.randint(0, 4, (2, 48, 56), generator=g)
    loss = F.cross_entropy(model(x), target)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return loss.detach(), grads, buffers


@pytest.mark.parametrize("train", [False, True])
def test_checkpoint_backbone_matches(train):
    loss0, grads0, buf0 = _loss_and_grads(False, train)
    loss1, grads1, buf1 = _loss_and_grads(True, train)
    torch.testing.assert_close(loss1, loss0, rtol=1e-5, atol=1e-5)
    assert grads0.keys() == grads1.keys()
    for n in grads0:
        torch.testing.assert_close(grads1[n], grads0[n], rtol=1e-5, atol=1e-5, msg=n)
    # the recomputation in backward must not update BatchNorm running statistics a second time
    for n in buf0:
        torch.testing.assert_close(buf1[n], buf0[n], rtol=1e-6, atol=1e-6, msg=n)


def test_checkpoint_flag_is_used():
    model = build_model("deeplabv3plus_tiny", num_classes=2, checkpoint_backbone=True)
    assert model.checkpoint_backbone
    model.checkpoint_backbone = False
    assert not model.backbone.checkpoint


@pytest.mark.parametrize("in_size,out_size", [((4, 4), (16, 16)), ((16, 16), (64, 64)), ((3, 5), (40, 17)),
                                              ((33, 21), (7, 9)), ((1, 6), (5, 6))])
def test_resize_bilinear_is_torch_bilinear(in_size, out_size):
    # Values and gradients against F.interpolate's own kernel (the CPU path is two matrix products).
    from rloss.models.deeplabv3plus import resize_bilinear

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *in_size, dtype=torch.float64, generator=gen, requires_grad=True)
    weights = torch.randn(2, 3, *out_size, dtype=torch.float64, generator=gen)
    ours = resize_bilinear(x, out_size)
    torchs = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
    assert ours.shape == torchs.shape
    torch.testing.assert_close(ours, torchs, rtol=0, atol=1e-12)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    (grad_torchs,) = torch.autograd.grad((torchs * weights).sum(), x)
    torch.testing.assert_close(grad_ours, grad_torchs, rtol=0, atol=1e-12)


def test_resize_bilinear_after_inference_mode_still_trains():
    # Its matrices are cached: the first call under inference_mode must not leave inference tensors
    # behind for a later call that needs gradients.
    from rloss.models.deeplabv3plus import resize_bilinear

    with torch.inference_mode():
        resize_bilinear(torch.randn(1, 2, 7, 11), (23, 29))
    x = torch.randn(1, 2, 7, 11, requires_grad=True)
    resize_bilinear(x, (23, 29)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("side,dilation", [(4, 6), (6, 6), (7, 6), (4, 2), (3, 18)])
def test_atrous_conv_matches_full_kernel(side, dilation):
    # Leaving out the taps that only see padding must not change the output or any gradient.
    from rloss.models.deeplabv3plus import AtrousConv2d

    gen = torch.Generator().manual_seed(1)
    full = nn.Conv2d(5, 4, 3, padding=dilation, dilation=dilation, bias=True).double()
    atrous = AtrousConv2d(5, 4, 3, padding=dilation, dilation=dilation, bias=True).double()
    atrous.load_state_dict(full.state_dict())
    x = torch.randn(2, 5, side, side + 1, dtype=torch.float64, generator=gen, requires_grad=True)
    weights = torch.randn(2, 4, side, side + 1, dtype=torch.float64, generator=gen)
    outs, grads = [], []
    for conv in (full, atrous):
        out = conv(x)
        outs.append(out)
        grads.append(torch.autograd.grad((out * weights).sum(), [x, conv.weight, conv.bias]))
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-12)
    for ours, reference in zip(grads[1], grads[0]):
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    if side + 1 <= dilation:  # every off-centre tap sees only padding: its gradient is exactly zero
        off_centre = grads[1][1].clone()
        off_centre[:, :, 1, 1] = 0
        assert off_centre.abs().max() == 0
