"""medmix_ops: fused kernels for saliency- and generator-guided mixing augmentation.

    >>> from medmix_ops import gaussian_blend
    >>> out, lam = gaussian_blend(a, b, mask, sigma=3.0)

Backends: PyTorch reference, C++ CPU, CUDA and Triton; see medmix_ops._backend.
"""
from ._backend import available_backends, extension_error, extension_loaded
from .ops import gaussian_blend

__version__ = "0.1.0"
__all__ = ["gaussian_blend", "available_backends", "extension_loaded", "extension_error"]
