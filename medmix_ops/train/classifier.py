"""`medmix train-classifier`: any timm model trained with any mixing policy, resumable exactly,
single device or torchrun DDP, evaluated on a held-out split (metrics.json, confusion.png)."""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .common import (Batches, CHECKPOINT, FiniteLosses, Logger, ResumableSampler, Runtime, gather_rng_states,
                     load_checkpoint, refuse_to_overwrite, rng_state, save_checkpoint, seed_everything,
                     set_rng_state, timer, write_json)
from .data import add_intensity_argument, build_datasets
from .metrics import classification_metrics, multilabel_metrics, save_confusion_png


@dataclass
class ClassifierConfig:
    data: str = "synthlesion"
    model: str = "convnext_atto"
    policy: str = "none"
    img_size: int = 64
    batch_size: int = 32
    steps: int = 300
    epochs: int | None = None
    # 2e-3 after 20 warm-up steps collapsed every SynthLesion run to one constant prediction
    # for hundreds of steps (benchmarks/results/compare-cpu-synthlesion-1500steps-loss.png)
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup: int = 100
    seed: int = 0
    imbalance: float | None = None
    n_train: int = 2048
    n_test: int = 512
    num_workers: int = 0
    amp: bool = True
    device: str = "auto"
    ckpt_every: int = 100
    log_every: int = 10
    weights: str | None = None
    generator: str | None = None
    skip_bad: bool = False
    intensity: str = "bit_depth"  # ImageFolder images: scaled by bit depth or per-image min / max
    model_kwargs: dict = field(default_factory=dict)
    policy_kwargs: dict = field(default_factory=dict)  # the policy's own options (alpha, prob, q, ...)
    # Steps trained without mixing before the policy starts: a policy that reads the classifier
    # being trained (meddiffusemix's saliency) gets a model that has begun to find the lesion.
    mix_start: int = 0
    progress: bool = True
    stop_after: int | None = None  # stop (with a checkpoint) at this step: time-limited jobs

    # settings that must match for --resume to continue the same run
    RESUME_KEYS = ("data", "model", "policy", "img_size", "batch_size", "seed", "imbalance", "n_train",
                   "intensity", "policy_kwargs", "mix_start")


def model_kwargs_for(name: str, img_size: int) -> dict:
    """Models whose input size is part of their architecture get it (Swin, ViT families)."""
    if any(k in name for k in ("swin", "vit", "deit", "beit", "eva")):
        return {"img_size": img_size}
    return {}


def create_model(cfg: ClassifierConfig, num_classes: int) -> torch.nn.Module:
    import timm

    kwargs = dict(model_kwargs_for(cfg.model, cfg.img_size), **cfg.model_kwargs)
    try:
        model = timm.create_model(cfg.model, pretrained=False, num_classes=num_classes, **kwargs)
    except RuntimeError as e:  # timm's "Unknown model"
        raise ValueError(f"--model {cfg.model!r}: {e}") from e
    if cfg.weights:  # local weights only: nothing is fetched from a hub
        state = torch.load(cfg.weights, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        own = model.state_dict()
        kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        missing = sorted(set(own) - set(kept))
        model.load_state_dict(kept, strict=False)
        print(f"loaded {len(kept)} tensors from {cfg.weights}; re-initialised {len(missing)} "
              f"(e.g. the classifier head for {num_classes} classes)")
    return model


def build_policy(cfg: ClassifierConfig, num_classes: int, info: dict, model):
    if cfg.policy == "none":
        return None
    from ..policies import check_multi_label_policy, make_policy

    kwargs = {}
    if cfg.generator:
        from ..models import load_generator

        gen = load_generator(cfg.generator)
        if cfg.policy == "varimix":
            kwargs["translator"] = gen.translator()
        elif cfg.policy == "genmix":
            kwargs["generator"] = gen.sampler()
        elif cfg.policy == "meddiffusemix":
            kwargs["generator"] = gen.inpainter()
    if cfg.policy == "meddiffusemix":
        kwargs["model"] = model
    if info.get("multi_label"):
        check_multi_label_policy(cfg.policy, cfg.data)
    # objects the script builds (from --generator, the classifier, the dataset), not JSON values
    clash = sorted(set(cfg.policy_kwargs) & {"num_classes", "dataset", "model", "translator", "generator"})
    if clash:
        raise ValueError(f"--policy-kwargs cannot set {', '.join(clash)}: the training script passes it "
                         "(a generator checkpoint goes to --generator)")
    try:
        return make_policy(cfg.policy, num_classes, dataset=info.get("synthlesion"), **kwargs, **cfg.policy_kwargs)
    except TypeError as e:  # an option this policy does not take
        raise ValueError(f"--policy-kwargs {json.dumps(cfg.policy_kwargs)} for {cfg.policy}: {e}") from e


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * F.log_softmax(logits.float(), dim=1), dim=1).mean()


def multilabel_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy per label against the mixed targets [B, K] in [0, 1] (a mixed
    multi-hot target is a per-label probability), averaged over B and K."""
    return F.binary_cross_entropy_with_logits(logits.float(), target)


def lr_at(step: int, cfg: ClassifierConfig, total: int) -> float:
    """Linear warm-up, then cosine decay to 1% of the base rate."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, total - cfg.warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train_classifier(cfg: ClassifierConfig, out: str, resume: bool = False) -> dict:
    out = Path(out)
    refuse_to_overwrite(Path(out), resume)
    rt = Runtime(cfg.device)
    try:
        return _train(cfg, out, resume, rt)
    finally:
        rt.close()


def _train(cfg: ClassifierConfig, out: Path, resume: bool, rt: Runtime) -> dict:
    from tqdm import tqdm

    seed_everything(cfg.seed)
    train_ds, test_ds, names, info = build_datasets(cfg.data, cfg.img_size, imbalance=cfg.imbalance,
                                                    n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.seed,
                                                    skip_bad=cfg.skip_bad, intensity=cfg.intensity)
    if info.get("skipped") and rt.main:
        print(f"skipped {len(info['skipped'])} unreadable images (first: {info['skipped'][0]})")
    K = len(names)
    multi_label = bool(info.get("multi_label"))
    loss_of = multilabel_loss if multi_label else soft_cross_entropy
    model = create_model(cfg, K).to(rt.device)
    if rt.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    policy = build_policy(cfg, K, info, model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_ds) / rt.world / cfg.batch_size)
    total = cfg.steps if cfg.epochs is None else cfg.epochs * steps_per_epoch
    if policy is None and (cfg.policy_kwargs or cfg.mix_start):
        raise ValueError("--policy-kwargs and --mix-start need a --policy other than none")
    if policy is not None and cfg.mix_start >= total:
        raise ValueError(f"--mix-start {cfg.mix_start} leaves no step for --policy {cfg.policy} "
                         f"({total} training steps)")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, cfg, total))
    amp = cfg.amp and rt.device.type == "cuda"
    sampler = ResumableSampler(len(train_ds), cfg.seed, rt.rank, rt.world)
    policy_gen = torch.Generator().manual_seed(cfg.seed * 7919 + rt.rank)
    step = 0
    if resume:
        ckpt_path = out / CHECKPOINT
        ckpt = load_checkpoint(ckpt_path, "classifier",
                               {k: getattr(cfg, k) for k in ClassifierConfig.RESUME_KEYS})
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        sampler.load_state(ckpt["sampler"])
        set_rng_state(ckpt["rng"][rt.rank] if rt.rank < len(ckpt["rng"]) else ckpt["rng"][0],
                      {"policy": policy_gen})
        step = int(ckpt["step"])
        if rt.main:
            print(f"resuming from step {step} ({ckpt_path})")
    ddp_model = model
    if rt.world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)
    loader_gen = torch.Generator().manual_seed(cfg.seed)  # worker seeds, not the global RNG
    loader = torch.utils.data.DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler,
                                         num_workers=cfg.num_workers, drop_last=False,
                                         pin_memory=rt.device.type == "cuda", generator=loader_gen,
                                         persistent_workers=False)
    log = Logger(out, enabled=rt.main, resume_step=step)
    if rt.main:
        write_json(out / "config.json", asdict(cfg) | {"classes": names, "world_size": rt.world})
    bar = tqdm(total=total, initial=step, desc="train-classifier", disable=not (rt.main and cfg.progress))
    batches = Batches(loader, sampler)
    t0 = timer()
    model.train()
    stop_at = total if cfg.stop_after is None else min(total, cfg.stop_after)
    watch = FiniteLosses(rt.device)  # inf / NaN, read at log and checkpoint steps only
    while step < stop_at:
        x, y_host, idx = batches.next()
        x = x.to(rt.device, non_blocking=True)
        if rt.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        if policy is not None and step >= cfg.mix_start:
            translator = getattr(policy, "translator", None)
            if hasattr(translator, "set_batch"):  # SynthLesion's oracle needs the scenes
                translator.set_batch(idx.tolist(), y_host)
            # the host labels: the policy range-checks them for free and moves them without
            # a sync (labels already on a GPU would cost one per step to check)
            x, target = policy(x, y_host, generator=policy_gen)
        elif multi_label:
            target = y_host.to(rt.device, non_blocking=True).float()
        else:
            target = F.one_hot(y_host.to(rt.device, non_blocking=True), K).float()
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = ddp_model(x)
        loss = loss_of(logits, target)
        watch.update(step + 1, loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        bar.update(1)
        log_now = step % cfg.log_every == 0 or step == total
        if log_now or step % cfg.ckpt_every == 0 or step == stop_at:
            watch.check(step)
        if log_now:
            dt = timer() - t0
            log.log(step, loss=loss.item(), lr=sched.get_last_lr()[0], images_per_s=cfg.log_every * x.shape[0] / dt)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            t0 = timer()
        if step % cfg.ckpt_every == 0 or step in (total, stop_at):
            _checkpoint(out, cfg, rt, model, opt, sched, batches.state(), step, policy_gen)
    bar.close()
    log.close()
    if step < total:  # --stop-after: the checkpoint is written; --resume continues the run
        if rt.main:
            print(f"stopped at step {step} of {total}; continue with --resume")
        return dict(stopped_at=step, steps=total)
    metrics = evaluate(model, test_ds, K, rt, cfg, multi_label) if rt.main else {}
    if rt.main:
        metrics = dict(metrics, classes=names, steps=total, policy=cfg.policy, model=cfg.model)
        write_json(out / "metrics.json", metrics)
        if not multi_label:
            save_confusion_png(metrics["confusion_matrix"], names, out / "confusion.png")
    rt.barrier()
    return metrics


def _checkpoint(out, cfg, rt, model, opt, sched, sampler_state, step, policy_gen) -> None:
    states = gather_rng_states(rng_state({"policy": policy_gen}), rt)
    if rt.main:
        save_checkpoint(out / CHECKPOINT, dict(
            kind="classifier", config={k: getattr(cfg, k) for k in ClassifierConfig.RESUME_KEYS},
            step=step, model=model.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
            sampler=sampler_state, rng=states))
    rt.barrier()


@torch.no_grad()
def evaluate(model, test_ds, K, rt, cfg, multi_label: bool = False) -> dict:
    """Test-set metrics of ``model`` on the main process: classification_metrics of softmax
    probabilities, or multilabel_metrics of per-label sigmoids."""
    model.eval()
    cuda = rt.device.type == "cuda"
    loader = torch.utils.data.DataLoader(test_ds, batch_size=max(64, cfg.batch_size),
                                         num_workers=cfg.num_workers, pin_memory=cuda)
    probs, labels = [], []
    for x, y, _ in loader:
        # pinned batches, copied without a sync; the [N, K] probabilities stay on the device
        # and come back once, so the GPU never idles waiting for a per-batch read-back
        x = x.to(rt.device, non_blocking=True)
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=cfg.amp and cuda):
            logits = model(x)
        probs.append(logits.float().sigmoid() if multi_label else logits.float().softmax(1))
        labels.append(torch.as_tensor(y))
    model.train()
    if multi_label:
        return multilabel_metrics(torch.cat(probs).cpu(), torch.cat(labels))
    return classification_metrics(torch.cat(probs).cpu(), torch.cat(labels), K)


def add_arguments(p: argparse.ArgumentParser, *, single_run: bool = True) -> None:
    """train-classifier's options; single_run=False (compare) leaves out --policy, --resume
    and --stop-after, which compare sets per run (it always picks up where it stopped)."""
    d = ClassifierConfig()
    p.add_argument("--data", default=d.data, help="synthlesion, an ImageFolder directory or a MedMNIST .npz")
    p.add_argument("--model", default=d.model, help="any timm model name (built with pretrained=False)")
    if single_run:
        p.add_argument("--policy", default=d.policy, help="none, mixup, cutmix, saliencymix, spmix, varimix, "
                                                          "meddiffusemix or genmix")
    p.add_argument("--img-size", type=int, default=d.img_size, help="images resized to this side in pixels")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per training step")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int, default=d.steps, help="training steps")
    g.add_argument("--epochs", type=int, help="passes over the training split, instead of --steps")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW peak learning rate (linear warm-up, then cosine "
                   "decay to 1%% of it)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--warmup", type=int, default=d.warmup, help="warm-up steps of the learning rate")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the data order, the policy's draws and the weights")
    p.add_argument("--imbalance", type=float, help="SynthLesion tail / head class frequency ratio, e.g. 0.05 (default: balanced)")
    p.add_argument("--n-train", type=int, default=d.n_train, help="SynthLesion training images")
    p.add_argument("--n-test", type=int, default=d.n_test, help="SynthLesion held-out images")
    p.add_argument("--num-workers", type=int, default=d.num_workers, help="DataLoader worker processes")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on GPU")
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"], help="auto: cuda when available")
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every, help="steps between (atomic) checkpoints")
    p.add_argument("--log-every", type=int, default=d.log_every, help="steps between log.csv rows")
    p.add_argument("--model-kwargs", default="{}", help='extra timm.create_model arguments as JSON, e.g. '
                   '\'{"embed_dim": 32, "depths": [1, 1, 1, 1]}\' for a shrunken SwinV2')
    p.add_argument("--policy-kwargs", default="{}", help="the policy's own options as JSON, e.g. "
                   '\'{"alpha": 0.4, "prob": 0.5}\' (mixup), \'{"q": 0.2}\' (meddiffusemix); see the README\'s '
                   "policy table" + ("" if single_run else "; these options go to every policy but none, or give each "
                                           'policy its own: \'{"mixup": {"alpha": 0.4}, "spmix": {"prob": 0.5}}\''))
    p.add_argument("--mix-start", type=int, default=d.mix_start, help="train this many steps unmixed before the policy "
                   "starts (a classifier that meddiffusemix's saliency can use)")
    p.add_argument("--weights", help="a local weights file for the model (never downloaded)")
    p.add_argument("--generator", help="a generator checkpoint (train-generator) for varimix / genmix / meddiffusemix "
                   "(default on SynthLesion: its built-in oracle)")
    p.add_argument("--skip-bad", action="store_true", help="leave out unreadable images (counted)")
    add_intensity_argument(p)
    p.add_argument("--out", required=True, help="output directory")
    if not single_run:
        p.set_defaults(policy=d.policy, resume=False, stop_after=None)
        return
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--stop-after", type=int, help="stop at this step with a checkpoint (for time-limited "
                   "jobs); --resume continues")


def config_from_args(args) -> ClassifierConfig:
    cfg = ClassifierConfig(data=args.data, model=args.model, policy=args.policy, img_size=args.img_size,
                           batch_size=args.batch_size, steps=args.steps, epochs=args.epochs, lr=args.lr,
                           weight_decay=args.weight_decay, warmup=args.warmup, seed=args.seed,
                           imbalance=args.imbalance, n_train=args.n_train, n_test=args.n_test,
                           num_workers=args.num_workers, amp=not args.no_amp, device=args.device,
                           ckpt_every=args.ckpt_every, log_every=args.log_every, weights=args.weights,
                           generator=args.generator, skip_bad=args.skip_bad, intensity=args.intensity,
                           model_kwargs=_json_dict(args.model_kwargs, "--model-kwargs"),
                           policy_kwargs=_json_dict(args.policy_kwargs, "--policy-kwargs"), mix_start=args.mix_start,
                           stop_after=args.stop_after)
    validate_config(cfg)
    return cfg


def _json_dict(text: str, option: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{option} must be a JSON object, got {text!r} ({e})") from e
    if not isinstance(value, dict):
        raise ValueError(f"{option} must be a JSON object, got {text!r}")
    return value


def validate_config(cfg: ClassifierConfig) -> None:
    from ..policies import POLICIES

    for name in ("img_size", "batch_size", "n_train", "n_test", "ckpt_every", "log_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.steps is not None and cfg.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {cfg.steps}")
    if cfg.stop_after is not None and cfg.stop_after < 1:
        raise ValueError(f"--stop-after must be >= 1, got {cfg.stop_after}")
    if cfg.epochs is not None and cfg.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {cfg.epochs}")
    if not isinstance(cfg.mix_start, int) or cfg.mix_start < 0:
        raise ValueError(f"--mix-start must be an int >= 0, got {cfg.mix_start!r}")
    from ..data.folder import INTENSITY_MODES

    if cfg.intensity not in INTENSITY_MODES:
        raise ValueError(f"--intensity must be one of {INTENSITY_MODES}, got {cfg.intensity!r}")
    if cfg.policy != "none" and cfg.policy not in POLICIES:
        raise ValueError(f"--policy must be none or one of {', '.join(POLICIES)}, got {cfg.policy!r}")
    if cfg.lr <= 0 or not math.isfinite(cfg.lr):
        raise ValueError(f"--lr must be > 0, got {cfg.lr}")
    if cfg.weights and not Path(cfg.weights).is_file():
        raise FileNotFoundError(f"--weights {cfg.weights}: no such file")
