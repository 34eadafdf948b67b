"""Image similarity: SSIM (Wang et al. 2004) and PSNR, per image, in pure torch.

Used to put a number on how close one image batch comes to another: how much an inverted
image (:mod:`ownmark.attacks.invert`) resembles a key's trigger images, and later how
visible a stego scheme's embedding is (DeepStego).

:func:`ssim` follows Wang, Bovik, Sheikh and Simoncelli, "Image quality assessment: from
error visibility to structural similarity" (IEEE TIP 2004): an 11x11 Gaussian window with
sigma 1.5, K1 = 0.01, K2 = 0.03, data range 255, population (not sample) statistics, and
only the window positions that fit inside the image (no padding; like scikit-image's
``structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)``). Each
channel is scored on its own and the map is averaged over channels and positions, giving
one mean SSIM per image. :func:`psnr` is ``10 log10(255^2 / MSE)`` per image.

Written here because torchmetrics, kornia and scikit-image are not dependencies and the two
formulas are short. Both take uint8 or float images on the 0..255 scale, N×C×H×W.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Wang et al. 2004 constants.
WINDOW = 11
SIGMA = 1.5
K1 = 0.01
K2 = 0.03
DATA_RANGE = 255.0


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both batches as float64 N×C×H×W on the 0..255 scale, or ValueError."""
    if a.dim() != 4 or a.shape != b.shape:
        raise ValueError(
            f"expected two N×C×H×W batches of the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    return a.detach().to(torch.float64), b.detach().to(torch.float64)


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA) -> torch.Tensor:
    """The normalised 2-D Gaussian window (size×size, float64, sums to 1)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(
    a: torch.Tensor, b: torch.Tensor, *, window: int = WINDOW, sigma: float = SIGMA
) -> torch.Tensor:
    """Mean SSIM of each image pair (float64 tensor of N; 1.0 for identical images).

    Args:
        a, b: uint8 or float images on the 0..255 scale, N×C×H×W, the same shape.
        window: side of the Gaussian window (default 11; odd, at most the image's sides).
        sigma: the window's standard deviation (default 1.5).

    Raises:
        ValueError: different shapes, not 4-D, or images smaller than the window.
    """
    x, y = _pair(a, b)
    n, c, h, w = x.shape
    if window < 1 or window % 2 == 0 or window > min(h, w):
        raise ValueError(f"window must be odd and fit the {h}x{w} images, got {window}")
    if n == 0:
        return torch.empty(0, dtype=torch.float64)
    kernel = gaussian_window(window, sigma).expand(c, 1, window, window).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim_map.mean(dim=(1, 2, 3))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image pair in dB (float64 tensor of N; inf where
    the images are identical), data range 255.

    Raises:
        ValueError: different shapes or not 4-D.
    """
    x, y = _pair(a, b)
    mse = ((x - y) ** 2).flatten(1).mean(dim=1)
    out = 10 * torch.log10(DATA_RANGE**2 / mse)
    return torch.where(mse == 0, torch.full_like(out, math.inf), out)


def pairwise_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM of every image of ``a`` (N×C×H×W) with every image of ``b`` (M×C×H×W): N×M."""
    if a.dim() != 4 or b.dim() != 4 or a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"expected N×C×H×W batches of the same image shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return torch.empty(n, m, dtype=torch.float64)
    left = a.unsqueeze(1).expand(n, m, *a.shape[1:]).reshape(n * m, *a.shape[1:])
    right = b.unsqueeze(0).expand(n, m, *b.shape[1:]).reshape(n * m, *b.shape[1:])
    return ssim(left, right).reshape(n, m)
