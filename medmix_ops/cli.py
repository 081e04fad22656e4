"""The `medmix` command (also `python -m medmix_ops.cli`)."""
from __future__ import annotations

import argparse
import functools
import os
import sys
import types


def _prepare_triton() -> None:
    """Without a GPU, run Triton kernels in its interpreter. Must happen before triton is
    imported, so the CLI decides it first thing; an explicit TRITON_INTERPRET is respected."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(out_dir=args.out, batch=args.batch, size=args.size, sigma=args.sigma,
             seed=args.seed, quick=args.quick)
    return 0


def _cmd_info(args) -> int:
    import torch

    from . import __version__, _backend

    print(f"medmix_ops {__version__}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    err = _backend.extension_error()
    print(f"extension: {'loaded' if err is None else 'NOT available: ' + err}")
    if err is None:
        print(f"  CUDA kernels compiled in: {_backend.has_kernel('gaussian_blend', 'CUDA')}")
    terr = _backend.triton_error()
    if terr is None:
        import triton

        mode = "interpreter" if _backend.triton_interpreted() else "compiled"
        print(f"triton {triton.__version__} ({mode})")
    else:
        print(f"triton: not available ({terr})")
    for dev in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        print(f"backends for {dev} tensors: {', '.join(_backend.available_backends('gaussian_blend', dev))}")
    return 0


def _cmd_fidelity(args) -> int:
    from . import fidelity

    result = fidelity.run_fidelity(n=args.n, size=args.size, seed=args.seed, batch=args.batch,
                                   names=args.policies or fidelity.FIDELITY_POLICIES)
    print(fidelity.format_table(result))
    if args.json:
        print(f"json: {fidelity.save_json(result, args.json)}")
    if args.plot:
        print(f"plot: {fidelity.save_plot(result, args.plot)}")
    return 0


def _load_data(spec: str, size: int, n: int, seed: int, intensity: str = "bit_depth"):
    """--data synthlesion | an ImageFolder directory | a MedMNIST .npz file."""
    from .data import ImageFolder, MedMNIST, SynthLesion

    if spec == "synthlesion":
        ds = SynthLesion(max(n, 2), size=size, seed=seed)
        return ds, list(ds.classes)
    if spec.endswith(".npz"):
        ds = MedMNIST(spec)
        return ds, [str(c) for c in range(ds.num_classes)]
    from pathlib import Path

    from .train.data import split_folders

    splits = split_folders(Path(spec)) if Path(spec).is_dir() else None
    # a split tree: its train/ part
    ds = ImageFolder(splits[0] if splits else spec, size=size, intensity=intensity)
    return ds, ds.classes


def _cmd_preview(args) -> int:
    import torch

    from .data import SynthLesion
    from .policies import check_multi_label_policy, make_policy
    from .preview import save_policy_preview

    ds, names = _load_data(args.data, args.size, args.n, args.seed, args.intensity)
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(ds), generator=g)[:max(args.n, 2)].tolist()
    items = [ds[i] for i in idx]
    x = torch.stack([it[0] for it in items])
    y = torch.stack([torch.as_tensor(it[1]) for it in items])  # [n] classes or [n, K] multi-label
    seg = torch.stack([it[2] for it in items]) if isinstance(ds, SynthLesion) else None
    if y.dim() == 2:
        check_multi_label_policy(args.policy, args.data, none_ok=False)
    policy = make_policy(args.policy, len(names), dataset=ds)
    if hasattr(policy, "translator") and hasattr(policy.translator, "set_batch"):
        policy.translator.set_batch(idx, y)
    path = save_policy_preview(policy, x, y, names, args.out, rows=args.n, seg=seg,
                               generator=torch.Generator().manual_seed(args.seed))
    print(f"preview: {path}")
    return 0


def _cmd_bench(args) -> int:
    from . import bench

    result = bench.run(device=args.device, quick=args.quick, names=args.ops or bench.GROUPS,
                       e2e=not args.no_end_to_end)
    print(bench.format_table(result))
    path = args.json or (bench.default_json_path(result) if args.save else None)
    if path:
        print(f"\njson: {bench.save_json(result, path)}")
    if args.plot:
        print(f"plot: {bench.save_plot(result, args.plot)}")
    return 0


def _cmd_train_classifier(args) -> int:
    from .train.classifier import config_from_args, train_classifier

    metrics = train_classifier(config_from_args(args), args.out, resume=args.resume)
    # no metrics on other DDP ranks, nor for a run stopped by --stop-after (it said so)
    if metrics and "accuracy" in metrics:
        per = "per-label" if metrics.get("multi_label") else "per-class"
        print(f"accuracy {metrics['accuracy']:.3f}, balanced accuracy {metrics['balanced_accuracy']:.3f}, "
              f"macro-F1 {metrics['macro_f1']:.3f}, AUROC {metrics['auroc']:.3f}; "
              f"{per} recall {[None if r is None else round(r, 3) for r in metrics['per_class_recall']]}")
        print(f"metrics: {args.out}/metrics.json"
              + ("" if metrics.get("multi_label") else f", confusion matrix: {args.out}/confusion.png"))
    return 0


def _cmd_train_generator(args) -> int:
    from .train.generator import config_from_args, train_generator

    result = train_generator(config_from_args(args), args.out, resume=args.resume)
    print(f"checkpoint: {result['checkpoint']}")
    return 0


def _cmd_sample(args) -> int:
    from .train.generator import sample_to

    print(f"samples: {sample_to(args.out, args.ckpt, args.n, args.classes, args.seed)}")
    return 0


def _cmd_compare(args) -> int:
    from .train.classifier import config_from_args
    from .train.compare import format_table, run_compare

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    base = config_from_args(args)
    for p in policies:
        from .policies import POLICIES

        if p != "none" and p not in POLICIES:
            raise ValueError(f"--policies: unknown policy {p!r}; choose from none, {', '.join(POLICIES)}")
    result = run_compare(base, policies, args.seeds, args.out)
    print(format_table(result))
    print(f"table: {args.out}/compare.md, json: {args.out}/compare.json, plot: {args.out}/compare.png")
    return 0


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


class _DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (none said for flags, unset options and
    required ones)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and not action.required and "default" not in text
                and not any(action.default is v for v in (None, False, argparse.SUPPRESS))):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medmix", description="medmix_ops: fused mixing-augmentation kernels")
    subparsers = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # every subcommand's parser with the defaults formatter
    sub = types.SimpleNamespace(add_parser=functools.partial(subparsers.add_parser,
                                                             formatter_class=_DefaultsHelpFormatter))

    d = sub.add_parser("demo", help="blend generated image pairs with every backend; table + preview PNG")
    d.add_argument("--out", default="demo_out", help="output folder")
    d.add_argument("--batch", type=_positive_int, default=32, help="images per batch")
    d.add_argument("--size", type=_positive_int, default=128, help="image side in pixels")
    d.add_argument("--sigma", type=float, default=4.0, help="blend softness (Gaussian sigma) in pixels")
    d.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    d.add_argument("--quick", action="store_true", help="shorter timing loops")
    d.set_defaults(func=_cmd_demo)

    i = sub.add_parser("info", help="versions, extension build and available backends")
    i.set_defaults(func=_cmd_info)

    from .fidelity import FIDELITY_POLICIES
    from .policies import POLICIES

    f = sub.add_parser("fidelity", help="label mismatch of each policy on SynthLesion (table, JSON, plot)")
    f.add_argument("--n", type=_positive_int, default=512, help="SynthLesion images")
    f.add_argument("--size", type=_positive_int, default=64, help="image side in pixels")
    f.add_argument("--batch", type=_positive_int, default=64, help="images per mixed batch")
    f.add_argument("--seed", type=int, default=0, help="seed of the images and the policies' draws")
    f.add_argument("--policies", nargs="+", choices=FIDELITY_POLICIES, help="policies to measure (default: all)")
    f.add_argument("--json", help="write the results as JSON here")
    f.add_argument("--plot", help="write a bar chart PNG here")
    f.set_defaults(func=_cmd_fidelity)

    from .bench import GROUPS

    bn = sub.add_parser("bench", help="every op and policy against its baselines, side by side")
    bn.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the ops and baselines run")
    bn.add_argument("--quick", action="store_true", help="one size per op, short timing loops")
    bn.add_argument("--ops", nargs="+", choices=GROUPS, help="groups to time (default: all)")
    bn.add_argument("--json", help="write the results as JSON here")
    bn.add_argument("--save", action="store_true", help="write benchmarks/results/<device>-<date>.json")
    bn.add_argument("--plot", help="write a speed-up chart PNG here")
    bn.add_argument("--no-end-to-end", action="store_true", help="skip the training-step share")
    bn.set_defaults(func=_cmd_bench)

    from .train import classifier as _tc, generator as _tg
    from .train.data import add_intensity_argument

    tc = sub.add_parser("train-classifier", help="train a timm classifier with a mixing policy")
    _tc.add_arguments(tc)
    tc.set_defaults(func=_cmd_train_classifier)

    tg = sub.add_parser("train-generator", help="train an i2i (VariMix), dcgan or ddpm generator")
    _tg.add_arguments(tg)
    tg.set_defaults(func=_cmd_train_generator)

    sp = sub.add_parser("sample", help="synthetic images from a dcgan / ddpm checkpoint")
    sp.add_argument("--ckpt", required=True, help="a dcgan or ddpm checkpoint.pt from train-generator")
    sp.add_argument("--n", type=_positive_int, default=8, help="images per class")
    sp.add_argument("--classes", type=int, nargs="+", help="class indices to sample (default: every class)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    sp.add_argument("-o", "--out", required=True, help="grid.png, or a directory for <class>/<i>.png")
    sp.set_defaults(func=_cmd_sample)

    cp = sub.add_parser("compare", help="the same classifier with each policy and several seeds",
                        description="One train-classifier run per policy and seed under OUT/<policy>-seed<i>/, "
                                    "then a table (mean +- std over seeds), JSON and plots. Run it again "
                                    "with the same arguments to continue an interrupted compare.")
    _tc.add_arguments(cp, single_run=False)
    cp.add_argument("--policies", default="none,mixup,cutmix,saliencymix,spmix,varimix,meddiffusemix,genmix",
                    help="comma-separated policies to train, one run per policy and seed")
    cp.add_argument("--seeds", type=_positive_int, default=3, help="runs per policy, with seeds --seed, --seed + 1, ...")
    cp.set_defaults(func=_cmd_compare)

    pv = sub.add_parser("preview", help="original | partner | mask | mixed, with soft labels")
    pv.add_argument("--policy", required=True, choices=POLICIES, help="the policy to show")
    pv.add_argument("--data", default="synthlesion", help="synthlesion, an ImageFolder dir or a MedMNIST .npz")
    pv.add_argument("--n", type=_positive_int, default=6, help="rows (images mixed)")
    pv.add_argument("--size", type=_positive_int, default=64, help="image side in pixels")
    pv.add_argument("--seed", type=int, default=0, help="seed of the images picked and the policy's draws")
    pv.add_argument("-o", "--out", default="preview.png", help="PNG path")
    add_intensity_argument(pv)
    pv.set_defaults(func=_cmd_preview)
    return p


def main(argv=None) -> int:
    _prepare_triton()  # before build_parser: it imports the policies, which import triton
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError, FloatingPointError) as e:
        print(f"medmix {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
