"""SPMix (Wei et al.): saliency-guided, patch-based mixing for long-tailed data."""
from __future__ import annotations

import math

import numpy as np
import torch

from .._transfer import to_device
from .._validation import is_int, is_real
from ..ops import gaussian_blend, patch_ratio_pool, saliency
from ._base import MixPolicy, _host_rng, batch_class_counts


class SPMix(MixPolicy):
    """``SPMix(num_classes, patch=16, alpha=0.8, method="fine_grained", label="keep",
    partner="class_balanced", sigma=0.0, ...)``.

    A tail-class image is mixed with a head-class background, patch by patch: with saliency
    maps s_t, s_h, ``r = patch_ratio_pool(s_t, s_h, patch, alpha)`` (per patch
    ``min(alpha, max(level_t, level_h))`` in [0.5, alpha]), and the mixed image is
    ``r x_tail + (1 - r) x_head`` (hard patch edges; ``sigma`` > 0 softens them).

    - With ``partner="class_balanced"`` partners are drawn tail-biased, and each pair is
      oriented so that the rarer class in the batch is the tail (with multi-hot targets, the
      image whose rarest label is rarer; ``batch_class_counts``).
    - Otherwise every sample is the tail of its own pair.
    - ``label="keep"``: the tail's label (the paper). ``label="soft"``: ``mean(r)`` for the
      tail and the rest for the head.
    - ``alpha`` here is the ratio cap (the paper's alpha), not a Beta concentration.

    Feature-level SPMix for timm ViT / Swin models: ``SPMixFeatureHook``.
    """

    name = "spmix"
    uses_lam = False

    def __init__(self, num_classes: int, *, patch: int = 16, alpha: float = 0.8,
                 method: str = "fine_grained", label: str = "keep",
                 partner: str = "class_balanced", sigma: float = 0.0, **kwargs):
        if not is_real(alpha) or not 0 < alpha <= 1:
            raise ValueError(f"SPMix: alpha (the ratio cap) must be in (0, 1], got {alpha!r}")
        super().__init__(num_classes, alpha=1.0, partner=partner, **kwargs)
        if not is_int(patch) or patch < 1:
            raise ValueError(f"SPMix: patch must be an int >= 1, got {patch!r}")
        if label not in ("keep", "soft"):
            raise ValueError(f"SPMix: label must be 'keep' or 'soft', got {label!r}")
        if method not in ("fine_grained", "spectral_residual"):
            raise ValueError(f"SPMix: method must be 'fine_grained' or 'spectral_residual', got {method!r}")
        if not is_real(sigma) or not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"SPMix: sigma must be a finite number >= 0, got {sigma!r}")
        self.patch, self.ratio_cap, self.method = int(patch), float(alpha), method
        self.label, self.sigma = label, float(sigma)

    def _sample(self, B, labels, rng, x):
        perm = self.sample_partners(B, labels, rng)
        return dict(perm=perm, _pairs=self.pairs(labels, perm))

    def pairs(self, labels_host: torch.Tensor | None, perm: torch.Tensor):
        """(tail index, head index) per output row, int64 on the host: the partners themselves,
        or with class-balanced partners the rarer class of each pair as the tail (from the
        host labels that drew the partners). Host arithmetic: no device op, no sync."""
        a = np.arange(perm.shape[0])
        if self.partner != "class_balanced":
            return torch.from_numpy(a), perm
        pn = perm.numpy()
        counts = batch_class_counts(labels_host, self.num_classes)
        self_is_tail = counts <= counts[pn]
        return (torch.from_numpy(np.where(self_is_tail, a, pn)),
                torch.from_numpy(np.where(self_is_tail, pn, a)))

    def ratios(self, x: torch.Tensor, tail: torch.Tensor | None, head: torch.Tensor, patch: int):
        """Per-patch ratios [B, gh, gw], mean [B] and pixel map [B, 1, H, W] for the pairs
        (tail None: the batch in order, without a gathered copy of its maps)."""
        s = saliency(x, self.method, backend=self.backend)
        return patch_ratio_pool(s if tail is None else s[tail], s[head], patch, self.ratio_cap,
                                pad=True, expand=True, backend=self.backend)

    def _mix(self, x, targets, labels, p):
        tail, head = p.pop("_pairs")  # (host; internal, not kept in `last`)
        tail_d, head_d = to_device(tail, x.device), to_device(head, x.device)
        in_order = self.partner != "class_balanced"  # (pairs(): tail is then 0 .. B - 1)
        r, mean, pix = self.ratios(x, None if in_order else tail_d, head_d, self.patch)
        # x[tail], not index_select: advanced indexing keeps a channels_last batch channels_last
        anchor = x if in_order else x[tail_d]
        out, _, alpha = gaussian_blend(anchor, x, pix, self.sigma, b_index=head_d, return_alpha=True,
                                       backend=self.backend, validate=False)
        lam = torch.ones_like(mean) if self.label == "keep" else mean
        y = self.mix_targets(targets, tail_d, head_d, lam)
        return dict(x=out, y=y, index_a=tail, index_b=head, weight_a=alpha, lam=lam,
                    hard=False, ratios=r)


class SPMixFeatureHook:
    """Feature-level SPMix for timm ViT / Swin models: mixes the patch-embedding tokens.

        >>> hook = SPMixFeatureHook(model, SPMix(num_classes=7))
        >>> x, y_soft = hook(x, y)   # picks pairs, computes per-token ratios, arms the hook
        >>> logits = model(x)        # the next forward mixes model.patch_embed's output once

    Token grids follow ``model.patch_embed``: ViT's ``[B, N, C]`` tokens (no prefix tokens
    there) and Swin's ``[B, h, w, C]`` (or ``[B, C, h, w]``) maps. The ratios are pooled with the
    model's patch size. The mix is ``r f_tail + (1 - r) f_head``, differentiable in the
    features (gaussian_blend's fused backward). ``remove()`` detaches the hook.
    """

    def __init__(self, model: torch.nn.Module, policy: SPMix, module: torch.nn.Module | None = None):
        if not isinstance(policy, SPMix):
            raise TypeError(f"SPMixFeatureHook: policy must be an SPMix, got {type(policy).__name__}")
        self.module = module if module is not None else getattr(model, "patch_embed", None)
        if self.module is None:
            raise ValueError("SPMixFeatureHook: the model has no patch_embed; pass module=")
        ps = getattr(self.module, "patch_size", None)
        if ps is None:
            raise ValueError("SPMixFeatureHook: cannot read patch_size from the patch embedding")
        self.patch = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        self.policy = policy
        self._armed = None
        self._handle = self.module.register_forward_hook(self._mix_tokens)

    @torch.compiler.disable  # host draws and numpy bookkeeping, as MixPolicy.__call__
    def __call__(self, x, y, generator=None):
        p = self.policy
        checked = p._check_inputs(x, y, generator)
        B = x.shape[0]
        targets = p.targets_of(y, x.device, checked is not None)
        labels = y if y.dim() == 1 else y.argmax(dim=1)
        rng = _host_rng(generator)
        host = p._balance_labels(y, labels, checked)
        perm = p.sample_partners(B, host, rng) if B > 1 else torch.zeros(1, dtype=torch.long)
        tail, head = p.pairs(host, perm)
        tail_d, head_d = to_device(tail, x.device), to_device(head, x.device)
        r, mean, _ = p.ratios(x, tail_d, head_d, self.patch)
        self._armed = (tail_d, head_d, r)
        lam = torch.ones_like(mean) if p.label == "keep" else mean
        y_soft = p.mix_targets(targets, tail_d, head_d, lam)
        p.last = dict(applied=True, index_a=tail, index_b=head, ratios=r, lam=lam)
        return x, y_soft

    def _mix_tokens(self, module, inputs, output):
        if self._armed is None:
            return output
        tail, head, r = self._armed
        self._armed = None  # one forward pass per arming
        B, gh, gw = r.shape
        if output.dim() == 3:  # ViT tokens [B, N, C]
            feat = output.transpose(1, 2).reshape(B, -1, gh, gw)
            back = lambda f: f.reshape(B, -1, gh * gw).transpose(1, 2)  # noqa: E731
        elif output.dim() == 4 and output.shape[1:3] == (gh, gw):  # NHWC
            feat = output.permute(0, 3, 1, 2)
            back = lambda f: f.permute(0, 2, 3, 1)  # noqa: E731
        elif output.dim() == 4 and output.shape[2:] == (gh, gw):  # NCHW
            feat, back = output, (lambda f: f)
        else:
            raise ValueError(f"SPMixFeatureHook: patch embedding output {list(output.shape)} does "
                             f"not match the {gh} x {gw} ratio grid")
        mixed, _ = gaussian_blend(feat[tail], feat[head], r[:, None].to(feat.dtype), 0.0,
                                  backend=self.policy.backend, validate=False)
        return back(mixed).contiguous()

    def remove(self) -> None:
        self._handle.remove()
