"""gaussian_blend's flat rows on the CPU (csrc/cpu/gaussian_blend.cpp): a blurred row whose
whole window is one mask value is filled with that value's tap chain instead of being blurred.
MEDMIX_DISABLE_FLAT_ROWS=1 blurs every row; both paths must give the same bits."""
import torch

from helpers import run_script_under_envs

_CASES = """
import sys, torch
from medmix_ops import gaussian_blend
g = torch.Generator().manual_seed(3)


def masks(B, H, W):
    box = torch.zeros(B, 1, H, W)
    box[..., H // 4: 3 * H // 4 + 1, W // 5: 3 * W // 5 + 1] = 1
    blobs = torch.nn.functional.avg_pool2d(torch.rand(B, 1, H + 6, W + 6, generator=g), 7, 1) > 0.55
    bands = (torch.arange(H).view(1, 1, H, 1) % 7 // 3 / 2.0).expand(B, 1, H, W).clone()  # flat rows, 3 values
    mixed = box.clone()
    mixed[0] = 0.0
    mixed[1 % B] = 1.0
    mixed[2 % B, :, : H // 2] = 0.3
    mixed[3 % B] = -0.0  # -0.0 rows next to +0.0 ones
    mixed[3 % B, :, ::2] = 0.0
    return {"box": box, "blobs": blobs.float(), "bands": bands, "mixed": mixed}


out = {}
for H, W in ((1, 9), (3, 40), (37, 53), (64, 64), (130, 70)):
    B = 5
    a = torch.rand(B, 3, H, W, generator=g)
    b = torch.rand(B, 3, H, W, generator=g)
    sigmas = [0.0, 0.5, 1.5, 4.0, 40.0]  # 40: a radius of 120, beyond every H here
    for name, m in masks(B, H, W).items():
        for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.uint8):
            x, y = (a, b) if dtype.is_floating_point else ((a * 255).round(), (b * 255).round())
            x, y = x.to(dtype), y.to(dtype)
            mm = m.to(torch.float64 if dtype == torch.float64 else torch.float32)
            key = f"{H}x{W} {name} {dtype}"
            res, lam, alpha = gaussian_blend(x, y, mm, sigmas, return_alpha=True, validate=False)
            out[key] = res
            out[key + " lam"], out[key + " alpha"] = lam, alpha
            cl = torch.channels_last
            out[key + " channels_last b_index"] = gaussian_blend(
                x.contiguous(memory_format=cl), y.contiguous(memory_format=cl), mm, 4.0,
                b_index=torch.arange(B).flip(0), validate=False)[0].contiguous()
            if dtype.is_floating_point:
                ga, gb = torch.ops.medmix.gaussian_blend_backward(
                    x, mm, torch.tensor(sigmas), 120)
                out[key + " grad_a"], out[key + " grad_b"] = ga, gb
# a NaN row (validate=False): never flat, blurred as before
m = torch.zeros(2, 1, 40, 40)
m[:, :, 20] = float("nan")
a, b = torch.rand(2, 3, 40, 40, generator=g), torch.rand(2, 3, 40, 40, generator=g)
out["nan row"] = gaussian_blend(a, b, m, 2.0, validate=False)[0]
torch.save(out, sys.argv[1])
"""


def test_flat_rows_give_the_bits_of_the_full_blur(tmp_path):
    """Box, blob and banded masks, rows of one value other than 0 / 1, -0.0 next to +0.0, a NaN
    row; sigma 0 to 40 (radius beyond the image), H from 1 to 130, five dtypes, channels_last with
    b_index, alpha, lam and the backward: the flat-row path and the full blur agree bit for bit."""
    runs = run_script_under_envs(tmp_path, _CASES, {"flat": {}, "full": {"MEDMIX_DISABLE_FLAT_ROWS": "1"}})
    assert runs["flat"].keys() == runs["full"].keys() and len(runs["flat"]) > 400
    for key, fast in runs["flat"].items():
        slow = runs["full"][key]
        assert fast.dtype == slow.dtype and fast.shape == slow.shape, key
        if fast.dtype.is_floating_point:
            assert torch.equal(fast.isnan(), slow.isnan()), key
            fast, slow = fast.nan_to_num(0.0), slow.nan_to_num(0.0)
            as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}[fast.element_size()]
            assert torch.equal(fast.view(as_int), slow.view(as_int)), key  # bits, signed zeros too
        else:
            assert torch.equal(fast, slow), key
