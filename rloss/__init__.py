"""rloss: weakly-supervised segmentation from scribbles with regularized losses.

Tang et al., "On Regularized Losses for Weakly-supervised CNN Segmentation", ECCV 2018.
"""

from .losses import DenseCRFLoss, KernelCutLoss, NormalizedCutLoss, partial_cross_entropy

__version__ = "0.1.0"

__all__ = ["DenseCRFLoss", "KernelCutLoss", "NormalizedCutLoss", "partial_cross_entropy", "__version__"]
