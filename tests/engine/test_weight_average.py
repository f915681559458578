"""The weight average a run is evaluated and saved as: the hand-computed mean, and a run that uses it."""

import json

import pytest
import torch

from inputs import tiny_config, tiny_synthetic
from rloss.data.folder import SegmentationFolder
from rloss.data.transforms import EvalTransform
from rloss.engine.infer import load_predictor
from rloss.engine.evaluation import evaluate
from rloss.engine.train import train
from rloss.engine.weight_average import WeightAverage


def _net():
    return torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))


def _set(net, value):
    with torch.no_grad():
        for tensor in net.state_dict().values():
            tensor.fill_(value)  # in place, as an optimizer step and a BatchNorm update are


def test_average_is_the_mean_then_an_exponential_average():
    net = _net()
    _set(net, 1.0)
    average = WeightAverage(net, horizon=2)
    for value, want in ((4.0, 4.0), (6.0, 5.0), (11.0, 8.0)):  # weights 1, 1/2, then 1/2 (the horizon)
        _set(net, value)
        average.update()
        state = average.model.state_dict()
        assert torch.allclose(state["0.weight"], torch.full((2, 2), want)), (value, state["0.weight"])
        assert torch.allclose(state["1.running_var"], torch.full((2,), want))
        assert state["1.num_batches_tracked"].item() == int(value)  # a counter is copied, not averaged
    assert average.updates == 3
    assert torch.equal(next(net.parameters()), torch.full((2, 2), 11.0)), "the net itself is untouched"
    assert not any(p.requires_grad for p in average.model.parameters())
    with pytest.raises(ValueError, match="horizon"):
        WeightAverage(net, horizon=0.5)


def test_run_is_evaluated_and_saved_as_its_average(tmp_path):
    data_root = tiny_synthetic(tmp_path / "data")
    final = train(tiny_config(data_root, tmp_path, "averaged", "optim.weight_average_epochs=1"))
    ckpt = torch.load(tmp_path / "averaged" / "checkpoint.pt", weights_only=True)
    assert ckpt["average_updates"] == ckpt["iteration"]
    differs = [k for k, v in ckpt["model"].items() if v.is_floating_point()
               and not torch.equal(v, ckpt["trained_model"][k])]
    assert differs, "the saved average equals the last iterate"
    # The run's final score is the saved model's (the average), scored again from the file.
    net = load_predictor(tmp_path / "averaged" / "checkpoint.pt", "cpu").model  # what inference loads
    val = SegmentationFolder(data_root, "val", transform=EvalTransform(32), require_scribbles=False)
    loader = torch.utils.data.DataLoader(val, batch_size=4, collate_fn=list)
    scores, _ = evaluate(net, loader, torch.device("cpu"), ckpt["num_classes"], ckpt["class_names"])
    assert scores["miou"] == pytest.approx(final["miou"], abs=1e-9)
    assert json.loads((tmp_path / "averaged" / "metrics.json").read_text())["final"] == final
