"""The contract every mixing policy shares.

``policy(x, y, generator=None, seg=None) -> (x_mix, y_soft)`` (``(x_mix, y_soft, seg_mix)`` with
``seg``), timm ``Mixup`` conventions for labels. A policy only implements ``_sample`` (draw
its randomness on the host) and ``_mix`` (mix on the images' device with medmix_ops.ops); this
module handles validation, targets, partners, lam, ``prob``, segmentation masks and
``policy.last``.
"""
from __future__ import annotations

import functools
import math
import threading

import numpy as np
import torch

from .._transfer import device_constant, to_device
from .._validation import IMAGE_DTYPES, VOLUME_HINT, is_int, is_real

MODES = ("batch", "elem")
# Integer label dtypes, and the unsigned view of each width the range check reads them through
_LABEL_DTYPES = frozenset((torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
                           torch.uint16, torch.uint32, torch.uint64))
PARTNERS = ("randperm", "flip", "class_balanced")


def batch_class_counts(labels, num_classes: int) -> np.ndarray:
    """For class-balanced partners: per image of a batch, how many of the batch's images share
    its class, float64 ``[B]`` on the host.

    labels: integer labels ``[B]`` (each image's count is its label's), or targets ``[B, K]``
    (a tensor or numpy array). A target row's labels are its entries equal to the row's
    maximum: the class of a one-hot, smoothed or mixed row (every tied class of a tie), every
    positive label of a multi-hot (multi-label) row. A label's count is the number of rows it
    belongs to, and an image counts as its rarest label. Rows without a positive entry (all
    zero, e.g. "no finding" in ChestMNIST, or NaN) form one group of their own."""
    a = labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels
    if isinstance(a, torch.Tensor):
        a = (a if a.dim() == 1 and not a.dtype.is_floating_point else a.float()).numpy()
    a = np.asarray(a)
    if a.ndim == 1:
        return np.bincount(a, minlength=num_classes)[a].astype(np.float64)
    top = a.max(axis=1, keepdims=True)
    member = (a == top) & (top > 0)  # (NaN rows: no member)
    counts = np.where(member, member.sum(axis=0)[None, :], np.iinfo(np.int64).max).min(axis=1)
    unlabelled = ~member.any(axis=1)
    counts[unlabelled] = unlabelled.sum()
    return counts.astype(np.float64)


@functools.lru_cache(maxsize=64)
def _one_hot_table(num_classes: int, smoothing: float) -> np.ndarray:
    """[K + 1, K] float32: row k is the smoothed one-hot target of label k; row K, the target
    of an out-of-range label, is NaN (loud in any loss, where a row of `off` would train on
    a silently wrong target). One fancy index then builds a batch's targets."""
    off = smoothing / num_classes
    table = np.full((num_classes + 1, num_classes), off, dtype=np.float32)
    table[np.arange(num_classes), np.arange(num_classes)] = 1.0 - smoothing + off
    table[num_classes] = np.nan
    table.flags.writeable = False
    return table


def one_hot_targets(y: torch.Tensor, num_classes: int, smoothing: float, device,
                    labels_in_range: bool = False) -> torch.Tensor:
    """timm's mixup_target convention: integer labels ``[B]`` -> float32 ``[B, K]`` on
    ``device``, off = smoothing / K and on = 1 - smoothing + off; ``[B, K]`` soft / one-hot /
    multi-label targets pass through. An out-of-range label gets a row of NaN, never an error
    or a device assert (``labels_in_range``: the caller checked them, skip the remap)."""
    if not isinstance(device, torch.device):
        device = torch.device(device)
    if y.dim() != 1:
        return to_device(y, device, torch.float32)
    table = _one_hot_table(num_classes, float(smoothing))
    if y.is_cpu and device.type == "cpu":
        # numpy on the host: a table lookup, several times cheaper than tensor ops
        yn = y.numpy()
        if not labels_in_range:
            yn = np.where((yn >= 0) & (yn < num_classes), yn, num_classes)
        # (take, not table[yn]: the same rows without fancy indexing's setup, ~3x cheaper)
        return torch.from_numpy(table.take(yn, axis=0))
    return _one_hot_rows(to_device(y, device, torch.long), num_classes, labels_in_range,
                         device_constant(("one_hot", num_classes, float(smoothing)), device,
                                         lambda: torch.from_numpy(table.copy())))


def _one_hot_rows(y: torch.Tensor, num_classes: int, labels_in_range: bool,
                  table: torch.Tensor) -> torch.Tensor:
    """The device path of one_hot_targets: rows of ``table`` ([K + 1, K], row K NaN) picked by
    the int64 labels ``y`` on the table's device, with no host sync. Unchecked labels are
    clamped to [-1, K] and wrapped mod K + 1, which sends -1 and K (every out-of-range label)
    to row K and leaves [0, K) alone: two elementwise ops, no comparison with the host."""
    if not labels_in_range:
        y = y.clamp(-1, num_classes).remainder_(num_classes + 1)
    return table.index_select(0, y)


def draw_excluding_self(weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per row i of a batch, a partner j != i drawn with probability weight[j] / (the sum of
    the others' weights), int64 [B] (B >= 2, weights > 0). Vectorised: every row draws from all
    rows by inverse CDF and the rows that drew themselves draw again (rejection is exactly the
    conditional law; a row repeats with probability weight[i] / sum, below 1 for B >= 2). One
    rng.choice per row cost 80 us a row: 2.7 ms at B = 32, ten times a 64^2 Mixup."""
    B = weight.shape[0]
    cdf = np.cumsum(weight)
    rows = np.arange(B)
    out = np.minimum(np.searchsorted(cdf, rng.random(B) * cdf[-1], side="right"), B - 1)
    redraw = rows[out == rows]
    while redraw.size:
        out[redraw] = np.minimum(np.searchsorted(cdf, rng.random(redraw.size) * cdf[-1], side="right"), B - 1)
        redraw = redraw[out[redraw] == redraw]
    return out.astype(np.int64, copy=False)


class MixPolicy(torch.nn.Module):
    """Base class. Args shared by every policy:

    num_classes: K of the soft targets ``[B, K]``.
    alpha: Beta(alpha, alpha) concentration of lam (policies that draw one).
    label_smoothing: timm's label smoothing of integer labels.
    prob: probability of mixing a batch (else the batch passes with its smoothed targets).
    mode: ``"batch"`` (one lam / geometry per batch) or ``"elem"`` (per sample).
    partner: ``"randperm"`` (default), ``"flip"`` (timm's ``x.flip(0)``) or
        ``"class_balanced"`` (partners drawn with probability proportional to 1 / the
        frequency of their class in the batch: tail-biased, for long-tailed data; with
        multi-hot targets, of their rarest label, see ``batch_class_counts``).
    backend: passed to the fused ops.
    validate: check that integer labels on a GPU are in [0, K) (labels on the CPU are always
        checked, for free). On a GPU the check costs one host sync per call; ``False`` skips
        it, and an out-of-range label then gets a NaN target row (a NaN loss, never a silently
        wrong target or a device assert).

    After each call ``policy.last`` holds what was done: ``index_a`` / ``index_b`` (anchor and
    partner rows of the input batch per output row; -1 for a synthetic partner), ``weight_a``
    (per-pixel weight of the anchor, ``[B', 1, H, W]``), ``lam`` (label weight of the anchor
    per output row), ``y`` (the soft targets) and policy-specific entries. It never holds the
    mixed images (that would keep a second batch alive between calls). Entries stay where
    they were made: host draws (partners, a drawn lam, CutMix boxes) are CPU tensors, values
    computed from the images are on their device.
    """

    name = "mix"
    uses_lam = True

    def __init__(self, num_classes: int, *, alpha: float = 1.0, label_smoothing: float = 0.0,
                 prob: float = 1.0, mode: str = "batch", partner: str = "randperm",
                 backend: str = "auto", validate: bool = True):
        super().__init__()
        cls = type(self).__name__
        if not is_int(num_classes) or num_classes < 1:
            raise ValueError(f"{cls}: num_classes must be an int >= 1, got {num_classes!r}")
        num_classes = int(num_classes)
        for name, v, lo, hi, lo_open in (("alpha", alpha, 0.0, math.inf, True),
                                         ("label_smoothing", label_smoothing, 0.0, 1.0, False),
                                         ("prob", prob, 0.0, 1.0, False)):
            if not is_real(v):
                raise TypeError(f"{cls}: {name} must be a number, got {type(v).__name__}")
            if not (math.isfinite(v) or v == math.inf) or v < lo or v > hi or (lo_open and v <= lo):
                raise ValueError(f"{cls}: {name} must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}")
        if mode not in MODES:
            raise ValueError(f"{cls}: mode must be one of {MODES}, got {mode!r}")
        if partner not in PARTNERS:
            raise ValueError(f"{cls}: partner must be one of {PARTNERS}, got {partner!r}")
        self.num_classes = num_classes
        self.alpha = float(alpha)
        self.label_smoothing = float(label_smoothing)
        self.prob = float(prob)
        self.mode = mode
        self.partner = partner
        self.backend = backend
        if not isinstance(validate, bool):
            raise TypeError(f"{cls}: validate must be a bool, got {type(validate).__name__}")
        self.validate = validate
        self.last = {}

    # ---- policy.last: built when read -------------------------------------------------------

    @property
    def last(self) -> dict:
        """What the last call did (see the class docstring). A call stores its parts and the
        dict is built on the first read: host arrays become CPU tensors then, so a training
        loop that never reads it pays for none of them (each tensor made per call costs several
        microseconds of a small batch's mixing time)."""
        d = self.__dict__
        parts = d["_last_parts"]
        if parts is not None:
            merged = {}
            for part in parts:  # in order: a later part's entry wins (out's lam over params')
                merged.update(part)
            d["_last"] = {k: torch.from_numpy(v) if isinstance(v, np.ndarray)
                          else v() if isinstance(v, Deferred) else v for k, v in merged.items()}
            d["_last_parts"] = None
        return d["_last"]

    @last.setter
    def last(self, value: dict) -> None:
        self.__dict__["_last"] = value
        self.__dict__["_last_parts"] = None

    def _set_last(self, *parts: dict) -> None:
        # (the instance dict directly: nn.Module.__setattr__ is slow)
        self.__dict__["_last_parts"] = parts

    # ---- the public call -------------------------------------------------------------------

    def forward(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None,
                seg: torch.Tensor | None = None, **overrides):
        """Mixes a batch. x: images ``[B, C, H, W]`` (float or uint8); y: integer labels ``[B]``
        or targets ``[B, K]``; generator: a CPU ``torch.Generator`` (same state -> same result);
        seg: masks ``[B, 1, H, W]`` or ``[B, H, W]`` mixed with the images' per-pixel weights.
        Returns ``(x_mix, y_soft [B', K])``, plus ``seg_mix`` when seg is given."""
        checked = self._check_inputs(x, y, generator)
        seg4 = None if seg is None else self._check_seg(seg, x)
        B = x.shape[0]
        targets = self.targets_of(y, x.device, checked is not None)
        labels = y if y.dim() == 1 else y.argmax(dim=1)
        # Class counts are needed on the host only for class-balanced partners (one sync
        # when the labels live on a GPU, shared with the range check); every other path stays
        # on the device.
        labels_host = self._balance_labels(y, labels, checked)
        if labels.dtype != torch.long or not (labels.is_cpu and x.is_cpu) and labels.device != x.device:
            labels = to_device(labels, x.device, torch.long)
        rng = _host_rng(generator)
        if B == 1 or rng.random() >= self.prob:
            rows = np.arange(B)
            self._set_last(dict(applied=False, index_a=rows, index_b=rows.copy(),
                                lam=np.ones(B, dtype=np.float32), weight_a=None))
            return (x, targets) if seg is None else (x, targets, seg)
        try:
            params = self._sample(B, labels_host, rng, x, **overrides)
        except TypeError as e:
            raise TypeError(f"{type(self).__name__}: {e}") from None
        out = self._mix(x, targets, labels, params)
        x_mix = out.pop("x")  # not kept in `last`: a batch of memory held until the next call
        self._set_last(_APPLIED, params, out)  # out's lam (label weight) wins
        if seg is None:
            return x_mix, out["y"]
        return x_mix, out["y"], self._mix_seg(seg4, seg, out)

    def __call__(self, *args, **kwargs):
        if torch.compiler.is_compiling():
            # Under torch.compile (the policy compiled, or a compiled model that calls it), the
            # host-side draws and numpy bookkeeping run eagerly: one graph break, the ops inside
            # still dispatch to their kernels.
            return _eager_call(self, *args, **kwargs)
        # nn.Module's call path (tracing state, eight hook tables, kwargs repacked) costs
        # ~1.5-3 us a batch; with nothing registered it only calls forward, so that is done
        # directly. Any hook, an in-place module.compile() or a jit trace takes the full path.
        d = self.__dict__
        if (_GLOBAL_HOOKS is None or any(_GLOBAL_HOOKS) or d["_forward_pre_hooks"] or d["_forward_hooks"]
                or d["_backward_pre_hooks"] or d["_backward_hooks"]
                or d.get("_compiled_call_impl") is not None or torch._C._get_tracing_state()):
            return torch.nn.Module.__call__(self, *args, **kwargs)
        return self.forward(*args, **kwargs)

    def _balance_labels(self, y: torch.Tensor, labels: torch.Tensor, checked) -> torch.Tensor | None:
        """What class-balanced partners are drawn from, on the host (None for other partners):
        integer labels [B], or the targets [B, K] themselves (multi-hot rows keep every label;
        see batch_class_counts)."""
        if self.partner != "class_balanced":
            return None
        if checked is not None:
            return checked.long()
        return y.detach().cpu() if y.dim() == 2 else labels.cpu().long()

    # ---- to implement ----------------------------------------------------------------------

    def _sample(self, B: int, labels: torch.Tensor, rng: np.random.Generator, x, **overrides) -> dict:
        raise NotImplementedError

    def _mix(self, x, targets, labels, params) -> dict:
        """Returns dict(x=..., y=..., index_a=..., index_b=..., weight_a=..., lam=...,
        hard=bool: weight_a only holds 0 and 1, by construction)."""
        raise NotImplementedError

    # ---- helpers for policies --------------------------------------------------------------

    def targets_of(self, y: torch.Tensor, device, labels_in_range: bool = False) -> torch.Tensor:
        return one_hot_targets(y, self.num_classes, self.label_smoothing, device, labels_in_range)

    def sample_partners(self, B: int, labels: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        # torch.from_numpy, not torch.arange: no dispatcher round trip on the per-batch path
        if self.partner == "flip":
            return torch.from_numpy(np.arange(B - 1, -1, -1))
        if self.partner == "randperm":
            perm = rng.permutation(B)  # int64 wherever numpy's default int is (not a .long() call)
            return torch.from_numpy(perm if perm.dtype == np.int64 else perm.astype(np.int64))
        return torch.from_numpy(draw_excluding_self(1.0 / batch_class_counts(labels, self.num_classes), rng))

    def sample_lam(self, B: int, rng: np.random.Generator, lam=None) -> np.ndarray:
        """lam per output row, a float64 [B] numpy array (host draws stay numpy until `last`
        is read), Beta(alpha, alpha) per batch or per sample; an explicit lam (float, sequence
        or tensor, [B] or one value) overrides."""
        if lam is not None:
            t = torch.as_tensor(lam, dtype=torch.float64).reshape(-1).cpu().numpy()
            if t.size == 1:
                t = np.broadcast_to(t, (B,))
            if t.size != B or bool(((t < 0) | (t > 1)).any()):
                raise ValueError(f"lam must be a float or [B] = [{B}] in [0, 1], got {lam!r}")
            return t.copy()
        if self.mode == "elem":
            return rng.beta(self.alpha, self.alpha, size=B)
        return np.full(B, rng.beta(self.alpha, self.alpha))

    @staticmethod
    def host_float32(lam: np.ndarray) -> torch.Tensor:
        """A host lam (float64, from sample_lam) as a float32 tensor, through numpy."""
        return torch.from_numpy(np.asarray(lam, dtype=np.float32))

    @staticmethod
    def mix_targets(t: torch.Tensor, index_a, index_b, lam,
                    t_b: torch.Tensor | None = None, uniform_lam: bool = False) -> torch.Tensor:
        """lam * t[a] + (1 - lam) * t[b] (t_b: the partner targets when they are not rows of t;
        index_a None: the rows of t in order, without a gather). lam: a [B] tensor or a host
        numpy array; uniform_lam: the caller knows every row's lam is the same (a per-batch
        draw), which the host path then applies as one scalar."""
        host_lam = isinstance(lam, np.ndarray)
        # (is_cpu, not .device.type: a bool instead of a device object, ~6x cheaper per check)
        if (t.is_cpu and (host_lam or lam.is_cpu) and index_b.is_cpu and not t.requires_grad
                and (index_a is None or index_a.is_cpu)
                and (t_b is None or t_b.is_cpu and not t_b.requires_grad)):
            # the same float32 operations in numpy: bit-identical and ~4x cheaper on the host
            # (take: the rows without fancy indexing's setup)
            tn = t.numpy()
            tbn = tn.take(index_b.numpy(), axis=0) if t_b is None else t_b.numpy()
            tan = tn if index_a is None else tn.take(index_a.numpy(), axis=0)
            if uniform_lam and host_lam:  # one float32 lam for every row: a [B, 1] column's bits
                ln = np.float32(lam[0])
            else:
                ln = np.asarray(lam if host_lam else lam.numpy(), dtype=np.float32)[:, None]
            return torch.from_numpy(ln * tan + (np.float32(1) - ln) * tbn)
        lam = to_device(torch.from_numpy(lam) if host_lam else lam, t.device, torch.float32)[:, None]
        tb = t.index_select(0, to_device(index_b, t.device)) if t_b is None else t_b
        ta = t if index_a is None else t.index_select(0, to_device(index_a, t.device))
        return lam * ta + (1 - lam) * tb

    # ---- validation and segmentation masks --------------------------------------------------

    def _check_inputs(self, x, y, generator) -> torch.Tensor | None:
        """Raises on bad input. Returns the labels on the host when y holds integer labels
        that were checked to be in range (y itself on the CPU), else None."""
        cls = type(self).__name__
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{cls}: x must be images [B, C, H, W], got "
                             f"{getattr(x, 'shape', type(x).__name__)}"
                             + (VOLUME_HINT if isinstance(x, torch.Tensor) and x.dim() == 5 else ""))
        if x.dtype not in IMAGE_DTYPES:
            raise TypeError(f"{cls}: x must be float or uint8 images, got {x.dtype}")
        if x.shape[0] < 1:
            raise ValueError(f"{cls}: x must hold at least one image, got shape {list(x.shape)}")
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"{cls}: y must be a tensor of labels [B] or targets [B, K], got {type(y).__name__}")
        B = x.shape[0]
        if y.dim() == 1:
            if y.dtype not in _LABEL_DTYPES or y.shape[0] != B:
                raise ValueError(f"{cls}: integer labels y must be [B] = [{B}] ints, got {y.dtype} {list(y.shape)}")
            # Checked on the host: free for CPU labels; GPU labels are copied back (one sync)
            # unless validate=False trusts them.
            host = y if y.is_cpu else y.cpu() if self.validate else None
            if host is not None:
                # Python's min / max over the list, not a numpy reduction: a policy call's
                # numpy calls each slow its blend by 3-5 us on a small batch (they evict the
                # kernel's call path from the core's caches; NOTES), and this was the
                # costliest, ~16 us of a 32 x 3 x 64^2 Mixup call; level at B = 256.
                labels = host.tolist()
                lo, hi = min(labels), max(labels)
                if lo < 0 or hi >= self.num_classes:
                    raise ValueError(f"{cls}: labels must be in [0, num_classes = {self.num_classes}), "
                                     f"got min {lo}, max {hi}")
        elif y.dim() == 2:
            if y.shape != (B, self.num_classes) or not y.dtype.is_floating_point:
                raise ValueError(f"{cls}: targets y must be float [B, K] = [{B}, {self.num_classes}], "
                                 f"got {y.dtype} {list(y.shape)}")
        else:
            raise ValueError(f"{cls}: y must be labels [B] or targets [B, K], got shape {list(y.shape)}")
        if generator is not None and (not isinstance(generator, torch.Generator)
                                      or generator.device.type != "cpu"):
            raise TypeError(f"{cls}: generator must be a CPU torch.Generator (randomness is drawn "
                            f"on the host, never with a device sync), got {generator!r}")
        return host if y.dim() == 1 else None

    def _check_seg(self, seg, x):
        if seg is None:
            return None
        cls = type(self).__name__
        if not isinstance(seg, torch.Tensor):
            raise TypeError(f"{cls}: seg must be a tensor [B, 1, H, W] or [B, H, W], got {type(seg).__name__}")
        B, _, H, W = x.shape
        seg4 = seg[:, None] if seg.dim() == 3 else seg
        if seg4.dim() != 4 or tuple(seg4.shape) != (B, 1, H, W):
            raise ValueError(f"{cls}: seg must be [B, 1, H, W] or [B, H, W] = [{B}, ..., {H}, {W}], "
                             f"got {list(seg.shape)}")
        if seg4.device != x.device:
            raise ValueError(f"{cls}: seg must be on {x.device} like x, got {seg.device}")
        return seg4

    def _mix_seg(self, seg4, seg, out):
        """Masks follow the images: seg_a where the anchor's weight is 1, seg_b where it is 0;
        soft weights give float masks (weight-averaged)."""
        w = out["weight_a"]
        w = w() if isinstance(w, Deferred) else w
        a = seg4[to_device(torch.as_tensor(out["index_a"]), seg4.device)]
        ib = to_device(out["index_b"], seg4.device)
        b = out.get("seg_b")
        if b is None:
            b = torch.where((ib >= 0).view(-1, 1, 1, 1), seg4[ib.clamp(min=0)], torch.zeros_like(a))
        if out.get("hard", False):
            mixed = torch.where(w.bool(), a, b.to(a.dtype))
        else:
            mixed = w * a.float() + (1 - w) * b.float()
        return mixed[:, 0] if seg.dim() == 3 else mixed


class Deferred:
    """An entry of a call's `last` parts made only when read (``policy.last`` or a seg mask
    mix): ``fn(*args)``, e.g. VariMix's [2B] weight map, a batch-sized copy that a training
    loop never reads. fn: a module-level function (a policy pickles with its parts)."""

    __slots__ = ("fn", "args")

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __call__(self):
        return self.fn(*self.args)

    def __reduce__(self):
        return Deferred, (self.fn, *self.args)


# nn.Module's process-wide hook tables (private, in torch 2.11 to 2.14): while any holds a hook,
# or should a later torch drop them (None), policies take nn.Module.__call__'s full path.
try:
    from torch.nn.modules import module as _nn_module

    _GLOBAL_HOOKS = (_nn_module._global_forward_pre_hooks, _nn_module._global_forward_hooks,
                     _nn_module._global_backward_pre_hooks, _nn_module._global_backward_hooks)
except AttributeError:
    _GLOBAL_HOOKS = None


@torch.compiler.disable
def _eager_call(policy: MixPolicy, *args, **kwargs):
    return torch.nn.Module.__call__(policy, *args, **kwargs)


_APPLIED = {"applied": True}  # (read-only: the first part of every applied call's `last`)
_rng_cache = threading.local()


def _host_rng(generator: torch.Generator | None) -> np.random.Generator:
    """A numpy Generator seeded from the torch generator (or torch's global RNG): all of a
    policy's randomness is drawn on the host, so the same generator state gives the same
    result on any device, with no device sync.

    The 128-bit PCG64 state is two uniform 62-bit draws of the torch generator, set into one
    reused bit generator per thread: ``np.random.default_rng(seed)`` (SeedSequence hashing and
    a new object) costs ~25 us, a quarter of a small batch's whole mixing time. The returned
    Generator is valid until the thread's next call, which is how policies use it."""
    cache = getattr(_rng_cache, "v", None)
    if cache is None:
        bits = np.random.PCG64(0)
        cache = _rng_cache.v = (bits, np.random.Generator(bits), bits.state["state"]["inc"],
                                torch.empty(2, dtype=torch.int64))
    bits, rng, inc, draw = cache
    # random_ into a reused buffer: the same draws as torch.randint(0, 2**62, (2,)) at half
    # the cost (no allocation)
    s = draw.random_(0, 2 ** 62, generator=generator).tolist()
    bits.state = {"bit_generator": "PCG64", "state": {"state": (s[0] << 64) | s[1], "inc": inc},
                  "has_uint32": 0, "uinteger": 0}
    return rng
