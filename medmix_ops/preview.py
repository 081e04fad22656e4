"""Policy previews: original | partner | mask / weight | mixed, with the soft label under each
mixed image. Used by `medmix preview` and `medmix demo`."""
from __future__ import annotations

import torch

from .viz import save_grid


def soft_label_text(y: torch.Tensor, class_names, top: int = 2) -> str:
    vals, idx = y.float().topk(min(top, y.numel()))
    return "\n".join(f"{class_names[int(i)][:10]} {float(v):.2f}" for v, i in zip(vals, idx) if v > 0.005)


def _label_set(row: torch.Tensor, class_names) -> str:
    """A multi-hot (or soft) target row as the names of its labels at or above 0.5."""
    on = [class_names[int(k)][:10] for k in torch.nonzero(row >= 0.5).flatten()]
    return "+".join(on[:3]) + ("+..." if len(on) > 3 else "") if on else "no label"


def policy_rows(policy, x, y, class_names, rows: int, seg=None, generator=None, label=None):
    """Runs policy once on (x, y); returns (image rows, caption rows) for the first `rows`
    outputs."""
    out, ys = policy(x, y, generator=generator, seg=seg)[:2]
    last = policy.last
    if not last.get("applied", False):
        raise ValueError("the policy did not mix this batch (prob < 1, or a single image)")
    ia, ib = last["index_a"], last["index_b"]
    grid, caps = [], []
    for r in range(min(rows, out.shape[0])):
        a, b = int(ia[r]), int(ib[r])
        partner = x[b] if b >= 0 else last.get("x_syn", torch.zeros_like(out))[r]
        weight = last["weight_a"][r] if last.get("weight_a") is not None else torch.ones_like(x[0, :1])
        grid.append([x[a], partner, weight, out[r]])
        cls = lambda i: class_names[int(y[i])] if y.dim() == 1 else _label_set(y[i], class_names)  # noqa: E731
        b_name = cls(b) if b >= 0 else (class_names[int(last["syn_classes"][r])]
                                        if last.get("syn_classes") is not None else "synthetic")
        caps.append([cls(a), b_name, "", soft_label_text(ys[r], class_names)])
    return grid, caps


def save_policy_preview(policy, x, y, class_names, path, rows: int = 6, seg=None, generator=None):
    grid, caps = policy_rows(policy, x, y, class_names, rows, seg=seg, generator=generator)
    return save_grid(grid, path, col_labels=["original", "partner", "weight of original", f"{policy.name}"],
                     captions=caps)
