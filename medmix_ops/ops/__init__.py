"""Public fused ops. Each validates its arguments, picks a backend and calls the registered op."""
from .gaussian_blend import gaussian_blend

__all__ = ["gaussian_blend"]
