"""Label fidelity: how far a policy's soft label is from the lesion evidence left visible.

For an output image with per-pixel weight w of its anchor a (1 - w of its partner b) and lesion
masks L_a, L_b:
    v_a = sum(w L_a) / sum(L_a)          (0 when a has no lesion)
    v_b = sum((1 - w) L_b) / sum(L_b)
The evidence label e puts v_a on a's class, v_b on b's class and max(0, 1 - v_a - v_b) on
"normal", normalised to sum 1: visible lesions decide the class, and no visible lesion means
normal. The label mismatch of a sample is the total-variation distance 0.5 * |y_soft - e|_1.
"""
from __future__ import annotations


import torch

from . import policies as _policies
from ._io import save_figure, write_json
from .data import SynthLesion
from .data.synthlesion import CLASSES, NORMAL

FIDELITY_POLICIES = ("mixup", "cutmix", "saliencymix", "spmix", "varimix_oracle", "meddiffusemix",
                     "genmix")


def evidence_labels(weight_a, seg_a, seg_b, cls_a, cls_b, num_classes: int = len(CLASSES)):
    """Evidence labels [B, K] and the visible fractions (v_a [B], v_b [B])."""
    la, lb = seg_a.float().flatten(1), seg_b.float().flatten(1)
    w = weight_a.float().flatten(1)
    v_a = torch.where(la.sum(1) > 0, (w * la).sum(1) / la.sum(1).clamp_min(1e-12), torch.zeros(()))
    v_b = torch.where(lb.sum(1) > 0, ((1 - w) * lb).sum(1) / lb.sum(1).clamp_min(1e-12), torch.zeros(()))
    e = torch.zeros(w.shape[0], num_classes)
    rows = torch.arange(w.shape[0])
    e.index_put_((rows, cls_a.long()), v_a, accumulate=True)
    e.index_put_((rows, cls_b.long()), v_b, accumulate=True)
    e[:, NORMAL] += (1 - v_a - v_b).clamp_min(0)
    return e / e.sum(1, keepdim=True), v_a, v_b


def mismatch(y_soft: torch.Tensor, evidence: torch.Tensor) -> torch.Tensor:
    return 0.5 * (y_soft.float() - evidence).abs().sum(1)


def measure(policy, x, y, seg, translator=None, indices=None):
    """Runs policy on one batch and returns per-sample (mismatch, v_a, v_b); v_a / v_b are the
    visible fractions of the anchor's / partner's lesion (NaN where there is none)."""
    if translator is not None:
        translator.set_batch(indices, y)
    policy(x, y, generator=torch.Generator().manual_seed(int(indices[0])), seg=seg)
    last = policy.last
    out_y = last["y"].cpu()
    ia, ib = last["index_a"].cpu(), last["index_b"].cpu()
    seg_a = seg[ia]
    if last.get("seg_b") is not None:
        seg_b = last["seg_b"].cpu()
    else:
        seg_b = torch.where((ib >= 0).view(-1, 1, 1, 1), seg[ib.clamp(min=0)], torch.zeros_like(seg_a))
    cls_b = torch.where(ib >= 0, y[ib.clamp(min=0)],
                        last["syn_classes"].cpu() if last.get("syn_classes") is not None else y[ia])
    e, v_a, v_b = evidence_labels(last["weight_a"].cpu(), seg_a, seg_b, y[ia], cls_b)
    # visible fractions only count where there is a lesion to see (NaN elsewhere)
    nan = torch.full_like(v_a, float("nan"))
    v_a = torch.where(seg_a.flatten(1).sum(1) > 0, v_a, nan)
    v_b = torch.where(seg_b.flatten(1).sum(1) > 0, v_b, nan)
    return mismatch(out_y, e), v_a, v_b


def run_fidelity(n: int = 512, size: int = 64, seed: int = 0, batch: int = 64,
                 names=FIDELITY_POLICIES, backend: str = "auto", progress: bool = True) -> dict:
    """Mixes n SynthLesion images with each policy; returns {"policies": {name: stats}}."""
    from tqdm import tqdm

    ds = SynthLesion(n, size=size, seed=seed)
    K = len(CLASSES)
    results = {}
    for name in tqdm(names, desc="label fidelity", disable=not progress):
        base = "varimix" if name == "varimix_oracle" else name
        policy = _policies.make_policy(base, K, dataset=ds, backend=backend)
        translator = getattr(policy, "translator", None) if base == "varimix" else None
        ms, vas, vbs = [], [], []
        for start in range(0, n, batch):
            idx = list(range(start, min(n, start + batch)))
            if len(idx) < 2:
                continue
            x, masks = ds.render(idx)
            y = ds.labels[idx]
            m, v_a, v_b = measure(policy, x, y, masks, translator, idx)
            ms.append(m), vas.append(v_a), vbs.append(v_b)
        m, v_a, v_b = torch.cat(ms), torch.cat(vas), torch.cat(vbs)
        results[name] = dict(label_mismatch=float(m.mean()), label_mismatch_std=float(m.std()),
                             visible_anchor=float(v_a.nanmean()), visible_partner=float(v_b.nanmean()),
                             samples=int(m.numel()))
    return {"policies": results, "config": dict(n=n, size=size, seed=seed, batch=batch,
                                                 classes=list(CLASSES))}


def format_table(result: dict) -> str:
    rows = [f"{'policy':<16}{'label mismatch':>16}{'visible anchor':>16}{'visible partner':>17}{'samples':>9}",
            f"{'':<16}{'(lower: better)':>16}{'lesion fraction':>16}{'lesion fraction':>17}"]
    rows.append("-" * len(rows[0]))
    for name, r in sorted(result["policies"].items(), key=lambda kv: kv[1]["label_mismatch"]):
        rows.append(f"{name:<16}{r['label_mismatch']:>10.3f} +- {r['label_mismatch_std']:<4.2f}"
                    f"{r['visible_anchor']:>16.3f}{r['visible_partner']:>17.3f}{r['samples']:>9}")
    return "\n".join(rows)


def save_json(result: dict, path: str) -> str:
    return write_json(path, result)


def save_plot(result: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(result["policies"].items(), key=lambda kv: kv[1]["label_mismatch"])
    names = [k for k, _ in items]
    vals = [v["label_mismatch"] for _, v in items]
    errs = [v["label_mismatch_std"] for _, v in items]
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=120)
    ax.bar(names, vals, yerr=errs, color="#4c72b0", capsize=3)
    ax.set_ylabel("label mismatch (TV distance)")
    c = result["config"]
    ax.set_title(f"Soft label vs visible lesion evidence (SynthLesion n={c['n']}, {c['size']} px)")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return save_figure(fig, path)
