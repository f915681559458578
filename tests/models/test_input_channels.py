"""Models with other input band counts than RGB: the first convolution adapted from RGB weights
(timm's rule) and networks built with C inputs."""

import pytest
import torch
from torch import nn

from rloss.models import build_model
from rloss.models.deeplabv3plus import adapt_input_weight


def _small_rgb_conv() -> torch.Tensor:
    """Two 1x1 filters over R, G, B, with values easy to add by hand."""
    return torch.tensor([[1.0, 2.0, 4.0], [10.0, 20.0, 40.0]]).view(2, 3, 1, 1)


def test_one_channel_is_the_sum_of_the_rgb_filters():
    adapted = adapt_input_weight(_small_rgb_conv(), 1)
    assert adapted.shape == (2, 1, 1, 1)
    torch.testing.assert_close(adapted.flatten(), torch.tensor([7.0, 70.0]))


def test_more_channels_repeat_the_rgb_filters_cyclically_scaled_by_3_over_c():
    adapted = adapt_input_weight(_small_rgb_conv(), 4)
    # channels R, G, B, R, each x 3/4
    expected = torch.tensor([[1.0, 2.0, 4.0, 1.0], [10.0, 20.0, 40.0, 10.0]]) * 0.75
    torch.testing.assert_close(adapted.view(2, 4), expected)
    adapted = adapt_input_weight(_small_rgb_conv(), 7)
    expected = torch.tensor([[1.0, 2.0, 4.0, 1.0, 2.0, 4.0, 1.0]]) * (3 / 7)
    torch.testing.assert_close(adapted.view(2, 7)[0], expected[0])


def test_three_channels_are_unchanged_and_bad_shapes_are_refused():
    w = _small_rgb_conv()
    torch.testing.assert_close(adapt_input_weight(w, 3), w)
    with pytest.raises(ValueError, match="expected RGB filters"):
        adapt_input_weight(torch.zeros(2, 4, 1, 1), 1)
    with pytest.raises(ValueError, match="in_channels must be >= 1"):
        adapt_input_weight(w, 0)


def test_adapted_conv_answers_a_grey_image_as_the_rgb_conv_answers_it_in_rgb():
    # exact where C is 1 or a multiple of 3 (other counts weigh the repeated filters unevenly)
    rgb = nn.Conv2d(3, 5, 3, bias=False)
    grey = torch.rand(1, 1, 8, 8)
    expected = rgb(grey.expand(1, 3, 8, 8))
    for channels in (1, 6, 12):
        conv = nn.Conv2d(channels, 5, 3, bias=False)
        conv.weight.data = adapt_input_weight(rgb.weight.data, channels)
        torch.testing.assert_close(conv(grey.expand(1, channels, 8, 8)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["deeplabv3plus_tiny", "deeplabv3plus_micro"])
@pytest.mark.parametrize("channels", [1, 4, 13])
def test_small_networks_are_built_with_c_inputs(name, channels):
    model = build_model(name, 3, in_channels=channels).eval()
    assert model(torch.zeros(1, channels, 32, 32)).shape == (1, 3, 32, 32)


def test_pretrained_first_convolution_is_adapted_from_the_weights_file(tmp_path):
    from torchvision.models import mobilenet_v3_large

    state = mobilenet_v3_large(weights=None).state_dict()  # stands in for ImageNet's: any file of that layout
    torch.save(state, tmp_path / "weights.pth")
    rgb = state["features.0.0.weight"]
    for channels in (1, 4):
        model = build_model("deeplabv3plus_mobilenet_v3_large", 3, pretrained=True, in_channels=channels,
                            weights_path=tmp_path / "weights.pth")
        first = model.backbone.net.features[0][0]
        assert first.in_channels == channels
        torch.testing.assert_close(first.weight.data, adapt_input_weight(rgb, channels))
        expected = rgb.sum(1, keepdim=True) if channels == 1 else torch.cat([rgb, rgb[:, :1]], 1) * 0.75
        torch.testing.assert_close(first.weight.data, expected)
        other = {k: v for k, v in model.backbone.net.state_dict().items() if k != "features.0.0.weight"}
        assert all(torch.equal(v, state[k]) for k, v in other.items() if k in state)


def test_bad_in_channels_is_one_clear_error():
    with pytest.raises(ValueError, match="in_channels must be an integer >= 1, got 0"):
        build_model("deeplabv3plus_tiny", 3, in_channels=0)
