"""Notebook 00's demonstration of the DenseCRF loss on a sample photo: its parameters checked.

    check_demo_parameters(photo, photo_size, sigma_rgb, sigma_xy, kernel, num_classes, descent_steps)
"""

from __future__ import annotations

from ..filtering import resolve_kernel
from .parameters import check_choice, check_integer, check_positive

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")  # scikit-image's RGB samples


def check_demo_parameters(photo: str, photo_size: int, sigma_rgb: float, sigma_xy: float, kernel: str,
                          num_classes: int, descent_steps: int) -> None:
    """One ValueError line naming the first parameter at fault."""
    check_choice("photo", photo, PHOTOS)
    check_integer("photo_size", photo_size, 8, 1024)
    check_positive("sigma_rgb", sigma_rgb)
    check_positive("sigma_xy", sigma_xy)
    resolve_kernel(kernel)  # the filtering layer's own check: "kernel must be one of ..."
    check_integer("num_classes", num_classes, 2)
    check_integer("descent_steps", descent_steps, 1)
