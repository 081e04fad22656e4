"""Pure-PyTorch float references: the definition of correct for every fused op, and the fallback
when the extension is not built. Short and obviously right rather than fast."""
from .gaussian_blend import gaussian_blend, gaussian_blur_mask, reflect_index

__all__ = ["gaussian_blend", "gaussian_blur_mask", "reflect_index"]
