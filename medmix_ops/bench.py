"""`medmix bench`: every op and policy against the baselines a user would otherwise pick,
measured side by side in one run, with the device's copy bandwidth as the yardstick.

Per row: median / p20 / p80 time, images/s, achieved GB/s for the bytes the medmix op must read
and write (the same byte count for every provider of a group, so GB/s compare like for like), %
of the copy bandwidth measured in the same run, peak extra device memory (CUDA), minor page
faults per call (CPU), and for medmix rows the speed-up over each baseline of the group. Peers that are not installed are skipped with
a note, never faked.
"""
from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import _backend
from ._io import save_figure, write_json
from . import reference as ref
from .mix import CutMix, GenMix, Mixup, SaliencyMix, SPMix, VariMix
from .ops import adm_mask, adm_mix, gaussian_blend, patch_ratio_pool, saliency
from .reference.adm import varimix_public_loop

# Every benchmarked policy: on a GPU the labels live on the device and are trusted, as timm and
# the mixup package trust them (the default range check would add a host sync per call; on the
# CPU host labels are checked anyway, for free).
TRUSTED_LABELS = dict(validate=False)

GROUPS = ("gaussian_blend", "saliency_spectral_residual", "saliency_fine_grained", "saliency_gradient",
          "saliency_gradcam", "patch_ratio_pool", "adm_mix", "adm_mask_otsu", "policy_mixup",
          "policy_cutmix", "policy_saliencymix", "policy_spmix", "policy_varimix", "policy_genmix")


@dataclass
class Group:
    name: str
    config: str
    images: int
    bytes_moved: int
    providers: dict = field(default_factory=dict)   # name -> callable
    baselines: tuple = ()                            # provider names that are baselines
    notes: list = field(default_factory=list)
    # providers also timed back to back (each alone, many calls in a row) after the rounds
    back_to_back: tuple = ()


# ---- timing ---------------------------------------------------------------------------------------

def measure(fn: Callable, device: str, budget_s: float, max_reps: int, warmup: int = 2) -> list[float]:
    """Seconds per call of one function: CUDA events on a GPU (no host timer in the loop),
    perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (time.perf_counter() - start < budget_s or len(times) < 3):
        times.append(_time_call(fn, device))
    return times


def _time_call(fn: Callable, device: str) -> float:
    """Seconds of one call: CUDA events on a GPU, perf_counter on CPU."""
    if device == "cuda":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def minor_faults() -> int | None:
    """Minor page faults of this process so far (every thread, OpenMP workers included); None
    where getrusage is missing (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure_interleaved(providers: dict, device: str, budget_s: float, max_rounds: int,
                        warmup: int = 2, faults: dict | None = None) -> dict:
    """Times every provider of a group in rounds, one call each per round in a rotating order,
    so that a slow phase of a shared machine (page-fault storms, a noisy neighbour) hits every
    provider alike and the ratios stay meaningful. Returns {name: [seconds, ...]} and, for a
    provider that raised, {name: exception}.

    faults: a dict that receives {name: minor page faults per timed call} on a CPU. A fresh
    output that the allocator has handed back to the kernel in between is faulted in again on
    every call, page by page (glibc returns large freed blocks; a 19 MB image batch is ~4700
    pages): that, not the kernel, is what makes single CPU calls bimodal."""
    live, out = {}, {}
    for name, fn in providers.items():
        try:
            for _ in range(warmup):
                fn()
            live[name] = fn
            out[name] = []
        except Exception as e:  # noqa: BLE001 - a failing peer is reported, not fatal
            out[name] = e
    if device == "cuda":
        torch.cuda.synchronize()
    names = list(live)
    count_faults = faults is not None and device == "cpu" and minor_faults() is not None
    faulted = dict.fromkeys(names, 0)
    start, rounds = time.perf_counter(), 0
    while names and rounds < max_rounds and (time.perf_counter() - start < budget_s * len(names) or rounds < 3):
        k = rounds % len(names)
        for name in names[k:] + names[:k]:
            f0 = minor_faults() if count_faults else 0  # (outside the timed call)
            out[name].append(_time_call(live[name], device))
            if count_faults:
                faulted[name] += minor_faults() - f0
        rounds += 1
    if count_faults:
        faults.update({name: faulted[name] / len(out[name]) for name in names})
    return out


def measure_back_to_back(providers: dict, names, device: str, budget_s: float, max_reps: int) -> dict:
    """Median seconds per call of each named provider timed alone, call after call, after
    `BACK_TO_BACK_WARMUP` untimed calls: each in its own steady state, as a loop calling only
    it would see. On the 2-core VM behind the committed CPU results a fast multi-threaded op
    that follows another provider's Python-heavy, allocation-heavy call runs up to ~2x slower
    for its first ~25 ms of calls (adm_mix after the VariMix loop: 5.6 ms, settling to 3.0 ms;
    neither caches nor thread wake-up explain it: a cache flush costs 0.4 ms, a busy spin
    before the call does not help). The interleaved rounds, the headline figures, keep that
    penalty; these figures show the op without it. {name: seconds} of those that ran."""
    out = {}
    for name in names:
        fn = providers.get(name)
        if fn is None:
            continue
        try:
            out[name] = statistics.median(measure(fn, device, budget_s, max_reps, warmup=BACK_TO_BACK_WARMUP))
        except Exception:  # noqa: BLE001 - the interleaved rounds already reported it
            pass
    return out


BACK_TO_BACK_WARMUP = 10


def copy_bandwidth(device: str) -> float:
    """GB/s of a plain device-to-device copy (bytes read + written), the speed of light here."""
    n = (256 if device == "cuda" else 64) * 2 ** 20 // 4
    x = torch.rand(n, device=device)
    y = torch.empty_like(x)
    t = statistics.median(measure(lambda: y.copy_(x), device, 0.5, 50))
    return 2 * x.numel() * 4 / t / 1e9


def peak_extra_mb(fn: Callable, device: str):
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


# ---- the groups --------------------------------------------------------------------------------------

def _kernels(op: str, device: str) -> list[str]:
    """Compiled kernels only: the Triton interpreter is never timed."""
    return [k for k in _backend.available_backends(op, device)
            if k != "reference" and not (k == "triton" and device == "cpu")]


def _compiled(fn):
    try:
        return torch.compile(fn)
    except Exception:  # noqa: BLE001 - a missing compiler toolchain is a skipped peer
        return None


def build_groups(device: str, quick: bool, names=GROUPS) -> list[Group]:
    g = torch.Generator().manual_seed(0)
    cuda = device == "cuda"
    B = 128 if cuda else 32
    S = 224
    groups = []

    def images(b, c, s, dtype=torch.float32, scene=False):
        x = torch.rand(b, c, s, s, generator=g)
        if scene:  # smooth structure so saliency has something to find
            x = F.interpolate(torch.rand(b, c, s // 16, s // 16, generator=g), size=(s, s), mode="bicubic",
                              align_corners=False).clamp(0, 1) * 0.8 + 0.2 * x
        if dtype == torch.uint8:
            return (x * 255).round().to(torch.uint8).to(device)
        return x.to(device=device, dtype=dtype)

    def add(group):
        if group.name.split(" ")[0] in names:
            groups.append(group)

    # gaussian_blend: every size of the users' world in the full run
    blend_cases = [(B, 3, S, torch.float32, False)]
    if not quick:
        blend_cases = [(b, c, s, dt, cl) for b in ((32, 128, 256) if cuda else (32, 128)) for s in (224, 512)
                       for c in (1, 3) for dt in (torch.float32, torch.bfloat16, torch.uint8) for cl in (False, True)
                       if not (cl and c == 1)]
    for b, c, s, dt, cl in blend_cases:
        if "gaussian_blend" not in names:
            break
        a, bb = images(b, c, s, dt), images(b, c, s, dt)
        if cl:
            a, bb = a.contiguous(memory_format=torch.channels_last), bb.contiguous(memory_format=torch.channels_last)
        mask = torch.zeros(b, 1, s, s, device=device)
        mask[..., s // 4: 3 * s // 4, s // 5: 3 * s // 5] = 1
        es = a.element_size()
        grp = Group(f"gaussian_blend", f"B{b}x{c}x{s}x{s} {str(dt)[6:]}{' channels_last' if cl else ''} sigma=4",
                    b, 3 * a.numel() * es + mask.numel() * 4)
        for k in _kernels("gaussian_blend", device):
            grp.providers[f"medmix_{k}"] = (lambda k, a=a, bb=bb, mask=mask: lambda: gaussian_blend(
                a, bb, mask, 4.0, backend=k, validate=False))(k)
        # validate=False for every provider: the kernels are compared, not the mask's value
        # check (a min/max pass, and on a GPU a host sync, that a user's default call adds)
        grp.providers["reference_eager"] = lambda a=a, bb=bb, mask=mask: gaussian_blend(
            a, bb, mask, 4.0, backend="reference", validate=False)
        comp = _compiled(lambda a, bb, mask: ref.gaussian_blend(a, bb, mask, torch.full((a.shape[0],), 4.0, device=a.device), 12))
        if comp is not None and dt != torch.uint8:
            grp.providers["reference_compiled"] = lambda a=a, bb=bb, mask=mask, comp=comp: comp(a, bb, mask)
        if dt == torch.float32:
            try:
                import kornia

                grp.providers["kornia"] = lambda a=a, bb=bb, mask=mask: _blend_with(
                    kornia.filters.gaussian_blur2d(mask, (25, 25), (4.0, 4.0), border_type="reflect"), a, bb)
            except ImportError:
                grp.notes.append("kornia not installed")
            try:
                import torchvision.transforms.v2.functional as TF

                grp.providers["torchvision"] = lambda a=a, bb=bb, mask=mask: _blend_with(
                    TF.gaussian_blur(mask, [25, 25], [4.0, 4.0]), a, bb)
            except ImportError:
                grp.notes.append("torchvision not installed")
        grp.baselines = tuple(p for p in grp.providers if not p.startswith("medmix_"))
        add(grp)

    # saliency
    x8 = images(B, 3, S, torch.uint8, scene=True)
    for method in ("spectral_residual", "fine_grained"):
        name = f"saliency_{method}"
        if name not in names:
            continue
        grp = Group(name, f"B{B}x3x{S}x{S} uint8", B, x8.numel() + B * S * S * 4)
        for k in _kernels("saliency", device):
            grp.providers[f"medmix_{k}"] = (lambda k, m=method: lambda: saliency(x8, m, backend=k))(k)
        grp.providers["reference_eager"] = lambda m=method: saliency(x8, m, backend="reference")
        comp = _compiled(getattr(ref.saliency, method))
        if comp is not None:
            grp.providers["reference_compiled"] = lambda comp=comp: comp(x8)
        cv = _opencv_per_image(method)
        if cv is None:
            grp.notes.append("opencv-contrib not installed")
        else:
            grp.providers["opencv_per_image"] = lambda cv=cv: cv(x8)
        grp.baselines = tuple(p for p in grp.providers if not p.startswith("medmix_"))
        groups.append(grp)
    if "saliency_gradient" in names:
        gr = images(B, 3, S) - 0.5
        grp = Group("saliency_gradient", f"B{B}x3x{S}x{S} float32 sigma=3", B, gr.numel() * 4 + B * S * S * 4)
        for k in _kernels("saliency", device):
            grp.providers[f"medmix_{k}"] = (lambda k: lambda: saliency(gr, "gradient", backend=k))(k)
        grp.providers["reference_eager"] = lambda: saliency(gr, "gradient", backend="reference")
        comp = _compiled(ref.saliency.gradient)
        if comp is not None:
            grp.providers["reference_compiled"] = lambda comp=comp: comp(gr)
        grp.baselines = tuple(p for p in grp.providers if not p.startswith("medmix_"))
        groups.append(grp)
    if "saliency_gradcam" in names:
        A, G = images(B, 768, 7), images(B, 768, 7) - 0.5
        grp = Group("saliency_gradcam", f"B{B} acts 768x7x7 -> {S}x{S}", B, 2 * A.numel() * 4 + B * S * S * 4)
        for k in _kernels("saliency", device):
            grp.providers[f"medmix_{k}"] = (lambda k: lambda: saliency(A, "gradcam", grads=G, size=(S, S), backend=k))(k)
        grp.providers["reference_eager"] = lambda: saliency(A, "gradcam", grads=G, size=(S, S), backend="reference")
        comp = _compiled(ref.saliency.gradcam)
        if comp is not None:
            grp.providers["reference_compiled"] = lambda comp=comp: comp(A, G, (S, S))
        grp.baselines = tuple(p for p in grp.providers if not p.startswith("medmix_"))
        groups.append(grp)

    # patch_ratio_pool
    if "patch_ratio_pool" in names:
        sa, sb = images(B, 1, S), images(B, 1, S)
        grp = Group("patch_ratio_pool", f"B{B}x1x{S}x{S} patch 16, expanded", B, 3 * sa.numel() * 4)
        for k in _kernels("patch_ratio_pool", device):
            grp.providers[f"medmix_{k}"] = (lambda k: lambda: patch_ratio_pool(sa, sb, 16, expand=True, backend=k))(k)

        def composite(a, b):
            r, mean = ref.patch_ratio_pool(a, b, 16, 0.8)
            return r, mean, ref.expand_ratios(r, 16, (S, S))

        grp.providers["reference_eager"] = lambda: composite(sa, sb)
        comp = _compiled(composite)
        if comp is not None:
            grp.providers["reference_compiled"] = lambda comp=comp: comp(sa, sb)
        grp.baselines = tuple(p for p in grp.providers if not p.startswith("medmix_"))
        if device == "cpu":  # (the one CPU peer within 10% of it: both in their steady state too)
            grp.back_to_back = ("medmix_cpu", "reference_compiled")
        groups.append(grp)

    # adm
    xa = images(B, 3, S)
    xh = (xa + 0.2 * torch.randn(xa.shape, generator=g).to(device)).clamp(0, 1)
    perm = torch.randperm(B, generator=g).to(device)
    lam = torch.full((B,), 0.4, device=device)
    if "adm_mix" in names:
        grp = Group("adm_mix", f"B{B}x3x{S}x{S} float32", B, 4 * xa.numel() * 4)
        for k in _kernels("adm", device):
            grp.providers[f"medmix_{k}"] = (lambda k: lambda: adm_mix(xa, xh, perm, lam, backend=k, validate=False))(k)
        # one output buffer reused across calls (out=): what a loader that recycles its batch
        # memory gets; on a CPU it saves the first-touch page faults of a fresh 2B-image output
        buf = torch.empty((2 * B, 3, S, S), device=device)
        for k in _kernels("adm", device):
            grp.providers[f"medmix_{k}_out"] = (lambda k: lambda: adm_mix(
                xa, xh, perm, lam, out=buf, backend=k, validate=False))(k)
        grp.providers["reference_eager"] = lambda: adm_mix(xa, xh, perm, lam, backend="reference", validate=False)
        comp = _compiled(lambda a, b, p, l: ref.adm.adm_mix(a, b, p, l))
        if comp is not None:
            grp.providers["reference_compiled"] = lambda comp=comp: comp(xa, xh, perm, lam)
        grp.providers["varimix_loop"] = lambda: varimix_public_loop(xa, xh, perm, 0.4)
        grp.baselines = tuple(p for p in grp.providers if not p.startswith("medmix_"))
        if device == "cpu":
            # (the compiled reference too: whether its outputs fault decides its interleaved
            # time from one run to the next)
            grp.back_to_back = ("medmix_cpu", "medmix_cpu_out", "reference_compiled", "varimix_loop")
        groups.append(grp)
    if "adm_mask_otsu" in names:
        grp = Group("adm_mask_otsu", f"B{B}x3x{S}x{S} float32", B, 2 * xa.numel() * 4 + B * S * S * 4)
        for k in _kernels("adm", device):
            grp.providers[f"medmix_{k}"] = (lambda k: lambda: adm_mask(xa, xh, mode="otsu", backend=k))(k)
        grp.providers["reference_eager"] = lambda: adm_mask(xa, xh, mode="otsu", backend="reference")
        grp.baselines = ("reference_eager",)
        groups.append(grp)

    groups += _policy_groups(device, quick, names, g)
    return groups


def _blend_with(alpha, a, b):
    return alpha * a + (1 - alpha) * b, alpha.mean(dim=(1, 2, 3))


def _opencv_per_image(method):
    try:
        import cv2
    except ImportError:
        return None
    if not hasattr(cv2, "saliency"):
        return None
    make = {"spectral_residual": cv2.saliency.StaticSaliencySpectralResidual_create,
            "fine_grained": cv2.saliency.StaticSaliencyFineGrained_create}[method]
    det = make()

    def run(x):
        host = x.permute(0, 2, 3, 1).cpu().numpy()  # as SaliencyMix: numpy images, one at a time
        maps = [det.computeSaliency(np.ascontiguousarray(im[..., ::-1]))[1] for im in host]
        return torch.from_numpy(np.stack(maps)).to(x.device)

    return run


def _official_saliencymix(x, y_onehot, perm, lam):
    """The official SaliencyMix step: one OpenCV fine-grained map of the first partner (uint8
    numpy), its argmax, one box for the batch."""
    import cv2

    B, C, H, W = x.shape
    img = (x[perm[0]].permute(1, 2, 0).float().cpu().numpy() * 255).astype(np.uint8)
    ok, smap = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(img)
    cy, cx = np.unravel_index(np.argmax(smap), smap.shape)
    ratio = math.sqrt(1.0 - lam)
    ch, cw = int(H * ratio), int(W * ratio)
    y1, y2 = np.clip(cy - ch // 2, 0, H), np.clip(cy + ch // 2, 0, H)
    x1, x2 = np.clip(cx - cw // 2, 0, W), np.clip(cx + cw // 2, 0, W)
    out = x.clone()
    out[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
    lam2 = 1 - (y2 - y1) * (x2 - x1) / (H * W)
    return out, lam2 * y_onehot + (1 - lam2) * y_onehot[perm]


def _policy_groups(device, quick, names, g) -> list[Group]:
    """Policies at the training regimes: GPU B=128 x 3 x 224^2; CPU B=32 x 3 x 64^2 (the CPU
    end-to-end model's size, where per-call Python overhead decides) and 224^2 (where the
    pixel work does)."""
    if device == "cuda":
        return _policy_groups_at(device, names, g, 128, 224)
    return _policy_groups_at(device, names, g, 32, 64) + _policy_groups_at(device, names, g, 32, 224)


def _policy_groups_at(device, names, g, B, S) -> list[Group]:
    cuda = device == "cuda"
    K = 10
    patch = 16 if S >= 224 else 8
    x = F.interpolate(torch.rand(B, 3, S // 16, S // 16, generator=g), size=(S, S), mode="bicubic",
                      align_corners=False).clamp(0, 1).to(device)
    y = torch.randint(0, K, (B,), generator=g).to(device)
    y1 = F.one_hot(y, K).float()
    vol = x.numel() * 4
    cfg = f"B{B}x3x{S}x{S} float32, {K} classes"
    out = []
    gen = torch.Generator()
    try:
        import timm.data.mixup as timm_mixup
    except ImportError:
        timm_mixup = None
    try:
        import mixup as mixup_pkg
    except ImportError:
        mixup_pkg = None

    # timm mixes in place: it gets its own batch, mixed again on every call (convex mixes stay
    # in [0, 1], and the values do not change the time) instead of a clone per call, which
    # would charge it a batch copy that a user does not pay
    x_timm = x.clone()

    def policy_group(name, policy, extra_vol=0):
        grp = Group(name, cfg, B, 2 * vol + extra_vol)
        grp.providers["medmix"] = lambda: policy(x, y, generator=gen)
        return grp

    if "policy_mixup" in names:
        grp = policy_group("policy_mixup", Mixup(K, partner="flip", **TRUSTED_LABELS))
        if timm_mixup:
            tm = timm_mixup.Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, num_classes=K, label_smoothing=0.0)
            grp.providers["timm_mixup"] = lambda: tm(x_timm, y)
        if mixup_pkg:
            mp = mixup_pkg.VanillaMixUp()
            grp.providers["mixup_pkg"] = lambda: mp(x, y1)
        if device == "cpu":
            grp.back_to_back = ("medmix", "timm_mixup")
        out.append(grp)
    if "policy_cutmix" in names:
        grp = policy_group("policy_cutmix", CutMix(K, partner="flip", **TRUSTED_LABELS))
        if timm_mixup:
            tc = timm_mixup.Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=K, label_smoothing=0.0)
            grp.providers["timm_cutmix"] = lambda: tc(x_timm, y)
        if mixup_pkg:
            mc = mixup_pkg.CutMix()
            grp.providers["mixup_pkg"] = lambda: mc(x, y1)
        if device == "cpu":
            grp.back_to_back = ("medmix", "timm_cutmix")
        out.append(grp)
    if "policy_saliencymix" in names:
        grp = Group("policy_saliencymix", cfg, B, 2 * vol)
        one = SaliencyMix(K, **TRUSTED_LABELS)
        each = SaliencyMix(K, per_sample=True, **TRUSTED_LABELS)
        grp.providers["medmix_batch_map"] = lambda: one(x, y, generator=gen)
        grp.providers["medmix_per_sample"] = lambda: each(x, y, generator=gen)
        perm = torch.randperm(B, generator=g).to(device)
        if _opencv_per_image("fine_grained") is not None:
            grp.providers["official_opencv"] = lambda: _official_saliencymix(x, y1, perm, 0.5)
        if mixup_pkg:
            ms = mixup_pkg.SaliencyMix()
            grp.providers["mixup_pkg"] = lambda: ms(x, y1)
        out.append(grp)
    if "policy_spmix" in names:
        grp = policy_group("policy_spmix", SPMix(K, patch=patch, partner="randperm", **TRUSTED_LABELS))
        perm = torch.randperm(B, generator=g).to(device)

        def composite():
            s = ref.saliency.fine_grained(x)
            r, mean = ref.patch_ratio_pool(s, s[perm], patch, 0.8)
            pix = ref.expand_ratios(r, patch, (S, S))
            return ref.gaussian_blend(x, x[perm], pix, torch.zeros(B, device=device), 0)[0]

        grp.providers["reference_eager"] = composite
        out.append(grp)
    if "policy_varimix" in names:
        x_hat = (x + 0.2 * torch.randn(x.shape, generator=g).to(device)).clamp(0, 1)
        grp = policy_group("policy_varimix", VariMix(K, lambda xs, xr: x_hat, **TRUSTED_LABELS), extra_vol=2 * vol)
        perm = torch.randperm(B, generator=g).to(device)
        grp.providers["varimix_loop"] = lambda: varimix_public_loop(x, x_hat, perm, 0.4)
        out.append(grp)
    if "policy_genmix" in names:
        pool = torch.rand(B, 3, S, S, generator=g).to(device)
        grp = policy_group("policy_genmix", GenMix(K, lambda labels, generator=None: pool, **TRUSTED_LABELS), extra_vol=vol)
        out.append(grp)
    for grp in out:
        grp.baselines = tuple(p for p in grp.providers if not p.startswith("medmix"))
    return out


# ---- end to end: the share of a training step ------------------------------------------------------

def end_to_end(device: str, quick: bool) -> dict:
    """Time of one classifier training step (forward, backward, optimizer) and of each policy on
    the same batch: GPU convnext_tiny B=128 224^2 bf16 autocast, CPU convnext_atto B=32 64^2."""
    import timm

    cuda = device == "cuda"
    name, B, S = ("convnext_tiny", 128, 224) if cuda else ("convnext_atto", 32, 64)
    K = 10
    model = timm.create_model(name, pretrained=False, num_classes=K).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(B, 3, S, S, generator=g).to(device)
    y = torch.randint(0, K, (B,), generator=g).to(device)
    target = F.one_hot(y, K).float()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            loss = torch.sum(-target * F.log_softmax(model(x), dim=1), dim=1).mean()
        loss.backward()
        opt.step()

    budget = 1.0 if quick else 3.0
    step_s = statistics.median(measure(step, device, budget, 20 if quick else 50))
    x_hat = (x + 0.1).clamp(0, 1)
    pool = torch.rand_like(x)
    from .mix import MedDiffuseMix

    policies = {"mixup": Mixup(K, **TRUSTED_LABELS), "cutmix": CutMix(K, **TRUSTED_LABELS),
                "saliencymix": SaliencyMix(K, per_sample=True, **TRUSTED_LABELS),
                "spmix": SPMix(K, patch=16 if cuda else 8, **TRUSTED_LABELS), "varimix": VariMix(K, lambda a, b: x_hat, **TRUSTED_LABELS),
                "meddiffusemix": MedDiffuseMix(K, model, **TRUSTED_LABELS),
                "genmix": GenMix(K, lambda l, generator=None: pool, **TRUSTED_LABELS)}
    shares = {}
    for pname, p in policies.items():
        t = statistics.median(measure(lambda: p(x, y), device, budget / 2, 20))
        shares[pname] = dict(ms=t * 1e3, share_of_step=t / step_s)
    return dict(model=name, batch=B, size=S, amp="bf16" if cuda else "off", step_ms=step_s * 1e3,
                policies=shares)


# ---- running and reporting --------------------------------------------------------------------------

def run(device: str = "cpu", quick: bool = False, names=GROUPS, e2e: bool = True, progress: bool = True) -> dict:
    from tqdm import tqdm

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("medmix bench: --device cuda, but no CUDA device is available")
    bw = copy_bandwidth(device)
    budget, reps = (0.3, 20) if quick else (1.0, 100)
    result = dict(device=_device_name(device), device_kind=device, date=datetime.date.today().isoformat(),
                  commit=_commit(), torch=torch.__version__, triton=_triton_version(),
                  cpu_threads=torch.get_num_threads(), host=platform.node(), processor=_processor(device),
                  quick=quick, copy_bandwidth_gbps=bw, groups=[])
    groups = build_groups(device, quick, names)
    for grp in tqdm(groups, desc="medmix bench", disable=not progress):
        rows = []
        faults = {}
        timed = measure_interleaved(grp.providers, device, budget, reps, faults=faults)
        for pname, fn in grp.providers.items():
            times = timed[pname]
            if isinstance(times, Exception):
                grp.notes.append(f"{pname} failed: {type(times).__name__}: {str(times)[:120]}")
                continue
            med = statistics.median(times)
            q = np.percentile(times, [20, 80])
            rows.append(dict(provider=pname, median_ms=med * 1e3, p20_ms=q[0] * 1e3, p80_ms=q[1] * 1e3,
                             images_per_s=grp.images / med, gbps=grp.bytes_moved / med / 1e9,
                             pct_copy_bw=100 * grp.bytes_moved / med / 1e9 / bw,
                             peak_extra_mb=peak_extra_mb(fn, device), faults_per_call=faults.get(pname),
                             baseline=pname in grp.baselines))
        by = {r["provider"]: r for r in rows}
        for r in rows:
            if not r["baseline"]:
                r["speedup"] = {b: by[b]["median_ms"] / r["median_ms"] for b in grp.baselines if b in by}
        entry = dict(name=grp.name, config=grp.config, images=grp.images,
                     bytes_moved=grp.bytes_moved, rows=rows, notes=grp.notes)
        if grp.back_to_back:
            steady = measure_back_to_back(grp.providers, grp.back_to_back, device, budget, reps)
            entry["back_to_back_ms"] = {k: v * 1e3 for k, v in steady.items()}
        result["groups"].append(entry)
    if e2e:
        try:
            result["end_to_end"] = end_to_end(device, quick)
        except ImportError as e:
            result["end_to_end"] = dict(skipped=str(e))
    return result


def format_table(result: dict) -> str:
    lines = [f"device: {result['device']} ({result.get('processor', '?')}) | torch {result['torch']} | triton {result['triton']} | "
             f"commit {result['commit'][:10]} | copy bandwidth {result['copy_bandwidth_gbps']:.1f} GB/s"]
    for grp in result["groups"]:
        lines += ["", f"{grp['name']}  [{grp['config']}]"]
        lines.append(f"  {'provider':<22}{'median ms':>10}{'p20-p80':>16}{'img/s':>10}{'GB/s':>8}{'%copy':>7}"
                     f"{'peak MB':>9}{'faults':>8}  speed-up vs baselines")
        for r in sorted(grp["rows"], key=lambda r: r["median_ms"]):
            peak = "-" if r["peak_extra_mb"] is None else f"{r['peak_extra_mb']:.0f}"
            # minor page faults per call (CPU; results saved before they were counted lack it)
            fl = "-" if r.get("faults_per_call") is None else f"{r['faults_per_call']:.0f}"
            sp = ", ".join(f"{k} {v:.1f}x" for k, v in r.get("speedup", {}).items())
            lines.append(f"  {r['provider']:<22}{r['median_ms']:>10.3f}{r['p20_ms']:>8.2f}-{r['p80_ms']:<7.2f}"
                         f"{r['images_per_s']:>10,.0f}{r['gbps']:>8.1f}{r['pct_copy_bw']:>6.0f}%{peak:>9}{fl:>8}  {sp}")
        steady = grp.get("back_to_back_ms")
        if steady:
            parts = [f"{k} {v:.3f} ms" for k, v in steady.items()]
            ratios = [f"{o} {ratio:.1f}x {b}" for o in steady for b, ratio in _back_to_back_speedups(grp, o)]
            lines.append(f"  back to back (each alone, steady state): {', '.join(parts)}"
                         + (f"; {', '.join(ratios)}" if ratios else ""))
        for n in grp["notes"]:
            lines.append(f"  note: {n}")
    e2e = _end_to_end_of(result)
    if e2e:
        lines += ["", f"end to end: {e2e['model']} B={e2e['batch']} {e2e['size']}px amp={e2e['amp']}: "
                      f"training step {e2e['step_ms']:.1f} ms"]
        for k, v in e2e["policies"].items():
            lines.append(f"  {k:<16}{v['ms']:>9.2f} ms  {100 * v['share_of_step']:6.1f}% of a step")
    lines += format_gpu_preference(result)
    return "\n".join(lines)


def _op_of_group(name: str) -> str | None:
    """The GPU_PREFERENCE key an op group measures (None for the policies)."""
    for op in _backend.GPU_PREFERENCE:
        if name == op or name.startswith(op + "_"):
            return op
    return None


def gpu_preference(result: dict) -> dict[str, dict]:
    """From a ``medmix bench --device cuda`` result: per op, the GPU kernel ``backend="auto"``
    should pick. For each op, the geometric mean over its groups of the CUDA kernel's median
    over the Triton kernel's (``medmix_cuda`` / ``medmix_triton`` rows, the fresh-output ones)
    decides: at most 1 -> "cuda", above -> "triton". Ops without both rows are left out.

    Returns {op: {"choice": "cuda" | "triton", "cuda_over_triton": ratio, "groups": n}}.
    """
    ratios: dict[str, list[float]] = {}
    for grp in result["groups"]:
        op = _op_of_group(grp["name"])
        by = {r["provider"]: r["median_ms"] for r in grp["rows"]}
        if op is not None and "medmix_cuda" in by and "medmix_triton" in by:
            ratios.setdefault(op, []).append(by["medmix_cuda"] / by["medmix_triton"])
    out = {}
    for op, rs in ratios.items():
        g = math.exp(sum(math.log(r) for r in rs) / len(rs))
        out[op] = dict(choice="cuda" if g <= 1 else "triton", cuda_over_triton=g, groups=len(rs))
    return out


def format_gpu_preference(result: dict) -> list[str]:
    """The measured choice per op next to GPU_PREFERENCE's (empty without CUDA and Triton rows)."""
    pref = gpu_preference(result)
    if not pref:
        return []
    lines = ["", "backend=\"auto\" on CUDA tensors (geometric mean of cuda / triton medians per op):"]
    for op, v in pref.items():
        now = _backend.GPU_PREFERENCE.get(op)
        verdict = "matches GPU_PREFERENCE" if now == v["choice"] else \
            f"GPU_PREFERENCE says {now!r}: update medmix_ops/_backend.py"
        lines.append(f"  {op:<18}cuda/triton {v['cuda_over_triton']:.2f} over {v['groups']} group(s) -> "
                     f"{v['choice']:<7}{verdict}")
    return lines


def save_json(result: dict, path: str) -> str:
    return write_json(path, result, indent=1)


def save_plot(result: dict, path: str) -> str:
    """Speed-up of the fastest medmix provider over each baseline, per group (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = [], []
    names = [grp["name"] for grp in result["groups"]]
    for grp in result["groups"]:
        ours = [r for r in grp["rows"] if not r["baseline"]]
        if not ours:
            continue
        best = min(ours, key=lambda r: r["median_ms"])
        # a group measured at several sizes is labelled with its shape
        name = grp["name"] if names.count(grp["name"]) == 1 else f"{grp['name']} {grp['config'].split()[0]}"
        for b, v in best.get("speedup", {}).items():
            labels.append(f"{name} vs {b}")
            values.append(v)
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.28 * len(labels))), dpi=110)
    ax.barh(labels[::-1], values[::-1], color=["#4c72b0" if v >= 1 else "#c44e52" for v in values[::-1]])
    ax.set_xscale("log")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("speed-up of medmix (x, log scale; < 1: slower)")
    ax.set_title(f"medmix bench on {result['device']} ({result['date']})")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def default_json_path(result: dict) -> str:
    dev = "".join(c if c.isalnum() or c in "-_" else "_" for c in result["device"])
    return os.path.join("benchmarks", "results", f"{dev}-{result['date']}.json")


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu-{os.cpu_count()}core"


def _processor(device: str) -> str:
    """What ran the numbers: the GPU's name, or the CPU model from /proc/cpuinfo. A VM's CPU
    can change between sessions under the same host name (Intel to AMD EPYC here, which moved
    the memory-bound ops by 1.5x), so runs are only comparable with the same processor."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _commit() -> str:
    """HEAD (``-dirty`` with uncommitted changes); MEDMIX_COMMIT overrides it for a copy of the
    tree without .git (the GPU machine's)."""
    if os.environ.get("MEDMIX_COMMIT"):
        return os.environ["MEDMIX_COMMIT"]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "") if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _triton_version():
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


def summary_markdown(result: dict) -> str:
    """One Markdown row per group: the fastest medmix provider and its speed-up over each
    baseline (the README's Performance table is rendered from the committed JSON by this)."""
    lines = [f"Device: {result['device']} ({result.get('processor', '?')}); torch {result['torch']}, triton {result['triton']}; commit "
             f"{result['commit'][:10]}; {result['date']}; copy bandwidth {result['copy_bandwidth_gbps']:.1f} GB/s.",
             "", "| group | config | medmix ms | GB/s (% copy) | speed-up vs baselines |",
             "| --- | --- | ---: | ---: | --- |"]
    for grp in result["groups"]:
        ours = [r for r in grp["rows"] if not r["baseline"]]
        if not ours:
            continue
        best = min(ours, key=lambda r: r["median_ms"])
        sp = ", ".join(f"{k} **{v:.1f}x**" if v >= 1 else f"{k} {v:.2f}x"
                       for k, v in sorted(best.get("speedup", {}).items(), key=lambda kv: -kv[1]))
        steady = _back_to_back_speedups(grp, best["provider"])
        if steady:
            sp += "; back to back: " + ", ".join(f"{b} {ratio:.1f}x" for b, ratio in steady)
        lines.append(f"| {grp['name']} | {grp['config']} | {best['median_ms']:.2f} | "
                     f"{best['gbps']:.1f} ({best['pct_copy_bw']:.0f}%) | {sp} |")
    e2e = _end_to_end_of(result)
    if e2e:
        lines += ["", f"Share of one {e2e['model']} training step (B={e2e['batch']}, {e2e['size']} px, "
                      f"AMP {e2e['amp']}, {e2e['step_ms']:.0f} ms): "
                  + ", ".join(f"{k} {100 * v['share_of_step']:.1f}%" for k, v in e2e["policies"].items()) + "."]
    return "\n".join(lines)


def _back_to_back_speedups(grp: dict, provider: str) -> list[tuple[str, float]]:
    """[(baseline, its back-to-back time / provider's)] for a group timed back to back; empty
    when the provider is a baseline itself or was not timed that way."""
    steady = grp.get("back_to_back_ms") or {}
    base = {r["provider"]: r["baseline"] for r in grp["rows"]}
    if provider not in steady or base.get(provider):
        return []
    return [(b, steady[b] / steady[provider]) for b in steady if base.get(b)]


def _end_to_end_of(result: dict) -> dict | None:
    """The run's training-step shares, when it measured them."""
    e2e = result.get("end_to_end")
    return e2e if e2e and "policies" in e2e else None
