"""fp16 on the CPU through F16C (csrc/cpu/half_f16c.h): where the CPU has it, fp16 runs are
converted to float in blocks, the float32 loops run on them and the results are rounded back;
MEDMIX_DISABLE_F16C=1 keeps c10's conversion loops. Both paths must give the same bits."""
import pytest
import torch

from helpers import run_script_under_envs

_F16C_CASES = """
import sys, torch
import medmix_ops.ops
from medmix_ops import gaussian_blend
bits = torch.arange(-(2 ** 15), 2 ** 15, dtype=torch.int32).to(torch.int16).view(torch.float16)
a = bits.view(1, 1, 128, 512).expand(8, 3, 128, 512).clone()
b = bits.roll(12345).view(1, 1, 128, 512).expand(8, 3, 128, 512).clone()
a[:, 1] = a[:, 1].flip(-1)
g = torch.Generator().manual_seed(5)
w = torch.tensor([0.0, 1.0, 0.5, 0.3, 1.5, -0.25, 1 - 2 ** -24, 2 ** -25])
soft = torch.rand(8, 1, 128, 512, generator=g)
soft[soft < 0.2] = 0.0
soft[4] = soft[4] * 3 - 1
out = {}
out["const"] = gaussian_blend(a, b, w.view(8, 1, 1, 1).expand(8, 1, 128, 512), 0.0, validate=False)[0]
out["soft"] = gaussian_blend(a, b, soft, 0.0, validate=False)[0]
out["sigma"] = gaussian_blend(a, b, soft, 1.5, validate=False)[0]
cl = torch.channels_last
out["channels_last"] = gaussian_blend(a.contiguous(memory_format=cl), b.contiguous(memory_format=cl), soft, 1.5,
                                      validate=False)[0].contiguous()
ga, gb = torch.ops.medmix.gaussian_blend_backward(a, soft.clamp(0, 1), torch.full((8,), 1.5), 5)
out["grad_a"], out["grad_b"] = ga, gb
# adm on finite fp16 images (subnormal differences too): its ranges, scores and masks
from medmix_ops.ops.adm import adm_mask, adm_mix
x = torch.rand(6, 3, 61, 67, generator=g).half()
xh = (x.float() + 0.2 * torch.randn(6, 3, 61, 67, generator=g)).clamp(0, 1).half()
xh[:, :, :4] = x[:, :, :4] + bits[2 ** 15 + 1:2 ** 15 + 5].view(1, 1, 4, 1)  # subnormal steps
perm, lam = torch.tensor([3, 0, 5, 1, 2, 4]), torch.rand(6, generator=g)
mixed, lam2, mask = adm_mix(x, xh, perm, lam, stacked=True, return_mask=True)
out["adm_mix"] = mixed
out["adm_lam"], out["adm_mask"] = lam2, mask
out["adm_otsu"] = adm_mask(x, xh, 0.5, mode="otsu")[0]
# saliency of fp16 images and gradients (the source rows convert through F16C)
from medmix_ops import saliency
for method in ("spectral_residual", "fine_grained", "gradient"):
    out["saliency_" + method] = saliency(xh if method != "gradient" else (xh - x), method)
torch.save(out, sys.argv[1])
"""


def _cpu_has_f16c() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " f16c" in line for line in f)
    except OSError:
        return False


@pytest.mark.skipif(not _cpu_has_f16c(), reason="the CPU has no F16C: both runs would take c10's loops")
def test_f16c_fp16_path_gives_the_bits_of_the_c10_loops(tmp_path):
    """fp16 runs go through F16C conversions in float blocks where the CPU has them
    (csrc/cpu/half_f16c.h); MEDMIX_DISABLE_F16C=1 keeps c10's conversion loops. On every fp16
    pattern, through the blend's constant, soft, blurred, channels_last and backward runs, and
    through adm_mix / adm_mask and saliency on fp16 images, the two give the same bits, NaN
    payloads aside (a NaN stays a NaN)."""
    runs = run_script_under_envs(tmp_path, _F16C_CASES, {"f16c": {}, "c10": {"MEDMIX_DISABLE_F16C": "1"}})
    for key, fast in runs["f16c"].items():
        slow = runs["c10"][key]
        as_int = {2: torch.int16, 4: torch.int32}[fast.element_size()]
        nan_fast, nan_slow = fast.isnan(), slow.isnan()
        assert torch.equal(nan_fast, nan_slow), key
        assert torch.equal(fast.view(as_int)[~nan_fast], slow.view(as_int)[~nan_slow]), key
        assert (~nan_fast).sum() > fast.numel() // 2, key  # mostly numbers, not NaN
