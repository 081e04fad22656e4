"""MedDiffuseMix: saliency-aware generative mixing that preserves the diagnostic evidence."""
from __future__ import annotations

import math
from typing import Callable

import torch

from .._transfer import to_device
from .._validation import is_real
from ..ops import gaussian_blend, saliency_from_model
from ._base import MixPolicy


def top_fraction(s: torch.Tensor, q: float) -> torch.Tensor:
    """[B, 1, H, W] -> float mask of the top-q fraction of each map (ties kept), on device."""
    B = s.shape[0]
    flat = s.reshape(B, -1)
    k = max(1, int(round(q * flat.shape[1])))
    thr = flat.topk(k, dim=1).values[:, -1:]
    return (flat >= thr).float().view_as(s)


class MedDiffuseMix(MixPolicy):
    """``MedDiffuseMix(num_classes, model, generator=None, q=0.3, sigma=4.0, kappa=0.5,
    on_fail="attenuate", saliency="gradient", strength=1.0, ...)``.

    1. Classifier saliency s of each image (``saliency_from_model``, for its own label).
       Its top-q fraction is the high-saliency, diagnostic region H.
    2. Content for the low-saliency region: ``generator(x, labels, keep_mask=H)``. That is the
       class-conditional DDPM's masked inpainting from ``medmix train-generator --kind ddpm``,
       or any callable returning images like x. Without a generator, the partner image.
    3. Adaptive ratio: ``beta = strength * (saliency mass inside H)``. Concentrated evidence
       lets more of the background change; the background becomes
       ``beta * content + (1 - beta) * x``.
    4. Gaussian boundary blending (``gaussian_blend``, ``sigma``) keeps H from the original.
    5. Saliency preservation: the top-q region of the mixed image's saliency must overlap H
       with IoU >= kappa. Otherwise the sample is attenuated (halfway back to the original) or
       rejected (the original kept), per ``on_fail``. ``policy.last["counts"]`` holds
       ``[passed, attenuated, rejected]`` as a device tensor (no sync).

    Labels are preserved (only the background changes).
    """

    name = "meddiffusemix"
    uses_lam = False

    def __init__(self, num_classes: int, model: torch.nn.Module, generator: Callable | None = None, *,
                 q: float = 0.3, sigma: float = 4.0, kappa: float = 0.5, on_fail: str = "attenuate",
                 saliency: str = "gradient", layer=None, strength: float = 1.0, **kwargs):
        super().__init__(num_classes, **kwargs)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"MedDiffuseMix: model must be the classifier (nn.Module), got {type(model).__name__}")
        if generator is not None and not callable(generator):
            raise TypeError(f"MedDiffuseMix: generator must be callable(x, labels, keep_mask) or None, "
                            f"got {type(generator).__name__}")
        for name, v, lo, hi in (("q", q, 0.0, 1.0), ("kappa", kappa, 0.0, 1.0), ("strength", strength, 0.0, 1.0)):
            if not is_real(v) or not lo <= v <= hi:
                raise ValueError(f"MedDiffuseMix: {name} must be in [{lo}, {hi}], got {v!r}")
        if q == 0:
            raise ValueError("MedDiffuseMix: q must be > 0 (the kept diagnostic fraction)")
        if not is_real(sigma) or not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"MedDiffuseMix: sigma must be a finite number >= 0, got {sigma!r}")
        if on_fail not in ("attenuate", "reject"):
            raise ValueError(f"MedDiffuseMix: on_fail must be 'attenuate' or 'reject', got {on_fail!r}")
        if saliency not in ("gradient", "gradcam"):
            raise ValueError(f"MedDiffuseMix: saliency must be 'gradient' or 'gradcam', got {saliency!r}")
        self.model, self.generator = model, generator
        self.q, self.sigma, self.kappa, self.on_fail = float(q), float(sigma), float(kappa), on_fail
        self.saliency_method, self.layer, self.strength = saliency, layer, float(strength)

    def _sample(self, B, labels, rng, x):
        return dict(perm=self.sample_partners(B, labels, rng),
                    gen_seed=int(rng.integers(0, 2 ** 62)))

    def _saliency(self, x, labels):
        kw = {"layer": self.layer} if self.saliency_method == "gradcam" else {}
        # validate=False: the policy has range-checked the labels already (or its own
        # validate=False trusts them); a second check would cost a sync per call on a GPU
        return saliency_from_model(self.model, x, labels, self.saliency_method, backend=self.backend,
                                   validate=False, **kw)

    def _mix(self, x, targets, labels, p):
        if not x.dtype.is_floating_point:
            raise TypeError(f"MedDiffuseMix: x must be float (the classifier's input), got {x.dtype}")
        B = x.shape[0]
        perm = to_device(p["perm"], x.device)
        s = self._saliency(x, labels)
        keep = top_fraction(s, self.q)
        seg_b = None
        if self.generator is None:
            content, index_b = None, p["perm"]  # the partner, gathered inside the blend
        else:
            g = torch.Generator().manual_seed(p["gen_seed"])
            content = self.generator(x, labels, keep, generator=g)
            if isinstance(content, tuple):  # (images, lesion / segmentation masks)
                content, seg_b = content
            if not isinstance(content, torch.Tensor) or content.shape != x.shape:
                raise ValueError(f"MedDiffuseMix: the generator must return images shaped like x "
                                 f"{list(x.shape)}, got {getattr(content, 'shape', type(content).__name__)}")
            content, index_b = to_device(content, x.device, x.dtype), torch.full((B,), -1)
        mass = s.flatten(1).sum(1).clamp_min(1e-12)
        beta = (self.strength * (s * keep).flatten(1).sum(1) / mass).clamp(0, 1)
        H, W = x.shape[-2:]
        beta_map = beta.view(B, 1, 1, 1).expand(B, 1, H, W)
        # background = beta * content + (1 - beta) * x
        if content is None:
            background, _ = gaussian_blend(x, x, 1 - beta_map, 0.0, b_index=perm, backend=self.backend,
                                           validate=False)
        else:
            background, _ = gaussian_blend(content, x, beta_map, 0.0, backend=self.backend,
                                           validate=False)
        mixed, _, alpha = gaussian_blend(x, background, keep, self.sigma, return_alpha=True,
                                         backend=self.backend, validate=False)
        weight = alpha + (1 - alpha) * (1 - beta_map)  # per-pixel weight of the original

        # Saliency preservation: the evidence must stay where it was.
        keep2 = top_fraction(self._saliency(mixed, labels), self.q)
        inter = (keep * keep2).flatten(1).sum(1)
        union = ((keep + keep2) > 0).float().flatten(1).sum(1)
        iou = inter / union.clamp_min(1)
        fail = (iou < self.kappa).view(B, 1, 1, 1)
        if self.on_fail == "attenuate":
            att, _ = gaussian_blend(x, mixed, torch.full_like(keep, 0.5), 0.0, backend=self.backend,
                                    validate=False)
            mixed = torch.where(fail, att, mixed)
            weight = torch.where(fail, 0.5 + 0.5 * weight, weight)
        else:
            mixed = torch.where(fail, x, mixed)
            weight = torch.where(fail, torch.ones_like(weight), weight)
        failed = fail.view(B).long().sum()
        counts = torch.stack([B - failed, failed if self.on_fail == "attenuate" else 0 * failed,
                              failed if self.on_fail == "reject" else 0 * failed])
        a = torch.arange(B)
        return dict(x=mixed, y=targets, index_a=a, index_b=index_b, weight_a=weight,
                    lam=torch.ones(B, device=x.device), hard=False, seg_b=seg_b, saliency=s,
                    keep_mask=keep, beta=beta, iou=iou, counts=counts)
