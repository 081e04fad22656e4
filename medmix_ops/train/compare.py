"""`medmix compare`: the same classifier trained with each policy and several seeds; one table,
JSON and plot of mean +- std accuracy, balanced accuracy, macro-F1, AUROC and tail-class recall,
and the training-loss curves."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from .classifier import ClassifierConfig, train_classifier
from .._io import save_figure, write_text
from .common import CHECKPOINT, write_json


def run_compare(base: ClassifierConfig, policies, seeds: int, out: str) -> dict:
    """Trains ``base`` with each of ``policies`` and ``seeds`` seeds under ``out/<policy>-seed<i>/``
    (runs already there are reused or resumed) and writes the table, JSON and plots.
    ``base.policy_kwargs`` is compare's --policy-kwargs (see ``options_per_policy``)."""
    out = Path(out)
    options = options_per_policy(base.policy_kwargs, policies)
    tail = check_before_training(base, policies, options)
    runs = {}
    for policy in policies:
        for seed in range(seeds):
            cfg = dataclasses.replace(base, policy=policy, seed=base.seed + seed, stop_after=None,
                                      policy_kwargs=options[policy])
            if policy == "none":  # nothing to start or configure: one baseline serves any of them
                cfg = dataclasses.replace(cfg, mix_start=0)
            run_dir = out / f"{policy}-seed{seed}"
            check_same_settings(run_dir, cfg)
            done = run_dir / "metrics.json"
            if done.exists():  # an interrupted compare picks up where it stopped
                m = json.loads(done.read_text())
            else:
                resume = (run_dir / CHECKPOINT).exists()  # a run cut short continues exactly
                print(f"== {policy}, seed {cfg.seed}" + (" (resuming)" if resume else ""))
                m = train_classifier(cfg, str(run_dir), resume=resume)
            runs.setdefault(policy, []).append(m)
    table = {}
    for policy, ms in runs.items():
        def stat(values):
            v = np.array([x for x in values if x is not None], dtype=np.float64)
            return dict(mean=float(v.mean()), std=float(v.std(ddof=1)) if len(v) > 1 else 0.0)

        table[policy] = dict(accuracy=stat([m["accuracy"] for m in ms]),
                             balanced_accuracy=stat([_balanced_accuracy(m) for m in ms]),
                             macro_f1=stat([m["macro_f1"] for m in ms]),
                             auroc=stat([m["auroc"] for m in ms]),
                             tail_recall=stat([m["per_class_recall"][tail] for m in ms]), runs=len(ms))
    result = dict(config=dataclasses.asdict(base), policies=list(policies), seeds=seeds, tail_class=tail,
                  classes=runs[policies[0]][0]["classes"], results=table)
    write_json(out / "compare.json", result)
    write_text(out / "compare.md", format_table(result) + "\n")
    save_plot(result, out / "compare.png")
    save_loss_plot(out, policies, seeds, out / "compare_loss.png")
    return result


def options_per_policy(policy_kwargs: dict, policies) -> dict:
    """compare's --policy-kwargs as {policy: its options}: either one object of options for
    every policy but none (``{"prob": 0.5}``), or a map from policy names to their own options
    (``{"mixup": {"alpha": 0.4}, "spmix": {"prob": 0.5}}``; a compared policy the map leaves out
    keeps its defaults). No policy option is named like a policy, so the two forms cannot be
    confused; a mix of both is refused."""
    from ..policies import POLICIES

    named = [k for k in policy_kwargs if k == "none" or k in POLICIES]
    if not named:
        return {p: {} if p == "none" else dict(policy_kwargs) for p in policies}
    rest = [k for k in policy_kwargs if k not in named]
    if rest:
        raise ValueError(f"--policy-kwargs: give either options for every policy or a map from policy names "
                         f"to options, not both: {', '.join(named)} name policies, {', '.join(rest)} do not")
    for name in named:
        if name == "none":
            raise ValueError("--policy-kwargs: none takes no options")
        if name not in policies:
            raise ValueError(f"--policy-kwargs: {name} is not among --policies ({','.join(policies)})")
        if not isinstance(policy_kwargs[name], dict):
            raise ValueError(f"--policy-kwargs: the options of {name} must be a JSON object, got "
                             f"{json.dumps(policy_kwargs[name])}")
    return {p: dict(policy_kwargs.get(p, {})) for p in policies}


def check_before_training(base: ClassifierConfig, policies, options: dict) -> int:
    """Builds every compared policy once with its options before the first run trains, so
    that an option a policy refuses, a policy that cannot mix multi-label data or an unreadable
    --generator stops the compare at once, not hours into it. Returns the tail class: the
    rarest training class, or for multi-label data the label with the fewest positives."""
    from .classifier import build_policy
    from .data import build_datasets

    _, _, names, info = build_datasets(base.data, base.img_size, imbalance=base.imbalance, n_train=base.n_train,
                                       n_test=1, seed=base.seed, skip_bad=base.skip_bad, intensity=base.intensity)
    mixed = [p for p in policies if p != "none"]
    # (with --epochs the step count needs the world size; each run checks it then)
    if mixed and base.epochs is None and base.mix_start >= base.steps:
        raise ValueError(f"--mix-start {base.mix_start} leaves no step for {', '.join(mixed)} "
                         f"({base.steps} training steps)")
    for policy in policies:
        # (meddiffusemix's classifier: the policy's default stands in for the one each run builds)
        build_policy(dataclasses.replace(base, policy=policy, policy_kwargs=options[policy]), len(names), info, None)
    labels = np.asarray(info["labels"])
    counts = labels.sum(0) if labels.ndim == 2 else np.bincount(labels, minlength=len(names))
    return int(np.argmin(counts))


# Settings that change a run's result. A run already in the folder (finished or cut short) must
# have been started with the same ones, or the table would mix runs of different recipes.
# Runtime settings (device, workers, checkpoint and log intervals, amp, which only acts on a
# GPU) may differ.
_RESULT_KEYS = (*ClassifierConfig.RESUME_KEYS, "steps", "epochs", "lr", "weight_decay", "warmup", "n_test",
                "weights", "generator", "skip_bad", "model_kwargs")


def check_same_settings(run_dir: Path, cfg: ClassifierConfig) -> None:
    """Raises ValueError naming each setting of the run in ``run_dir`` (its config.json) that
    differs from ``cfg``. A setting the saved config lacks (a run from before it existed) counts
    as its default, as --resume does."""
    saved_path = run_dir / "config.json"
    if not saved_path.exists():
        return
    saved = json.loads(saved_path.read_text())
    defaults = ClassifierConfig()
    # through JSON, so tuples and lists (model_kwargs) compare equal
    norm = lambda v: json.loads(json.dumps(v))  # noqa: E731
    diff = [f"{k}={saved.get(k, getattr(defaults, k))!r} (asked: {getattr(cfg, k)!r})" for k in _RESULT_KEYS
            if norm(saved.get(k, getattr(defaults, k))) != norm(getattr(cfg, k))]
    if diff:
        raise ValueError(f"compare: {run_dir} holds a run with other settings: {', '.join(diff)}; "
                         "pass another --out, or the same settings to continue this compare")


def _balanced_accuracy(metrics: dict) -> float:
    """metrics.json's balanced accuracy; a run finished before that key existed (a compare
    folder picked up again) has it recomputed from its per-class recalls, which is the same
    mean over the classes present in the test set."""
    if "balanced_accuracy" in metrics:
        return metrics["balanced_accuracy"]
    return float(np.mean([r for r in metrics["per_class_recall"] if r is not None]))


_COLUMNS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "tail_recall")


def _seeds_text(seeds: int) -> str:
    return "1 seed" if seeds == 1 else f"{seeds} seeds (mean +- std)"


def _mixing_text(c: dict) -> str:
    """The recipe's mixing options, when they are not the defaults (a compare.json written before
    they existed has neither)."""
    parts = []
    if c.get("mix_start"):
        parts.append(f"policies mix from step {c['mix_start'] + 1} (the first {c['mix_start']} unmixed)")
    if c.get("policy_kwargs"):
        parts.append(f"policy options {json.dumps(c['policy_kwargs'])}")
    return "".join(f"; {p}" for p in parts)


def format_table(result: dict) -> str:
    """The markdown table: mean +- std over seeds per cell, or the run's value with one seed
    (a std of one run says nothing, so none is printed)."""
    c = result["config"]
    tail_name = result["classes"][result["tail_class"]]
    one = result["seeds"] == 1
    lines = [f"{c['model']} on {c['data']} ({c['img_size']} px, imbalance {c['imbalance']}, {c['steps']} steps, "
             f"batch {c['batch_size']}, lr {c['lr']:g}, {c['warmup']} warm-up steps), {_seeds_text(result['seeds'])}; "
             f"tail class: {tail_name}" + _mixing_text(c), "",
             "| policy | accuracy | balanced acc. | macro-F1 | AUROC | tail recall |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for p in result["policies"]:
        r = result["results"][p]
        cell = lambda k: f"{r[k]['mean']:.3f}" + ("" if one else f" +- {r[k]['std']:.3f}")  # noqa: E731
        lines.append(f"| {p} | " + " | ".join(cell(k) for k in _COLUMNS) + " |")
    return "\n".join(lines)


def save_plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pols = result["policies"]
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "tail_recall")
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(pols) + 1.5), 3.2), dpi=110)
    w = 0.8 / len(keys)
    for i, k in enumerate(keys):
        m = [result["results"][p][k]["mean"] for p in pols]
        s = [result["results"][p][k]["std"] for p in pols] if result["seeds"] > 1 else None
        ax.bar(np.arange(len(pols)) + i * w, m, w, yerr=s, capsize=2, label=k.replace("_", " "))
    # ticks under the middle of each policy's group of bars; the legend outside the axes so
    # it never hides a short bar
    ax.set_xticks(np.arange(len(pols)) + w * (len(keys) - 1) / 2, pols, rotation=25, fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(f"{result['config']['model']} on {result['config']['data']}, {_seeds_text(result['seeds'])}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def save_loss_plot(out: Path, policies, seeds: int, path) -> None:
    """Training loss against step per policy (mean over seeds of the logged points), from each
    run's log.csv. A classifier that collapsed to one constant prediction shows as a flat line:
    with one lam per batch, a batch's mean mixed target equals its unmixed mean, so collapsed
    runs of different policies trace the same curve. Each curve is a centred moving average
    over about a fifteenth of its logged points (the axis label says how many)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    window = 1
    for policy in policies:
        curves = []
        for seed in range(seeds):
            log = out / f"{policy}-seed{seed}" / "log.csv"
            if log.exists():
                rows = np.atleast_1d(np.genfromtxt(log, delimiter=",", names=True))
                curves.append((rows["step"], rows["loss"]))
        if not curves:
            continue
        n = min(len(c[0]) for c in curves)
        steps, loss = curves[0][0][:n], np.mean([c[1][:n] for c in curves], axis=0)
        # One logged batch's loss swings by +-0.5 under mixing: a centred moving average over
        # about a fifteenth of the run keeps several policies' curves apart.
        window = max(1, n // 15)
        ax.plot(steps, _moving_average(loss, window), lw=1.2, label=policy)
    ax.set_xlabel("step")
    # soft-target cross-entropy, or binary cross-entropy per label on multi-label data
    ax.set_ylabel("training loss" + (f" (mean of {window} logged points)" if window > 1 else ""), fontsize=8)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    save_figure(fig, path)


def _moving_average(v: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of the same length; the ends average over the points they have."""
    if window <= 1:
        return v
    kernel = np.ones(window)
    return np.convolve(v, kernel, mode="same") / np.convolve(np.ones_like(v), kernel, mode="same")
