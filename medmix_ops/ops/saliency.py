"""saliency: batched saliency maps (spectral residual, fine grained, input gradient, Grad-CAM)."""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from .. import _backend
from .._transfer import device_constant, to_device
from ..reference import saliency as _ref
from .._validation import check_tensor, is_int, is_real, opmath_dtype  # noqa: F401  (opmath_dtype: API symmetry)

OP = "saliency"
METHODS = ("spectral_residual", "fine_grained", "gradient", "gradcam")
IMAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

# src_mode values of medmix::saliency_map (csrc/common/saliency.h)
SRC_WEIGHTED, SRC_RELU_WEIGHTED, SRC_ABS_MAX, SRC_ABS_SUM, SRC_COMPLEX_ABS = range(5)


def saliency(x: torch.Tensor, method: str = "fine_grained", *, grads: torch.Tensor | None = None,
             size=None, reduce: str | None = None, sigma: float | None = None,
             backend: str = "auto") -> torch.Tensor:
    """Per-sample saliency maps, batched (one call for the whole batch, no host sync).

    Methods:
        ``"spectral_residual"``: Hou & Zhang 2007, as OpenCV-contrib's
            ``StaticSaliencySpectralResidual``: grey, 64x64 working grid, log amplitude minus its
            3x3 box filter, inverse FFT with the original phase, Gaussian smoothing (5 taps,
            sigma 8), squared, resized back. ``x``: images.
        ``"fine_grained"``: Montabone & Soto 2010, as OpenCV-contrib's
            ``StaticSaliencyFineGrained`` (the official SaliencyMix code's map): centre-surround
            on/off contrast of the smoothed intensity from an integral image at 6 scales.
            ``x``: images.
        ``"gradient"``: ``x`` is the gradient of a classifier score w.r.t. the input images;
            ``|x|`` reduced over channels (``reduce="max"`` or ``"sum"``), Gaussian smoothed
            (``sigma``, default 3 pixels; 0 = none).
        ``"gradcam"``: ``x`` is a layer's activations ``[B, K, h, w]`` and ``grads`` their
            gradients; channel weights = spatial mean of ``grads``, ``relu(sum_k w_k A_k)``,
            bilinear upsampling to ``size = (H, W)``.

    Args:
        x: ``Tensor[B, C, H, W]``. Images (spectral_residual, fine_grained): float in any range
            or uint8, grey = 0.299 R + 0.587 G + 0.114 B for 3 channels (RGB order), the channel
            mean otherwise. Gradients / activations: floating.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.

    Returns:
        ``Tensor[B, 1, H, W]`` float32 in [0, 1], min-max normalised per sample; a constant input
        gives all zeros (never NaN). Not differentiable (inputs are detached).

    Example:
        >>> s = saliency(images, "spectral_residual")            # [B, 1, H, W]
        >>> s = saliency(acts, "gradcam", grads=g, size=(224, 224))
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"{OP}: method must be one of {METHODS}, got {method!r}")
    _check_options(method, grads, size, reduce, sigma)
    dtypes = IMAGE_DTYPES if method in ("spectral_residual", "fine_grained") else FLOAT_DTYPES
    what = {"gradcam": "activations [B, K, h, w]", "gradient": "input gradients [B, C, H, W]"}
    check_tensor(OP, "x", x, ndim=4, layout=what.get(method, "images [B, C, H, W]"))
    if x.dtype not in dtypes:
        raise TypeError(f"{OP}({method}): x must have dtype in "
                        f"({', '.join(str(d).replace('torch.', '') for d in dtypes)}), got {x.dtype}")
    if min(x.shape) < 1:
        raise ValueError(f"{OP}: x must have B, C, H, W >= 1, got shape {list(x.shape)}")
    x = x.detach()
    if method == "gradcam":
        check_tensor(OP, "grads", grads, ndim=4, layout="[B, K, h, w]")
        if grads.shape != x.shape or grads.device != x.device:
            raise ValueError(f"{OP}(gradcam): grads must match the activations' shape and device "
                             f"{list(x.shape)} on {x.device}, got {list(grads.shape)} on {grads.device}")
        if not grads.dtype.is_floating_point:
            raise TypeError(f"{OP}(gradcam): grads must be floating, got {grads.dtype}")
        size = _check_size(size)
        grads = grads.detach()
    reduce = reduce if reduce is not None else "max"
    sigma = float(sigma) if sigma is not None else 3.0

    which = _backend.resolve(OP, backend, x.device)
    if which == "reference":
        if method == "spectral_residual":
            return _ref.spectral_residual(x)
        if method == "fine_grained":
            return _ref.fine_grained(x)
        if method == "gradient":
            return _ref.gradient(x, reduce, sigma)
        return _ref.gradcam(x, grads, size)

    ns = _backend.ops_namespace(which)
    B, C, H, W = x.shape
    dev = x.device
    none = device_constant("none", dev, lambda: torch.empty(0))
    identity = device_constant("identity", dev, lambda: torch.ones(1))
    q = x.dtype == torch.uint8  # OpenCV's 8-bit intermediates (see the reference)
    if method == "spectral_residual":
        small, flat = ns.saliency_map(x, SRC_WEIGHTED, _grey_weights(B, C, dev), identity, False,
                                      _ref.SPECTRAL_SIZE, _ref.SPECTRAL_SIZE, False, q, _no_gate(dev))
        spec = torch.view_as_real(torch.fft.fft2(small[:, 0])).contiguous()
        spec = ns.spectral_residual_filter(spec)
        z = torch.view_as_real(torch.fft.ifft2(torch.view_as_complex(spec))).contiguous()
        taps = device_constant("spectral_blur", dev, lambda: _ref.gaussian_taps_ksize(*_ref.SPECTRAL_BLUR))
        # a flat (constant) image gives zeros, not the spectrum of its rounding noise
        return ns.saliency_map(z, SRC_COMPLEX_ABS, none, taps, True, H, W, True, False, ~flat)[0]
    if method == "fine_grained":
        grey, flat = ns.saliency_map(x, SRC_WEIGHTED, _grey_weights(B, C, dev),
                                     device_constant("smooth", dev, _ref.smooth_taps),
                                     False, H, W, False, q, _no_gate(dev))
        # A flat smoothed grey map (rounding-level contrast) gives zeros, as in the reference:
        # on / max(on) would rescale its rounding noise to full range. The kernels take it as
        # a gate (no pass of its own, no host sync to skip one).
        return ns.fine_grained_saliency(grey, list(_ref.FINE_GRAINED_SCALES), ~flat)
    if method == "gradient":
        mode = SRC_ABS_MAX if reduce == "max" else SRC_ABS_SUM
        taps = device_constant(("gradient_blur", sigma), dev, lambda: _ref.gaussian_taps_sigma(sigma))
        return ns.saliency_map(x, mode, none, taps, False, H, W, True, False, _no_gate(dev))[0]
    weights = grads.float().mean(dim=(2, 3)).contiguous()
    return ns.saliency_map(x, SRC_RELU_WEIGHTED, weights, identity, False, size[0], size[1],
                           True, False, _no_gate(dev))[0]


def _grey_weights(B: int, C: int, device) -> torch.Tensor:
    return device_constant(("grey", B, C), device,
                           lambda: _ref.grey_weights(C).expand(B, C).contiguous())


def _no_gate(device) -> torch.Tensor:
    return device_constant("no_gate", device, lambda: torch.empty(0, dtype=torch.bool))


def _check_options(method, grads, size, reduce, sigma) -> None:
    if method != "gradcam" and (grads is not None or size is not None):
        raise ValueError(f"{OP}: grads= and size= apply to method='gradcam' only, got method={method!r}")
    if method != "gradient" and (reduce is not None or sigma is not None):
        raise ValueError(f"{OP}: reduce= and sigma= apply to method='gradient' only, got method={method!r}")
    if method == "gradcam" and grads is None:
        raise ValueError(f"{OP}(gradcam): grads= (the activations' gradients) is required")
    if reduce is not None and reduce not in ("max", "sum"):
        raise ValueError(f"{OP}(gradient): reduce must be 'max' or 'sum', got {reduce!r}")
    if sigma is not None:
        if not is_real(sigma):
            raise TypeError(f"{OP}(gradient): sigma must be a number, got {type(sigma).__name__}")
        if not math.isfinite(sigma) or not 0 <= sigma <= 100:
            raise ValueError(f"{OP}(gradient): sigma must be finite and in [0, 100], got {sigma}")


def _check_size(size):
    if size is None:
        raise ValueError(f"{OP}(gradcam): size=(H, W), the output size, is required")
    if isinstance(size, torch.Size):
        size = tuple(size)
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(is_int(s) and s >= 1 for s in size)):
        raise ValueError(f"{OP}(gradcam): size must be two positive ints (H, W), got {size!r}")
    return int(size[0]), int(size[1])


# ---- saliency from a classifier ------------------------------------------------------------------

def saliency_from_model(model: torch.nn.Module, x: torch.Tensor, target=None,
                        method: str = "gradient", layer=None, *, layout: str = "auto",
                        reduce: str | None = None, sigma: float | None = None,
                        backend: str = "auto", validate: bool = True) -> torch.Tensor:
    """Runs ``model`` forward and backward on ``x`` and returns its saliency ``[B, 1, H, W]``.

    Args:
        model: a classifier returning logits ``[B, K]`` (any timm model: ConvNeXt, Swin/SwinV2,
            ViT, ResNet, ...). Its mode (train/eval) is left as it is; no parameter gradients are
            accumulated, and BatchNorm running statistics are as they were before the call.
        x: float images ``[B, C, H, W]``, run in the model's parameter dtype (a bf16 batch and a
            float32 model, or the reverse, need no cast by the caller).
        target: class per sample (``[B]`` ints or one int) whose score is explained; ``None``
            uses the predicted class.
        method: ``"gradient"`` (input gradients) or ``"gradcam"``.
        layer: for gradcam, the module (or its dotted name) whose output is explained; default:
            the last feature stage of a timm model (``model.feature_info[-1]``), else ``layer4``.
        layout: how that layer's output is laid out: ``"NCHW"``, ``"NHWC"`` (timm Swin),
            ``"NLC"`` (ViT tokens, prefix tokens dropped) or ``"auto"``.
        validate: check a CUDA ``target`` tensor's classes (one host sync). False skips it
            and clamps the classes into range instead, so a bad class explains a wrong score
            but never raises a device assert. CPU targets are always checked.

    Returns:
        ``Tensor[B, 1, H, W]`` float32 in [0, 1], min-max normalised per sample.
    """
    if method not in ("gradient", "gradcam"):
        raise ValueError(f"saliency_from_model: method must be 'gradient' or 'gradcam', got {method!r}")
    check_tensor("saliency_from_model", "x", x, ndim=4, layout="[B, C, H, W]")
    if not x.dtype.is_floating_point:
        raise TypeError(f"saliency_from_model: x must be floating (normalised images), got {x.dtype}")
    if layout not in ("auto", "NCHW", "NHWC", "NLC"):
        raise ValueError(f"saliency_from_model: layout must be auto, NCHW, NHWC or NLC, got {layout!r}")
    if method == "gradcam" and (reduce is not None or sigma is not None):
        raise ValueError("saliency_from_model: reduce= and sigma= apply to method='gradient' only")
    # The model's own floating dtype: a bf16 batch meets a float32 classifier (or the reverse)
    # in mixed-precision loaders, and the forward would refuse the mismatch.
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), x.dtype)
    xg = x.detach().to(dtype, copy=True).requires_grad_(True)
    with torch.enable_grad(), _running_statistics_kept(model):
        if method == "gradient":
            (g,) = torch.autograd.grad(_target_score(model(xg), target, validate), xg)
            return saliency(g, "gradient", reduce=reduce, sigma=sigma, backend=backend)
        module = _resolve_layer(model, layer)
        store = {}

        def hook(_module, _inputs, output):
            store["act"] = output[0] if isinstance(output, (tuple, list)) else output

        handle = module.register_forward_hook(hook)
        try:
            logits = model(xg)
        finally:
            handle.remove()
        if "act" not in store:
            raise ValueError("saliency_from_model: the gradcam layer did not run in the forward pass")
        act = store["act"]
        (g,) = torch.autograd.grad(_target_score(logits, target, validate), act)
    a, g = _to_nchw(model, act, layout), _to_nchw(model, g, layout)
    return saliency(a, "gradcam", grads=g, size=tuple(x.shape[-2:]), backend=backend)


@contextlib.contextmanager
def _running_statistics_kept(model):
    """Restores what a train-mode forward changes in normalisation layers (BatchNorm's
    running mean / var and batch counter): a saliency pass is not a training batch, and
    MedDiffuseMix runs two a step. Copies on the device, no host sync."""
    saved = [(m, {k: (b, b.clone()) for k, b in m._buffers.items() if b is not None})
             for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.training and m.track_running_stats]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in saved:
                for k, (b, copy) in buffers.items():
                    m._buffers[k] = b  # the very tensor, in case the forward replaced it
                    b.copy_(copy)


def _target_score(logits: torch.Tensor, target, validate: bool = True) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError("saliency_from_model: the model must return logits [B, K], got "
                         f"{getattr(logits, 'shape', type(logits).__name__)}")
    B, K = logits.shape
    if target is None:
        target = logits.argmax(dim=1)
    elif is_int(target):
        if not 0 <= target < K:
            raise ValueError(f"saliency_from_model: target class {target} is not in [0, {K})")
        target = torch.full((B,), int(target), dtype=torch.long, device=logits.device)
    elif isinstance(target, torch.Tensor):
        if target.dtype.is_floating_point or target.dim() != 1 or target.shape[0] != B:
            raise ValueError(f"saliency_from_model: target must be [B] = [{B}] class indices, got "
                             f"{target.dtype} {list(target.shape)}")
        if validate or target.is_cpu:  # user input: worth one sync on a GPU
            if bool(((target < 0) | (target >= K)).any()):
                raise ValueError(f"saliency_from_model: target classes must be in [0, {K})")
            target = to_device(target, logits.device, torch.long)
        else:  # trusted (a policy's labels): clamped, so gather can never assert on a GPU
            target = to_device(target, logits.device, torch.long).clamp(0, K - 1)
    else:
        raise TypeError(f"saliency_from_model: target must be None, an int or a [B] tensor, got "
                        f"{type(target).__name__}")
    return logits.gather(1, target[:, None]).sum()


def _resolve_layer(model: torch.nn.Module, layer) -> torch.nn.Module:
    if isinstance(layer, torch.nn.Module):
        return layer
    if layer is None:
        info = getattr(model, "feature_info", None)
        if info:
            last = info[-1] if isinstance(info, list) else info.get_dicts()[-1]
            layer = last["module"]
        elif hasattr(model, "layer4"):
            layer = "layer4"
        else:
            raise ValueError("saliency_from_model: pass layer= (module or dotted name); the model "
                             "has no timm feature_info to pick its last stage from")
    if not isinstance(layer, str):
        raise TypeError(f"saliency_from_model: layer must be a module or a name, got {type(layer).__name__}")
    try:
        return model.get_submodule(layer)
    except AttributeError as e:
        raise ValueError(f"saliency_from_model: the model has no submodule {layer!r}") from e


def _to_nchw(model, t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "auto":
        if t.dim() == 3:
            layout = "NLC"
        elif t.dim() == 4:
            layout = "NHWC" if getattr(model, "output_fmt", "NCHW") == "NHWC" else "NCHW"
        else:
            raise ValueError(f"saliency_from_model: cannot use a {t.dim()}-D layer output for gradcam")
    if layout == "NCHW":
        return t
    if layout == "NHWC":
        return t.permute(0, 3, 1, 2)
    n_prefix = int(getattr(model, "num_prefix_tokens", 0))
    tokens = t[:, n_prefix:]
    n = tokens.shape[1]
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    h, w = (int(grid[0]), int(grid[1])) if grid is not None else (math.isqrt(n), math.isqrt(n))
    if h * w != n:
        raise ValueError(f"saliency_from_model: {n} tokens do not form a {h} x {w} grid; pass layout=")
    return tokens.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)


# ---- torch.library registration: Triton ops and fake kernels -----------------------------------

@torch.library.custom_op("medmix_triton::saliency_map", mutates_args=())
def _saliency_map_triton(src: torch.Tensor, src_mode: int, weights: torch.Tensor, taps: torch.Tensor,
                         square: bool, out_h: int, out_w: int, normalize: bool, quantize: bool,
                         gate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from ..triton import saliency as tk

    return tk.saliency_map(src, src_mode, weights, taps, square, out_h, out_w, normalize,
                           quantize, gate)


@torch.library.custom_op("medmix_triton::spectral_residual_filter", mutates_args=())
def _spectral_residual_filter_triton(spec: torch.Tensor) -> torch.Tensor:
    from ..triton import saliency as tk

    return tk.spectral_residual_filter(spec)


@torch.library.custom_op("medmix_triton::fine_grained_saliency", mutates_args=())
def _fine_grained_saliency_triton(grey: torch.Tensor, scales: list[int], gate: torch.Tensor) -> torch.Tensor:
    from ..triton import saliency as tk

    return tk.fine_grained_saliency(grey, scales, gate)


def _fake_saliency_map(src, src_mode, weights, taps, square, out_h, out_w, normalize, quantize, gate):
    B = src.shape[0]
    return (src.new_empty((B, 1, out_h, out_w), dtype=torch.float32),
            src.new_empty((B,), dtype=torch.bool))


_backend.register_fake_both("saliency_map", _fake_saliency_map)
_backend.register_fake_both("spectral_residual_filter", lambda spec: torch.empty_like(spec))
_backend.register_fake_both("fine_grained_saliency", lambda grey, scales, gate: torch.empty_like(grey))
