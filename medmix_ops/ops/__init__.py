"""Public fused ops. Each validates its arguments, picks a backend and calls the registered op."""
from ._recycle import clear_output_cache
from .adm import adm_mask, adm_mix
from .gaussian_blend import gaussian_blend
from .patch_ratio_pool import patch_ratio_pool
from .saliency import saliency, saliency_from_model

__all__ = ["adm_mask", "adm_mix", "clear_output_cache", "gaussian_blend", "patch_ratio_pool",
           "saliency", "saliency_from_model"]
