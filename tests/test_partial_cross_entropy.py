import math

import pytest
import torch

from rloss import partial_cross_entropy


def test_mean_over_labeled_pixels_matches_hand_computation():
    # Two classes, logits (0, log 3) => p(class 1) = 3/4 everywhere.
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, 1] = math.log(3.0)
    scribbles = torch.tensor([[[0, 255], [1, 1]]])
    expected = (-math.log(1 / 4) - 2 * math.log(3 / 4)) / 3  # unlabeled pixel ignored
    assert partial_cross_entropy(logits, scribbles).item() == pytest.approx(expected, rel=1e-6)


def test_gradient_only_on_labeled_pixels():
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    scribbles = torch.full((2, 4, 5), 255)
    scribbles[0, 1, 2] = 2
    scribbles[1, 3, 4] = 0
    partial_cross_entropy(logits, scribbles).backward()
    touched = logits.grad.abs().sum(dim=1) > 0
    assert touched.sum() == 2 and touched[0, 1, 2] and touched[1, 3, 4]


def test_no_labeled_pixel_gives_zero_and_zero_gradient():
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    loss = partial_cross_entropy(logits, torch.full((2, 3, 3), 255))
    loss.backward()
    assert loss.item() == 0.0 and not torch.isnan(loss)
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_bfloat16_logits_computed_in_float32():
    logits = torch.randn(1, 3, 4, 4)
    scribbles = torch.randint(0, 3, (1, 4, 4))
    loss = partial_cross_entropy(logits.bfloat16(), scribbles)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(partial_cross_entropy(logits.bfloat16().float(), scribbles).item(), rel=1e-6)


@pytest.mark.parametrize(
    "logits, scribbles, message",
    [
        (torch.zeros(3, 4, 4), torch.zeros(3, 4, 4, dtype=torch.long), "logits must be"),
        (torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long), "scribbles must be"),
        (torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4), "integer class ids"),
        (torch.zeros(1, 3, 4, 4), torch.full((1, 4, 4), 7), "scribble class 7 is outside 0..2"),
    ],
)
def test_bad_inputs_raise_clear_errors(logits, scribbles, message):
    with pytest.raises(ValueError, match=message):
        partial_cross_entropy(logits, scribbles)
