"""Classification metrics on a held-out split: accuracy, balanced accuracy, macro-F1, one-vs-rest
AUROC, per-class recall and the confusion matrix (also as a PNG); per-label ones for
multi-label data."""
from __future__ import annotations

import numpy as np
import torch

from .._io import save_figure


def auroc_binary(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUROC with ties counted half; NaN when one class is absent."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    both = np.concatenate([pos, neg])
    order = np.argsort(both, kind="mergesort")
    ordered = both[order]
    # tied scores share the mean of their 1-based ranks: group g spans sorted positions
    # starts[g] .. ends[g] - 1 (NaN != NaN, so each NaN is a group of its own)
    new_group = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], len(ordered))
    ranks = np.empty(len(order))
    ranks[order] = ((starts + ends + 1) / 2)[np.cumsum(new_group) - 1]
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    p = probs.double().cpu().numpy()
    y = labels.cpu().numpy()
    pred = p.argmax(1)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    support = cm.sum(1)
    recall = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    predicted = cm.sum(0)
    precision = np.where(predicted > 0, np.diag(cm) / np.maximum(predicted, 1), 0.0)
    f1 = np.where(precision + np.nan_to_num(recall) > 0,
                  2 * precision * np.nan_to_num(recall) / np.maximum(precision + np.nan_to_num(recall), 1e-12), 0.0)
    present = support > 0
    auc = [auroc_binary(p[:, c], y == c) for c in range(num_classes)]
    # balanced accuracy: the mean recall over the classes present (ISIC's headline metric),
    # which a model predicting only the head class cannot inflate the way accuracy lets it
    return dict(accuracy=float((pred == y).mean()), balanced_accuracy=float(recall[present].mean()),
                macro_f1=float(f1[present].mean()),
                auroc=float(np.nanmean(auc)) if not np.all(np.isnan(auc)) else float("nan"),
                per_class_auroc=[None if np.isnan(a) else float(a) for a in auc],
                per_class_recall=[None if np.isnan(r) else float(r) for r in recall],
                confusion_matrix=cm.tolist(), samples=int(len(y)))


def multilabel_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """Metrics of independent per-label probabilities [N, K] against 0 / 1 targets [N, K]
    (ChestMNIST-style multi-label data), each label thresholded at 0.5. ``accuracy`` is the
    mean over all N x K decisions (MedMNIST's multi-label ACC); ``balanced_accuracy`` the mean
    over labels of (sensitivity + specificity) / 2; ``macro_f1``, ``per_class_recall`` and
    ``per_class_auroc`` are per label, over the labels with positives (recall, F1) or with
    both positives and negatives (AUROC, balanced accuracy) in the test set.
    ``label_confusion`` holds each label's [[tn, fp], [fn, tp]]."""
    p = probs.double().cpu().numpy()
    y = labels.cpu().numpy() > 0.5
    pred = p >= 0.5
    tp, fp = (pred & y).sum(0), (pred & ~y).sum(0)
    fn, tn = (~pred & y).sum(0), (~pred & ~y).sum(0)
    pos, neg = tp + fn, tn + fp
    recall = np.where(pos > 0, tp / np.maximum(pos, 1), np.nan)
    specificity = np.where(neg > 0, tn / np.maximum(neg, 1), np.nan)
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    f1 = np.where(precision + np.nan_to_num(recall) > 0,
                  2 * precision * np.nan_to_num(recall) / np.maximum(precision + np.nan_to_num(recall), 1e-12), 0.0)
    auc = np.array([auroc_binary(p[:, k], y[:, k]) for k in range(p.shape[1])])
    both = (pos > 0) & (neg > 0)

    def mean_or_nan(v):
        return float(np.mean(v)) if len(v) else float("nan")

    return dict(accuracy=float((pred == y).mean()),
                balanced_accuracy=mean_or_nan(((recall + specificity) / 2)[both]),
                macro_f1=mean_or_nan(f1[pos > 0]), auroc=mean_or_nan(auc[both]),
                per_class_auroc=[None if np.isnan(a) else float(a) for a in auc],
                per_class_recall=[None if np.isnan(r) else float(r) for r in recall],
                label_confusion=[[[int(tn[k]), int(fp[k])], [int(fn[k]), int(tp[k])]] for k in range(len(tp))],
                multi_label=True, samples=int(len(y)))


def save_confusion_png(cm, class_names, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(class_names), 1 + 0.6 * len(class_names)), dpi=110)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    save_figure(fig, path)
