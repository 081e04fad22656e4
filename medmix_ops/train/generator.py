"""`medmix train-generator --kind i2i|dcgan|ddpm`: the generators the policies use, trained on
SynthLesion or the user's images, resumable exactly, with EMA weights for sampling."""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models import KINDS, build_generator_models
from .._transfer import to_device
from .common import (Batches, CHECKPOINT, EMA, FiniteLosses, Logger, ResumableSampler, Runtime, gather_rng_states,
                     load_checkpoint, refuse_to_overwrite, rng_state, save_checkpoint, seed_everything,
                     set_rng_state, write_json)
from .data import add_intensity_argument, build_datasets


@dataclass
class GeneratorConfig:
    kind: str = "dcgan"
    data: str = "synthlesion"
    img_size: int = 32
    batch_size: int = 32
    steps: int = 300
    lr: float = 2e-4
    seed: int = 0
    imbalance: float | None = None
    n_train: int = 2048
    width: int = 32
    channels: int = 3
    num_classes: int = 0
    T: int = 1000
    ema: float = 0.999
    device: str = "auto"
    amp: bool = True  # bf16 autocast on GPU
    ckpt_every: int = 100
    log_every: int = 10
    sample_every: int = 0
    skip_bad: bool = False
    intensity: str = "bit_depth"  # ImageFolder images: scaled by bit depth or per-image min / max
    progress: bool = True
    stop_after: int | None = None  # stop (with a checkpoint) at this step: time-limited jobs
    # i2i loss weights (StarGAN v2's)
    lambda_r1: float = 1.0
    lambda_sty: float = 1.0
    lambda_ds: float = 1.0
    lambda_cyc: float = 1.0

    RESUME_KEYS = ("kind", "data", "img_size", "batch_size", "seed", "width", "channels", "num_classes", "T",
                   "intensity")


def train_generator(cfg: GeneratorConfig, out: str, resume: bool = False) -> dict:
    refuse_to_overwrite(Path(out), resume)
    rt = Runtime(cfg.device)
    try:
        return _train(cfg, Path(out), resume, rt)
    finally:
        rt.close()


def _train(cfg: GeneratorConfig, out: Path, resume: bool, rt: Runtime) -> dict:
    from tqdm import tqdm

    if cfg.kind not in KINDS:
        raise ValueError(f"--kind must be one of {KINDS}, got {cfg.kind!r}")
    seed_everything(cfg.seed)
    train_ds, _, names, info = build_datasets(cfg.data, cfg.img_size, imbalance=cfg.imbalance,
                                              n_train=cfg.n_train, n_test=1, seed=cfg.seed, skip_bad=cfg.skip_bad,
                                              intensity=cfg.intensity)
    if info.get("multi_label"):
        raise ValueError(f"--data {cfg.data} is multi-label; the generators are conditioned on one class "
                         "per image")
    cfg.num_classes = len(names)
    models = {k: m.to(rt.device) for k, m in build_generator_models(cfg.kind, cfg.num_classes, cfg.img_size,
                                                                     cfg.channels, cfg.width).items()}
    trained = [k for k in models if k != "d"]
    emas = {k: EMA(models[k], cfg.ema) for k in trained}
    betas = (0.0, 0.99) if cfg.kind == "i2i" else (0.5, 0.999)
    opts = {}
    if cfg.kind == "ddpm":
        opts["unet"] = torch.optim.AdamW(models["unet"].parameters(), lr=cfg.lr)
    else:
        opts["d"] = torch.optim.Adam(models["d"].parameters(), lr=cfg.lr, betas=betas)
        opts["g"] = torch.optim.Adam([p for k in trained for p in models[k].parameters()], lr=cfg.lr, betas=betas)
    if rt.world > 1:  # every rank starts from the same weights (same seed) and steps on averaged grads
        for o in opts.values():
            o.register_step_pre_hook(_average_gradients)
    sampler = ResumableSampler(len(train_ds), cfg.seed, rt.rank, rt.world)
    gen = torch.Generator().manual_seed(cfg.seed * 31 + rt.rank)  # noise, timesteps, latents
    step = 0
    if resume:
        ckpt = load_checkpoint(out / CHECKPOINT, "generator", {k: getattr(cfg, k) for k in GeneratorConfig.RESUME_KEYS})
        for k, m in models.items():
            m.load_state_dict(ckpt["models"][k])
        for k, e in emas.items():
            e.model.load_state_dict(ckpt["ema"][k])
        for k, o in opts.items():
            o.load_state_dict(ckpt["optimizers"][k])
        sampler.load_state(ckpt["sampler"])
        rngs = ckpt["rng"]
        set_rng_state(rngs[rt.rank] if rt.rank < len(rngs) else rngs[0], {"gen": gen})
        step = int(ckpt["step"])
        if rt.main:
            print(f"resuming from step {step} ({out / CHECKPOINT})")
    loader = torch.utils.data.DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=False,
                                         pin_memory=rt.device.type == "cuda",
                                         generator=torch.Generator().manual_seed(cfg.seed))
    log = Logger(out, enabled=rt.main, resume_step=step)
    if rt.main:
        write_json(out / "config.json", asdict(cfg) | {"classes": names})
    diffusion = None
    if cfg.kind == "ddpm":
        from ..models.ddpm import Diffusion

        diffusion = Diffusion(cfg.T)
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train-generator {cfg.kind}", disable=not (rt.main and cfg.progress))
    batches = Batches(loader, sampler)
    stop_at = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
    watch = FiniteLosses(rt.device)
    while step < stop_at:
        x, y, _ = batches.next()
        x = (x.to(rt.device, non_blocking=True).float() * 2 - 1)  # [0, 1] -> [-1, 1]
        if x.shape[1] != cfg.channels:
            x = x.mean(1, keepdim=True).expand(-1, cfg.channels, -1, -1)
        y = torch.as_tensor(y).to(rt.device, non_blocking=True)
        # bf16 needs no loss scaler; the weights, optimizer states and EMA stay fp32
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=cfg.amp and rt.device.type == "cuda"):
            if cfg.kind == "ddpm":
                losses = _ddpm_step(models, opts, diffusion, x, y, gen)
            elif cfg.kind == "dcgan":
                losses = _dcgan_step(models, opts, x, y, gen)
            else:
                losses = _i2i_step(models, opts, x, y, gen, cfg, step)
        for k, e in emas.items():
            e.update(models[k])
        watch.update(step + 1, *losses.values())
        step += 1
        bar.update(1)
        log_now = step % cfg.log_every == 0 or step == cfg.steps
        if log_now or step % cfg.ckpt_every == 0 or step in (cfg.steps, stop_at):
            watch.check(step)
        if log_now:
            # the step functions return device scalars: read to the host here only, not
            # with a sync per step
            losses = {k: float(v) for k, v in losses.items()}
            log.log(step, **losses)
            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
        if step % cfg.ckpt_every == 0 or step in (cfg.steps, stop_at):
            rngs = gather_rng_states(rng_state({"gen": gen}), rt)
            if rt.main:
                save_checkpoint(out / CHECKPOINT, dict(
                    kind="generator", config=asdict(cfg), step=step,
                    models={k: m.state_dict() for k, m in models.items()},
                    ema={k: e.model.state_dict() for k, e in emas.items()},
                    optimizers={k: o.state_dict() for k, o in opts.items()},
                    sampler=batches.state(), rng=rngs))
            rt.barrier()
    bar.close()
    log.close()
    if rt.world > 1:
        _check_replicas_agree(models, rt)
    if step < cfg.steps and rt.main:
        print(f"stopped at step {step} of {cfg.steps}; continue with --resume")
    return dict(steps=cfg.steps, stopped_at=step, checkpoint=str(out / CHECKPOINT), classes=names)


def _check_replicas_agree(models: dict, rt: Runtime) -> None:
    """Under torchrun every rank must hold the same weights at the end (averaged gradients,
    same start); a cheap checksum per model catches a rank that drifted."""
    sums = torch.stack([torch.stack([p.detach().double().sum() for p in m.parameters()]).sum()
                        for m in models.values()]).cpu()
    gathered = [None] * rt.world
    torch.distributed.all_gather_object(gathered, sums)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError(f"generator replicas diverged across ranks: {[g.tolist() for g in gathered]}")


def _average_gradients(opt, args, kwargs) -> None:
    """Optimizer pre-step hook under torchrun: all-reduce (mean) every gradient. DDP's own
    hooks cannot be used here: the GAN steps run several forward/backward passes per step and
    R1 needs a double backward."""
    world = torch.distributed.get_world_size()
    # Which parameters have no gradient (the mapping network on reference-style steps)
    # follows the step number, the same on every rank: skipping them keeps the ranks'
    # buffers alike, and Adam skips them as it would on one device.
    grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
    # One all-reduce per dtype over a flat buffer, not one per parameter: a generator has
    # ~100 parameter tensors, and each collective pays the interconnect's latency.
    for dtype in dict.fromkeys(g.dtype for g in grads):
        same = [g for g in grads if g.dtype == dtype]
        flat = torch.cat([g.reshape(-1) for g in same])
        torch.distributed.all_reduce(flat)
        flat.div_(world)
        for g, part in zip(same, flat.split([g.numel() for g in same])):
            g.copy_(part.view_as(g))


def _ddpm_step(models, opts, diffusion, x, y, gen):
    loss = diffusion.loss(models["unet"], x, y, gen)
    opts["unet"].zero_grad(set_to_none=True)
    loss.backward()
    opts["unet"].step()
    return dict(loss=loss.detach())


def _dcgan_step(models, opts, x, y, gen):
    g, d = models["g"], models["d"]
    z = to_device(torch.randn(x.shape[0], g.z_dim, generator=gen), x.device)
    fake = g(z, y)
    loss_d = F.softplus(-d(x, y)).mean() + F.softplus(d(fake.detach(), y)).mean()
    opts["d"].zero_grad(set_to_none=True)
    loss_d.backward()
    opts["d"].step()
    loss_g = F.softplus(-d(fake, y)).mean()  # non-saturating
    opts["g"].zero_grad(set_to_none=True)
    loss_g.backward()
    opts["g"].step()
    return dict(loss_d=loss_d.detach(), loss_g=loss_g.detach())


def _r1(d_out, x):
    (grad,) = torch.autograd.grad(d_out.sum(), x, create_graph=True)
    return 0.5 * grad.pow(2).flatten(1).sum(1).mean()


def _i2i_step(models, opts, x, y, gen, cfg, step):
    """One StarGAN v2 step: targets are a shuffled batch's classes; the style comes from the
    mapping network (latent-guided) on even steps and from a reference image on odd ones."""
    g, m, e, d = models["g"], models["m"], models["e"], models["d"]
    B = x.shape[0]
    perm = to_device(torch.randperm(B, generator=gen), x.device)
    y_trg, x_ref = y[perm], x[perm]
    latent = step % 2 == 0
    z1 = to_device(torch.randn(B, m.latent_dim, generator=gen), x.device)
    z2 = to_device(torch.randn(B, m.latent_dim, generator=gen), x.device)

    def style(z):
        return m(z, y_trg) if latent else e(x_ref)

    # discriminator: real vs fake of the target class, R1 on the reals
    x_real = x.detach().requires_grad_(True)
    out_real = d(x_real, y)
    with torch.no_grad():
        fake = g(x, style(z1))
    loss_d = (F.softplus(-out_real).mean() + F.softplus(d(fake, y_trg)).mean()
              + cfg.lambda_r1 * _r1(out_real, x_real))
    opts["d"].zero_grad(set_to_none=True)
    loss_d.backward()
    opts["d"].step()
    # generator, mapping network, style encoder
    s1 = style(z1)
    fake = g(x, s1)
    loss_adv = F.softplus(-d(fake, y_trg)).mean()
    loss_sty = (e(fake) - s1).abs().mean()
    x_ref2 = x[to_device(torch.randperm(B, generator=gen), x.device)]
    s2 = m(z2, y_trg) if latent else e(x_ref2)
    lambda_ds = cfg.lambda_ds * max(0.0, 1 - step / max(1, cfg.steps))  # diversity decays to 0
    loss_ds = (fake - g(x, s2).detach()).abs().mean()
    loss_cyc = (g(fake, e(x)) - x).abs().mean()
    loss_g = loss_adv + cfg.lambda_sty * loss_sty - lambda_ds * loss_ds + cfg.lambda_cyc * loss_cyc
    opts["g"].zero_grad(set_to_none=True)
    loss_g.backward()
    opts["g"].step()
    return dict(loss_d=loss_d.detach(), loss_adv=loss_adv.detach(), loss_sty=loss_sty.detach(),
                loss_ds=loss_ds.detach(), loss_cyc=loss_cyc.detach())


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = GeneratorConfig()
    p.add_argument("--kind", required=True, choices=KINDS, help="i2i: VariMix's translator; dcgan / ddpm: "
                   "class-conditional samplers for GenMix / MedDiffuseMix")
    p.add_argument("--data", default=d.data, help="synthlesion, an ImageFolder directory or a MedMNIST .npz")
    p.add_argument("--img-size", type=int, default=d.img_size, help="image side in pixels (dcgan: a power of "
                   "two; i2i, ddpm: a multiple of 16)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per training step")
    p.add_argument("--steps", type=int, default=d.steps, help="training steps")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the data order, the noise and the weights")
    p.add_argument("--imbalance", type=float, help="SynthLesion tail / head class frequency ratio, e.g. 0.05 "
                   "(default: balanced)")
    p.add_argument("--n-train", type=int, default=d.n_train, help="SynthLesion training images")
    p.add_argument("--width", type=int, default=d.width, help="base channel width")
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"], help="auto: cuda when available")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on GPU")
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every, help="steps between (atomic) checkpoints")
    p.add_argument("--log-every", type=int, default=d.log_every, help="steps between log.csv rows")
    p.add_argument("--skip-bad", action="store_true", help="leave out unreadable images (counted)")
    add_intensity_argument(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--stop-after", type=int, help="stop at this step with a checkpoint; --resume continues")


def config_from_args(args) -> GeneratorConfig:
    cfg = GeneratorConfig(kind=args.kind, data=args.data, img_size=args.img_size, batch_size=args.batch_size,
                          steps=args.steps, lr=args.lr, seed=args.seed, imbalance=args.imbalance,
                          n_train=args.n_train, width=args.width, device=args.device, amp=not args.no_amp,
                          ckpt_every=args.ckpt_every,
                          log_every=args.log_every, skip_bad=args.skip_bad, intensity=args.intensity,
                          stop_after=args.stop_after)
    for name in ("img_size", "batch_size", "steps", "n_train", "width", "ckpt_every", "log_every", "stop_after"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.kind == "dcgan" and (cfg.img_size < 8 or cfg.img_size & (cfg.img_size - 1)):
        raise ValueError(f"--img-size must be a power of two >= 8 for dcgan, got {cfg.img_size}")
    if cfg.kind in ("ddpm", "i2i") and cfg.img_size % 16:
        raise ValueError(f"--img-size must be a multiple of 16 for {cfg.kind}, got {cfg.img_size}")
    return cfg


def sample_to(path: str, ckpt: str, n: int, classes=None, seed: int = 0) -> str:
    """`medmix sample`: n images per class (or of `classes`) from a generator checkpoint, as a
    grid PNG (path ending in .png) or into path/<class>/<i>.png (GenMix's SyntheticFolder)."""
    from PIL import Image

    from ..models import load_generator
    from ..viz import save_grid, to_uint8_image

    gen = load_generator(ckpt)
    K = gen.config["num_classes"]
    classes = list(range(K)) if classes is None else classes
    g = torch.Generator().manual_seed(seed)
    if gen.kind == "i2i":
        raise ValueError("i2i checkpoints translate images (VariMix); sample from a dcgan or ddpm checkpoint")
    sampler = gen.sampler()
    rows = []
    for c in classes:
        rows.append(sampler(torch.full((n,), int(c), dtype=torch.long), generator=g))
    if str(path).endswith(".png"):
        return save_grid([[img for img in r] for r in rows], path, row_labels=[str(c) for c in classes])
    root = Path(path)
    for c, imgs in zip(classes, rows):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(imgs):
            Image.fromarray(to_uint8_image(img)).save(root / str(c) / f"{i:05d}.png")
    return str(root)
