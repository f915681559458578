"""DeepLabV3+ (Chen et al., ECCV 2018) on torchvision backbones or a tiny CPU backbone.

    image -> backbone -> (low-level features, stride 4; high-level features, stride OS)
    high  -> ASPP (1x1, three 3x3 atrous convs, image pooling; BN+ReLU each; 1x1 projection; dropout)
    low   -> 1x1 conv to 48 channels
    concat(upsampled ASPP output, projected low-level) -> 2x (3x3 conv-BN-ReLU) -> 1x1 classifier
    logits -> bilinear upsampling to the input size

Inputs are expected to be normalised with the ImageNet mean/std (as rloss.data.transforms does).
Any H, W works: strided convolutions round up, and every upsampling goes to an explicit size.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

MODEL_NAMES = (
    "deeplabv3plus_resnet50",
    "deeplabv3plus_resnet101",
    "deeplabv3plus_mobilenet_v3_large",
    "deeplabv3plus_tiny",
    "deeplabv3plus_micro",
)

# The two small CPU networks: backbone widths, then the ASPP, low-level projection and decoder widths.
# micro (half of tiny's widths, about a quarter of its parameters) takes half the time per step on a
# CPU and, on the built-in data, levels off within a schedule that fits the study's 20 minutes
# (benchmarks/README.md, "Converged runs in the built-in study").
_SMALL_NETS = {"deeplabv3plus_tiny": ((16, 32, 64, 128), 64, 24, 64),
               "deeplabv3plus_micro": ((8, 16, 32, 64), 32, 12, 32)}


class PretrainedWeightsUnavailable(RuntimeError):
    """The pretrained backbone weights could not be obtained (no file, no network, corrupt file)."""


def aspp_rates_for(output_stride: int) -> tuple[int, int, int]:
    """Atrous rates of the three 3x3 ASPP branches, scaled to the output stride."""
    if output_stride == 16:
        return (6, 12, 18)
    if output_stride == 8:
        return (12, 24, 36)
    raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1,
                  conv: type[nn.Conv2d] = nn.Conv2d) -> nn.Sequential:
    pad = dilation * (kernel - 1) // 2
    return nn.Sequential(
        conv(cin, cout, kernel, stride=stride, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


@functools.lru_cache(maxsize=64)
def _linear_interpolation_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (n_out, n_in) matrix of 1-D linear resampling as F.interpolate computes it with
    align_corners=False: source coordinate (i + 0.5) * n_in / n_out - 0.5, clamped at 0."""
    # Cached and shared, so never an inference tensor (one made under torch.inference_mode could
    # not be used by a later step that trains).
    with torch.inference_mode(False), torch.no_grad():
        src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        frac = src - lo
        matrix = torch.zeros(n_out, n_in, dtype=torch.float64)
        rows = torch.arange(n_out)
        matrix.index_put_((rows, lo), 1 - frac, accumulate=True)
        matrix.index_put_((rows, hi), frac, accumulate=True)
        return matrix.to(device=device, dtype=dtype)


def resize_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)``; on the CPU as two matrix products.

    Bilinear resampling is separable, ``A_h X A_w^T``, and on the CPU the two products (forward and
    backward) are several times faster than PyTorch's bilinear kernel, whose backward dominates at
    the tiny model's sizes (benchmarks/README.md, "Exact speed-ups of the tiny model"). The values
    agree to float rounding (tests/models/test_models.py). Other devices use F.interpolate.
    """
    height, width = int(size[0]), int(size[1])
    if x.device.type != "cpu" or x.dim() != 4:
        return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    rows = _linear_interpolation_matrix(x.shape[-2], height, dtype, x.device)
    cols = _linear_interpolation_matrix(x.shape[-1], width, dtype, x.device)
    return torch.matmul(torch.matmul(rows, x), cols.t())


class AtrousConv2d(nn.Conv2d):
    """A "same"-padded dilated convolution that leaves out the kernel taps that only see padding.

    When the dilation is at least the map's height (width), every tap off the kernel's centre row
    (column) lands in the zero padding at every position, so convolving with the centre row
    (column) alone gives the same output and the same gradients (zero for the dropped taps). ASPP
    on small crops is that case: rates 6-18 on the 4x4 maps of 64 px crops, where the three atrous
    branches become 1x1 convolutions (a ninth of the work). Parameters are those of nn.Conv2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        same = not isinstance(self.padding, str) and kh % 2 == 1 and kw % 2 == 1 and all(
            p == d * (k - 1) // 2 for p, d, k in zip(self.padding, self.dilation, self.kernel_size))
        drop_rows = kh > 1 and x.shape[-2] <= self.dilation[0]
        drop_cols = kw > 1 and x.shape[-1] <= self.dilation[1]
        if not (same and self.stride == (1, 1) and self.padding_mode == "zeros" and (drop_rows or drop_cols)):
            return super().forward(x)
        weight = self.weight
        if drop_rows:
            weight = weight[:, :, kh // 2: kh // 2 + 1, :]
        if drop_cols:
            weight = weight[:, :, :, kw // 2: kw // 2 + 1]
        padding = (0 if drop_rows else self.padding[0], 0 if drop_cols else self.padding[1])
        return F.conv2d(x, weight, self.bias, 1, padding, self.dilation, self.groups)


# --------------------------------------------------------------------------------------------
# Head
# --------------------------------------------------------------------------------------------


class ASPPPooling(nn.Module):
    """Image-level features: global average pool, 1x1 conv-BN-ReLU, broadcast back to H x W.

    BatchNorm here sees one value per channel and image, so training needs a batch of >= 2.
    """

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = self.relu(self.bn(self.conv(F.adaptive_avg_pool2d(x, 1))))
        # Upsampling a 1x1 map bilinearly is a broadcast; expand keeps it cheap.
        return y.expand(-1, -1, h, w)


class ASPP(nn.Module):
    def __init__(self, cin: int, cout: int = 256, rates: Sequence[int] = (6, 12, 18), dropout: float = 0.5):
        super().__init__()
        branches = [_conv_bn_relu(cin, cout, kernel=1)]
        branches += [_conv_bn_relu(cin, cout, kernel=3, dilation=r, conv=AtrousConv2d) for r in rates]
        branches.append(ASPPPooling(cin, cout))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(cout * len(branches), cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


class Decoder(nn.Module):
    """Low-level projection, fusion with the upsampled ASPP output, two 3x3 conv-BN-ReLU."""

    def __init__(self, low_channels: int, aspp_channels: int, low_proj_channels: int = 48, channels: int = 256):
        super().__init__()
        self.low_proj = _conv_bn_relu(low_channels, low_proj_channels, kernel=1)
        self.fuse = nn.Sequential(
            _conv_bn_relu(aspp_channels + low_proj_channels, channels),
            _conv_bn_relu(channels, channels),
        )

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        low = self.low_proj(low)
        high = resize_bilinear(high, low.shape[-2:])
        return self.fuse(torch.cat([high, low], dim=1))


# --------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------


class Backbone(nn.Module):
    """Wraps a network (``self.net``, keeping its own parameter names) as a list of stages.

    ``stages`` lists, per stage, the child names of ``net`` run in order; the output of stage
    ``low_stage`` is the stride-4 low-level feature map, the output of the last stage is the
    high-level one. With ``checkpoint=True`` each stage is recomputed in the backward pass
    (torch.utils.checkpoint, use_reentrant=False) when training with gradients enabled.
    """

    def __init__(self, net: nn.Module, stages: Sequence[Sequence[str]], low_stage: int,
                 low_channels: int, out_channels: int, checkpoint: bool = False):
        super().__init__()
        self.net = net
        self.stage_names = [list(s) for s in stages]
        self.low_stage = low_stage
        self.low_channels = low_channels
        self.out_channels = out_channels
        self.checkpoint = checkpoint

    def _stage_modules(self, i: int) -> list[nn.Module]:
        return [self.net.get_submodule(name) for name in self.stage_names[i]]

    def _run_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        modules = self._stage_modules(i)

        def run(t: torch.Tensor) -> torch.Tensor:
            for m in modules:
                t = m(t)
            return t

        if not (self.checkpoint and self.training and torch.is_grad_enabled()):
            return run(x)
        return checkpoint(_once_for_batchnorm(modules, run), x, use_reentrant=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = None
        for i in range(len(self.stage_names)):
            x = self._run_stage(i, x)
            if i == self.low_stage:
                low = x
        return low, x


def _once_for_batchnorm(modules: list[nn.Module], fn: Callable[[torch.Tensor], torch.Tensor]):
    """Make the checkpoint recomputation leave BatchNorm running statistics untouched.

    The first call (forward) updates them as usual; later calls (recomputation in backward)
    restore them afterwards, so a checkpointed step updates them exactly once.
    """
    bns = [m for mod in modules for m in mod.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    calls = [0]

    def wrapped(x: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == 1 or not bns:
            return fn(x)
        saved = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
                 for m in bns]
        try:
            return fn(x)
        finally:  # also runs when checkpoint stops the recomputation early
            with torch.no_grad():
                for m, bufs in zip(bns, saved):
                    live = [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
                    for dst, src in zip(live, bufs):
                        dst.copy_(src)

    return wrapped


class TinyNet(nn.Module):
    """A small plain CNN: stride-4 features (32 ch) and stride-16 (or dilated stride-8) features (128 ch)."""

    def __init__(self, output_stride: int = 16, widths: Sequence[int] = (16, 32, 64, 128), in_channels: int = 3):
        super().__init__()
        c0, c1, c2, c3 = widths
        s3, d3 = (2, 1) if output_stride == 16 else (1, 2)
        self.stem = nn.Sequential(_conv_bn_relu(in_channels, c0, stride=2), _conv_bn_relu(c0, c0))  # /2
        self.layer1 = nn.Sequential(_conv_bn_relu(c0, c1, stride=2), _conv_bn_relu(c1, c1))   # /4
        self.layer2 = nn.Sequential(_conv_bn_relu(c1, c2, stride=2), _conv_bn_relu(c2, c2))   # /8
        self.layer3 = nn.Sequential(_conv_bn_relu(c2, c3, stride=s3),                          # /16 or /8
                                    _conv_bn_relu(c3, c3, dilation=d3))
        self.low_channels, self.out_channels = c1, c3


def _dilate_after(blocks: Sequence[nn.Module], output_stride: int, input_stride: int = 1) -> None:
    """Turn strided convolutions beyond ``output_stride`` into dilated ones, in place.

    Walks ``blocks`` in order tracking the stride; once it has reached ``output_stride``, a conv
    with stride 2 gets stride 1 and every later conv with a kernel > 1 gets its dilation (and
    padding) multiplied, keeping the receptive field and the pretrained weights valid.
    """
    stride, dilation = input_stride, 1
    for block in blocks:
        for m in block.modules():
            if not isinstance(m, nn.Conv2d):
                continue
            s = m.stride[0]
            if s > 1:
                if stride * s > output_stride:
                    dilation *= s
                    m.stride = (1, 1)
                else:
                    stride *= s
            k = m.kernel_size[0]
            if k > 1 and dilation > 1:
                m.dilation = (dilation, dilation)
                m.padding = (dilation * (k - 1) // 2,) * 2


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


class DeepLabV3Plus(nn.Module):
    def __init__(self, backbone: Backbone, num_classes: int, output_stride: int = 16,
                 aspp_channels: int = 256, low_proj_channels: int = 48, decoder_channels: int = 256,
                 dropout: float = 0.5, aspp_rates: Sequence[int] | None = None):
        super().__init__()
        self.backbone = backbone
        self.output_stride = output_stride
        rates = tuple(aspp_rates) if aspp_rates is not None else aspp_rates_for(output_stride)
        self.aspp = ASPP(backbone.out_channels, aspp_channels, rates, dropout)
        self.decoder = Decoder(backbone.low_channels, aspp_channels, low_proj_channels, decoder_channels)
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)

    def forward(self, x: torch.Tensor, upsample: bool = True) -> torch.Tensor:
        """Logits at the input's size (bilinear), or with ``upsample=False`` the decoder's
        stride-4 logits, for callers that resize them with another mode (inference)."""
        size = x.shape[-2:]
        low, high = self.backbone(x)
        logits = self.classifier(self.decoder(low, self.aspp(high)))
        if not upsample:
            return logits
        return resize_bilinear(logits, size)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """ASPP, decoder and classifier (the parts usually trained with a 10x learning rate)."""
        for m in (self.aspp, self.decoder, self.classifier):
            yield from m.parameters()

    @property
    def checkpoint_backbone(self) -> bool:
        return self.backbone.checkpoint

    @checkpoint_backbone.setter
    def checkpoint_backbone(self, value: bool) -> None:
        self.backbone.checkpoint = bool(value)


# --------------------------------------------------------------------------------------------
# Pretrained weights
# --------------------------------------------------------------------------------------------

_FIX = ("Fix: download the file into {ckpt_dir} (e.g. on a machine with network access, or "
        "`curl -L -o {ckpt_dir}/{filename} {url}`), or pass weights_path=<local .pth file>, "
        "or build with pretrained=False.")


def _unwrap_state_dict(obj, source: str, model_name: str) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedWeightsUnavailable(
            f"{model_name}: {source} does not contain a state dict of tensors. "
            "Pass weights_path=<a torchvision ImageNet checkpoint> or use pretrained=False.")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def _obtain_state_dict(model_name: str, weights, weights_path) -> tuple[dict, str]:
    """The state dict from ``weights_path`` or via torchvision's weights API, and its source."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise PretrainedWeightsUnavailable(
                f"{model_name}: pretrained weights file {path} not found (weights_path). "
                f"Expected a torchvision ImageNet checkpoint such as {weights.url}. "
                "Fix: point weights_path at an existing file, drop weights_path to use the "
                "TORCH_HOME/hub/checkpoints cache, or use pretrained=False.")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise PretrainedWeightsUnavailable(
                f"{model_name}: could not load pretrained weights file {path} "
                f"({type(e).__name__}: {e}). The file may be corrupt or truncated; re-download "
                f"{weights.url}, or use pretrained=False.") from e
        return _unwrap_state_dict(obj, f"weights file {path}", model_name), str(path)

    url = weights.url
    filename = os.path.basename(urlparse(url).path)
    ckpt_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    cached = os.path.join(ckpt_dir, filename)
    torch_home = os.environ.get("TORCH_HOME", "<unset; default ~/.cache/torch>")
    where = (f"Looked in TORCH_HOME/hub/checkpoints = {ckpt_dir} (TORCH_HOME={torch_home}) "
             f"for {filename}")
    fix = _FIX.format(ckpt_dir=ckpt_dir, filename=filename, url=url)
    try:
        if os.path.isfile(cached):
            obj = torch.load(cached, map_location="cpu", weights_only=True)
        else:
            obj = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:
        state = "found but could not be loaded (corrupt?)" if os.path.isfile(cached) else \
            f"not cached, and downloading {url} failed"
        raise PretrainedWeightsUnavailable(
            f"{model_name}: pretrained ImageNet weights {weights} unavailable: {where}: {state} "
            f"({type(e).__name__}: {e}). {fix}") from e
    return _unwrap_state_dict(obj, f"weights {url} ({cached})", model_name), cached


def _load_backbone_weights(net: nn.Module, model_name: str, weights, weights_path,
                           drop_prefixes: Sequence[str]) -> None:
    state, source = _obtain_state_dict(model_name, weights, weights_path)
    state = {k: v for k, v in state.items() if not k.startswith(tuple(drop_prefixes))}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise PretrainedWeightsUnavailable(
            f"{model_name}: weights from {source} do not match the backbone ({e}). "
            f"Expected a torchvision checkpoint like {weights.url}; or use pretrained=False.") from e


# --------------------------------------------------------------------------------------------
# Input channels other than RGB
# --------------------------------------------------------------------------------------------


def adapt_input_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first convolution's RGB filters ``[O, 3, kh, kw]`` for ``in_channels`` inputs, by timm's
    documented rule (``adapt_input_conv``): 1 channel the sum of the three filters; more than 3 the RGB
    filters repeated cyclically over the channels (channel i gets filter i mod 3) and scaled by 3/C
    (2 channels too). Where C is 1 or a multiple of 3, bands that all equal one grey image give the
    response that image gives in RGB; other counts come close to it."""
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected RGB filters [O, 3, kh, kw], got {tuple(weight.shape)}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if in_channels == 3:
        return weight.clone()
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    return weight[:, [i % 3 for i in range(in_channels)]] * (3 / in_channels)


def _with_input_channels(conv: nn.Conv2d, in_channels: int, pretrained: bool) -> nn.Conv2d:
    """``conv`` (3 inputs) rebuilt with ``in_channels``: its pretrained filters adapted
    (:func:`adapt_input_weight`), else freshly initialised as torchvision initialises it."""
    if in_channels == 3:
        return conv
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None)
    with torch.no_grad():
        if pretrained:
            new.weight.copy_(adapt_input_weight(conv.weight, in_channels))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        else:
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            if new.bias is not None:
                nn.init.zeros_(new.bias)
    return new


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def _resnet_backbone(name: str, depth: int, pretrained: bool, output_stride: int, weights_path, ckpt: bool,
                     in_channels: int = 3):
    from torchvision.models import ResNet50_Weights, ResNet101_Weights, resnet50, resnet101

    dilation = {16: [False, False, True], 8: [False, True, True]}[output_stride]
    ctor, weights = {50: (resnet50, ResNet50_Weights.IMAGENET1K_V2),
                     101: (resnet101, ResNet101_Weights.IMAGENET1K_V2)}[depth]
    net = ctor(weights=None, replace_stride_with_dilation=dilation)
    del net.fc, net.avgpool
    if pretrained:
        _load_backbone_weights(net, name, weights, weights_path, drop_prefixes=("fc.",))
    net.conv1 = _with_input_channels(net.conv1, in_channels, pretrained)
    stages = [["conv1", "bn1", "relu", "maxpool", "layer1"], ["layer2"], ["layer3"], ["layer4"]]
    return Backbone(net, stages, low_stage=0, low_channels=256, out_channels=2048, checkpoint=ckpt)


def _mobilenet_backbone(name: str, pretrained: bool, output_stride: int, weights_path, ckpt: bool,
                        in_channels: int = 3):
    from torchvision.models import MobileNet_V3_Large_Weights, mobilenet_v3_large

    net = mobilenet_v3_large(weights=None)
    del net.classifier, net.avgpool
    if pretrained:
        _load_backbone_weights(net, name, MobileNet_V3_Large_Weights.IMAGENET1K_V1, weights_path,
                               drop_prefixes=("classifier.",))
    features = net.features
    features[0][0] = _with_input_channels(features[0][0], in_channels, pretrained)
    # Strides of features[i] outputs (checked with a dummy input): 0-1: /2, 2-3: /4, 4-6: /8,
    # 7-12: /16, 13-16: /32. Low-level = output of features[3] (24 ch, stride 4).
    _dilate_after(list(features), output_stride)
    n = len(features)
    stages = [[f"features.{i}" for i in range(0, 4)], [f"features.{i}" for i in range(4, 7)],
              [f"features.{i}" for i in range(7, 13)], [f"features.{i}" for i in range(13, n)]]
    return Backbone(net, stages, low_stage=0, low_channels=features[3].out_channels,
                    out_channels=features[-1].out_channels, checkpoint=ckpt)


def build_model(name: str, num_classes: int, pretrained: bool = False, output_stride: int = 16,
                weights_path: str | os.PathLike | None = None, checkpoint_backbone: bool = False,
                in_channels: int = 3) -> DeepLabV3Plus:
    """Build a DeepLabV3+ model by name (see MODEL_NAMES).

    pretrained: load ImageNet backbone weights from ``weights_path`` (a local state dict) or via
      torchvision's weights API (TORCH_HOME/hub/checkpoints cache, else download); any failure
      raises PretrainedWeightsUnavailable. Not available for ``deeplabv3plus_tiny`` and ``_micro``.
    output_stride: 16 or 8 (stride of the features fed to ASPP; rates scale accordingly).
    checkpoint_backbone: recompute backbone stages in backward (training only) to save memory.
    in_channels: the input's band count; with pretrained weights the first convolution's RGB filters
      are adapted (:func:`adapt_input_weight`), without them it is built with that many inputs.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    if output_stride not in (8, 16):
        raise ValueError(f"{name}: unsupported output_stride {output_stride!r}; supported: 8, 16")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be an integer >= 1, got {in_channels!r}")

    if name in _SMALL_NETS:
        if pretrained:
            raise ValueError(f"{name} has no pretrained weights; use pretrained=False")
        if weights_path is not None:
            raise ValueError(f"{name}: weights_path is only used with pretrained=True backbones")
        widths, aspp, low_proj, decoder = _SMALL_NETS[name]
        net = TinyNet(output_stride, widths, in_channels)
        backbone = Backbone(net, [["stem", "layer1"], ["layer2"], ["layer3"]], low_stage=0,
                            low_channels=net.low_channels, out_channels=net.out_channels,
                            checkpoint=checkpoint_backbone)
        return DeepLabV3Plus(backbone, num_classes, output_stride, aspp_channels=aspp,
                             low_proj_channels=low_proj, decoder_channels=decoder)

    if name == "deeplabv3plus_resnet50":
        backbone = _resnet_backbone(name, 50, pretrained, output_stride, weights_path, checkpoint_backbone, in_channels)
    elif name == "deeplabv3plus_resnet101":
        backbone = _resnet_backbone(name, 101, pretrained, output_stride, weights_path, checkpoint_backbone,
                                    in_channels)
    else:
        backbone = _mobilenet_backbone(name, pretrained, output_stride, weights_path, checkpoint_backbone, in_channels)
    return DeepLabV3Plus(backbone, num_classes, output_stride)
