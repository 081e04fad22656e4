"""The `medmix` command (also `python -m medmix_ops.cli`)."""
from __future__ import annotations

import argparse
import os
import sys


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


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medmix", description="medmix_ops: fused mixing-augmentation kernels")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="blend generated image pairs with every backend; table + preview PNG")
    d.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    d.add_argument("--batch", type=_positive_int, default=32, help="images per batch (default: 32)")
    d.add_argument("--size", type=_positive_int, default=128, help="image side in pixels (default: 128)")
    d.add_argument("--sigma", type=float, default=4.0, help="blend softness in pixels (default: 4)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quick", action="store_true", help="shorter timing loops")
    d.set_defaults(func=_cmd_demo)

    i = sub.add_parser("info", help="versions, extension build and available backends")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _prepare_triton()
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, PermissionError) as e:
        print(f"medmix {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
