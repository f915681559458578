"""Scoring a model (mIoU, per-class IoU and pixel accuracy at each image's own resolution), and a
run's evaluations, recorded in metrics.json and the logger."""

from __future__ import annotations

import torch

from ..data.transforms import resize_logits
from ..metrics import ConfusionMatrix, confusion_matrix
from .checkpoint import write_metrics
from .device import autocast


@torch.no_grad()
def evaluate(model, loader, device, num_classes, class_names, amp="off", channels_last=False,
             num_examples: int = 0, per_image: list | None = None):
    """mIoU, per-class IoU and pixel accuracy of the predictions against the full masks, at each
    image's own resolution (the one definition the study uses, as ``rloss.engine.infer``): the network
    sees the image with its shorter side at the crop size, and its stride-4 logits are resized
    straight to the image's size (``EvalTransform``'s ``logit_mode``) before the argmax.

    ``loader`` yields lists of ``EvalTransform`` samples (``collate_fn=list``); images of one
    size run as one batch. Under ``torchrun`` each process evaluates its share of the split and
    the confusion matrices are summed, so every process gets the whole split's scores.
    Returns ``(scores, examples)``: ``examples`` holds the first ``num_examples`` images (of the
    first one's size) with their predictions, scribbles and masks (for logging). ``per_image``, a
    list, receives each image's own ``[K, K]`` confusion matrix in the loader's order (what a
    bootstrap over the images resamples: ``rloss.engine.sweep``).
    """
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes)
    examples: dict[str, list] = {"image": [], "prediction": [], "scribble": [], "mask": []}
    for samples in loader:
        by_size: dict[tuple, list[dict]] = {}
        for sample in samples:
            by_size.setdefault(tuple(sample["image"].shape), []).append(sample)
        for group in by_size.values():
            image = torch.stack([s["image"] for s in group]).to(device, non_blocking=True)
            if channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                logits = model(image, upsample=False)
            for sample, sample_logits in zip(group, logits.float()):
                h, w = sample["mask"].shape
                pred = resize_logits(sample_logits[None], h, w, sample["logit_mode"])[0].argmax(0).cpu()
                image_cm = confusion_matrix(pred[None], sample["mask"][None], num_classes, cm.ignore_index)
                cm.merge(image_cm)
                if per_image is not None:
                    per_image.append(image_cm.cpu().numpy())
                if len(examples["image"]) < num_examples and (
                        not examples["image"] or examples["mask"][0].shape == sample["mask"].shape):
                    raw = sample["image_raw"]  # W&B shows RGB: one band as grey, several as their first three
                    raw = raw[:3] if raw.shape[0] >= 3 else raw[:1].expand(3, -1, -1)
                    examples["image"].append(raw.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0))
                    examples["prediction"].append(pred)
                    examples["scribble"].append(sample["scribble"])
                    examples["mask"].append(sample["mask"])
    cm.all_reduce()
    model.train(was_training)
    return cm.scores(class_names), examples


def evaluate_run(run, show: bool = True) -> dict:
    """Scores ``run`` (the trainer's ``_Run``) on its validation share and records the scores in
    metrics.json and the logger; ``show`` writes them under the progress bar too."""
    cfg, p = run.cfg, run.progress
    epoch_number = _epochs_done(run)
    want = cfg.wandb.num_images if run.tracker.active else 0
    scores, examples = evaluate(run.scored, run.val_loader, run.device, run.num_classes, run.class_names, cfg.run.amp,
                                cfg.model.channels_last, num_examples=want)
    p.evals.append({"epoch": epoch_number, "iteration": p.iteration, **scores})
    if run.ctx.is_main:
        write_metrics(run)
        run.tracker.log({"val/miou": scores["miou"], "val/pixel_accuracy": scores["pixel_accuracy"],
                         **{f"val/iou/{k}": v for k, v in scores["per_class_iou"].items() if v is not None}},
                        step=p.iteration)
        if want:
            run.tracker.log_images(*(torch.stack(examples[k]).numpy() for k in ("image", "prediction", "scribble", "mask")),
                                   step=p.iteration)
    if show and run.bar is not None:
        run.bar.write(f"{cfg.run.name}: epoch {p.evals[-1]['epoch']} iteration {p.iteration} mIoU {scores['miou']:.4f}")
    return scores


def _epochs_done(run) -> int | float:
    """The passes over the training set so far: a whole number at an epoch's end, else to 3 decimals."""
    p = run.progress
    if p.position == 0 or p.position >= run.iters_per_epoch * run.batch:
        return p.epoch + (p.position > 0)
    return round(p.epoch + p.position / (run.iters_per_epoch * run.batch), 3)
