"""Test inputs shared by several test modules (imported by name: test modules cannot import
from a conftest.py reliably, since notebooks/ has one too)."""

import torch
import torch.nn.functional as F

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def photo(name: str, size: int) -> torch.Tensor:
    """A scikit-image sample photo resized to size x size: float RGB 0..255, [1, 3, size, size]."""
    from skimage import data

    image = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1)[None].float()
    return F.interpolate(image, size=(size, size), mode="area").clamp(0, 255)


def smooth_probs(n: int, k: int, size: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Random softmax maps, smooth at 1/8 resolution like a network's output."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, max(1, size // 8), max(1, size // 8), generator=g, dtype=torch.float64) * 3
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False).softmax(1).to(dtype)


def dense_affinity(images: torch.Tensor, sigma_rgb, sigma_xy) -> torch.Tensor:
    """The full Gaussian affinity [N, P, P] in float64, computed directly from its definition, for
    images [N, C, H, W] or volumes [N, C, D, H, W]: exp(-|dpos / sigma_xy|^2 / 2 - |dvalue / sigma_rgb|^2 / 2)
    with one bandwidth or one per spatial axis (tensor order) and per channel."""
    n, c, *spatial = images.shape
    axes = torch.meshgrid(*[torch.arange(size, dtype=torch.float64) for size in spatial], indexing="ij")
    position = torch.stack([a.reshape(-1) for a in axes], dim=1)  # [P, axes], tensor order
    position = position / torch.as_tensor(sigma_xy, dtype=torch.float64).expand(len(spatial))
    a = []
    for i in range(n):
        value = images[i].double().reshape(c, -1).T / torch.as_tensor(sigma_rgb, dtype=torch.float64).expand(c)
        f = torch.cat([position, value], dim=1)
        a.append(torch.exp(-0.5 * ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1)))
    return torch.stack(a)


def randomise_classifier(checkpoint_path, data_root) -> None:
    """Rewrites a tiny run's checkpoint so that its predictions have several colours: a random
    classifier whose biases bring three classes level on average over the val images (a run of one
    epoch on 8 images predicts background everywhere)."""
    import numpy as np

    from rloss.data.folder import SegmentationFolder
    from rloss.engine.infer import load_predictor

    ckpt = torch.load(checkpoint_path, weights_only=True)
    weight = [n for n, v in ckpt["model"].items() if v.dim() == 4 and v.shape[0] == ckpt["num_classes"]][-1]
    bias = weight[: -len("weight")] + "bias"
    ckpt["model"][weight] = torch.randn(ckpt["model"][weight].shape, generator=torch.Generator().manual_seed(0)) * 3
    torch.save(ckpt, checkpoint_path)
    val = SegmentationFolder(data_root, "val")
    preds = load_predictor(checkpoint_path, "cpu").predict([val.load(i).image for i in val.ids], return_probs=True)
    mean_logp = np.mean([np.log(p.probs + 1e-30).mean(axis=(1, 2)) for p in preds], axis=0)
    order = np.argsort(mean_logp)[::-1]
    ckpt["model"][bias] = ckpt["model"][bias].clone()
    for c in order[1:3]:
        ckpt["model"][bias][c] += float(mean_logp[order[0]] - mean_logp[c])
    torch.save(ckpt, checkpoint_path)


def tiny_synthetic(root):
    """The data set the training tests use: 40 px, 8 train and 4 val images."""
    from rloss.data.synthetic import generate_synthetic

    generate_synthetic(root, size=40, n_train=8, n_val=4, seed=0, progress=False)
    return root


def tiny_config(data_root, results, name, *extra):
    """A 2-epoch CPU run of the tiny network on 32 px crops, scored and saved as its last iterate (the
    tests read the weights it trained); ``extra`` ``--set`` items win."""
    from rloss.engine.config import load_config

    return load_config(None, [
        f"data.root={data_root}", "data.crop_size=32", "data.batch_size=4", "data.num_workers=0",
        "model.name=deeplabv3plus_tiny", "optim.epochs=2", "optim.weight_average_iters=0", "loss.kernel=exact",
        f"run.results_dir={results}", f"run.name={name}", "run.eval_every_epochs=1", "run.device=cpu",
        *extra,
    ])


def tiny_pce_config(data_root, results, name, *extra):
    """:func:`tiny_config` as a 1-epoch pCE run (2 iterations on 8 images)."""
    return tiny_config(data_root, results, name, "optim.epochs=1", "loss.type=pce", *extra)


def config_file(cfg, results):
    """``cfg`` written as ``<results>/<run name>.yaml``, what ``rloss train --config`` reads; returns its path."""
    from pathlib import Path

    path = Path(results) / f"{cfg.run.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cfg.to_yaml())
    return path


def last_line(stderr: str) -> str:
    """The last line a command wrote to stderr that is not blank (a progress bar's carriage returns split lines)."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()][-1]
