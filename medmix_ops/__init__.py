"""medmix_ops: fused kernels for saliency- and generator-guided mixing augmentation.

    >>> from medmix_ops import gaussian_blend, saliency, patch_ratio_pool, adm_mix
    >>> out, lam = gaussian_blend(a, b, mask, sigma=3.0)
    >>> s = saliency(images, "fine_grained")

Backends: PyTorch reference, C++ CPU, CUDA and Triton; see medmix_ops._backend. Without a GPU,
Triton kernels run only in its interpreter: set TRITON_INTERPRET=1 before importing medmix_ops.

Attributes load on first use (PEP 562), so `import medmix_ops.cli` stays light and can decide
TRITON_INTERPRET before anything imports triton (torch._dynamo does, via torch.compiler).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "gaussian_blend": ("medmix_ops.ops", "gaussian_blend"),
    "saliency": ("medmix_ops.ops", "saliency"),
    "saliency_from_model": ("medmix_ops.ops", "saliency_from_model"),
    "patch_ratio_pool": ("medmix_ops.ops", "patch_ratio_pool"),
    "adm_mask": ("medmix_ops.ops", "adm_mask"),
    "adm_mix": ("medmix_ops.ops", "adm_mix"),
    "available_backends": ("medmix_ops._backend", "available_backends"),
    "extension_loaded": ("medmix_ops._backend", "extension_loaded"),
    "extension_error": ("medmix_ops._backend", "extension_error"),
    "ops": ("medmix_ops.ops", None),
    "reference": ("medmix_ops.reference", None),
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'medmix_ops' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    value = getattr(value, attr) if attr else value
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
