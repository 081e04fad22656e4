"""Pure-PyTorch float references: the definition of correct for every fused op, and the fallback
when the extension is not built. Short and obviously right rather than fast."""
from . import adm, saliency
from .gaussian_blend import gaussian_blend, gaussian_blur_mask, reflect_index
from .patch_ratio_pool import expand_ratios, patch_ratio_pool

__all__ = ["adm", "saliency", "gaussian_blend", "gaussian_blur_mask", "reflect_index",
           "patch_ratio_pool", "expand_ratios"]
