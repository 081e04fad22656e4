"""VariMix (Xiong et al. 2025): variety-guided bidirectional mixing through the ADM."""
from __future__ import annotations

from typing import Callable

import torch

from .._transfer import to_device
from ..ops import adm_mix
from ._base import Deferred, MixPolicy


class VariMix(MixPolicy):
    """``VariMix(num_classes, translator, alpha=1.0, ...)``.

    ``x_hat = translator(x, x[perm])`` is each image translated toward its partner's class
    (VariMix's StarGAN-v2 I2I generator, driven by the partner's style; any callable works).
    The absolute difference map thresholded at lam ~ Beta(alpha, alpha) gives the mask K of
    what the translation changed, and ``adm_mix`` writes both directions:
    ``x_src' = K x + (1 - K) x[perm]`` and ``x_ref' = K x[perm] + (1 - K) x``.

    Returns 2B images ``cat(x_src', x_ref')``. Soft targets follow the public training code:
    with area = mean(K), ``y_src' = area y + (1 - area) y[perm]`` and
    ``y_ref' = area y[perm] + (1 - area) y``, kept per sample (the public code averages the
    weights over the batch).
    """

    name = "varimix"

    def __init__(self, num_classes: int, translator: Callable, **kwargs):
        super().__init__(num_classes, **kwargs)
        if not callable(translator):
            raise TypeError(f"VariMix: translator must be callable(x_src, x_ref) -> x_hat, got "
                            f"{type(translator).__name__}")
        self.translator = translator

    def _sample(self, B, labels, rng, x, lam=None):
        return dict(perm=self.sample_partners(B, labels, rng), lam=self.sample_lam(B, rng, lam))

    def _mix(self, x, targets, labels, p):
        B = x.shape[0]
        perm = p["perm"]
        perm_dev = to_device(perm, x.device)
        with torch.no_grad():
            x_hat = self.translator(x, x.index_select(0, perm_dev))
        if not isinstance(x_hat, torch.Tensor) or x_hat.shape != x.shape:
            raise ValueError(f"VariMix: the translator must return images shaped like x {list(x.shape)}, "
                             f"got {getattr(x_hat, 'shape', type(x_hat).__name__)}")
        # both directions land in one [2B] tensor: no torch.cat copy of the output batch
        mixed, lam2, k = adm_mix(x, to_device(x_hat, x.device, x.dtype), perm_dev,
                                 self.host_float32(p["lam"]), return_mask=True, stacked=True,
                                 backend=self.backend, validate=False)
        area = 1.0 - lam2
        a = torch.arange(B)
        y = torch.cat([self.mix_targets(targets, None, perm, area),
                       self.mix_targets(targets, perm, a, area)])
        return dict(x=mixed, y=y, index_a=torch.cat([a, perm]),
                    index_b=torch.cat([perm, a]), weight_a=Deferred(torch.cat, [k, k]),
                    lam=torch.cat([area, area]), hard=True, x_hat=x_hat, mask=k)

    @classmethod
    def from_checkpoint(cls, path, num_classes: int, device: str = "cpu", *, mean=None, std=None,
                        **kwargs) -> "VariMix":
        """VariMix driven by a StarGAN-v2-lite checkpoint from ``medmix train-generator --kind i2i``
        (its EMA weights): ``x_hat = G(x, E(x[perm]))``. mean, std: the per-channel
        normalisation of the batches (both or neither); the generator works on [0, 1] images,
        so normalised batches are mapped there and back."""
        from ..models import load_generator

        gen = load_generator(path, device)
        if gen.config["num_classes"] != num_classes:
            raise ValueError(f"VariMix.from_checkpoint: {path} was trained for {gen.config['num_classes']} "
                             f"classes, not num_classes={num_classes}")
        return cls(num_classes, gen.translator(mean=mean, std=std), **kwargs)
