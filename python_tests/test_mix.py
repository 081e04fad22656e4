"""Mixing policies: timm parity, the shared contract (targets, odd batches, B = 1, seg masks,
multi-label, determinism), each seed policy's defining behaviour, and bad input."""
import warnings

import numpy as np
import pytest
import torch

from medmix_ops import mix, saliency
from medmix_ops.data import SynthLesion
from medmix_ops.models.probe import LesionProbe
from medmix_ops.policies import POLICIES, make_policy

K = 4


def batch(B=6, size=32, seed=0):
    ds = SynthLesion(max(B, 2), size=size, seed=seed)
    idx = list(range(B))
    x, seg = ds.render(idx)
    return ds, idx, x, ds.labels[idx], seg


def build(name, ds, **kw):
    p = make_policy(name, K, dataset=ds, **kw)
    return p


def run(p, ds, idx, x, y, seg=None, seed=0, **kw):
    if isinstance(p, mix.VariMix):
        p.translator.set_batch(idx, y)
    return p(x, y, generator=torch.Generator().manual_seed(seed), seg=seg, **kw)


# ---- timm parity -------------------------------------------------------------------------------

@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_timm_parity(kind, smoothing):
    timm_mixup = pytest.importorskip("timm.data.mixup")
    torch.manual_seed(0)
    x = torch.rand(8, 3, 24, 20)
    y = torch.randint(0, 10, (8,))
    t = timm_mixup.Mixup(mixup_alpha=1.0 if kind == "mixup" else 0.0,
                         cutmix_alpha=1.0 if kind == "cutmix" else 0.0,
                         label_smoothing=smoothing, num_classes=10)
    for seed in range(5):
        np.random.seed(seed)  # replay timm's draws to learn its lam and box
        lam, use_cutmix = t._params_per_batch()
        box = None
        if use_cutmix:
            box, lam = timm_mixup.cutmix_bbox_and_lam(x.shape, lam, correct_lam=True)
        np.random.seed(seed)
        want_x, want_y = t(x.clone(), y.clone())
        ours = (mix.Mixup if kind == "mixup" else mix.CutMix)(10, label_smoothing=smoothing, partner="flip")
        kw = dict(lam=lam) if box is None else dict(lam=lam, box=box)
        got_x, got_y = ours(x, y, **kw)
        assert torch.allclose(got_x, want_x, atol=1e-6), (seed, (got_x - want_x).abs().max())
        assert torch.allclose(got_y, want_y, atol=1e-6)
        if box is not None:  # a hard box: pixels copied exactly
            assert torch.equal(got_x, want_x)


# ---- the shared contract -------------------------------------------------------------------------

@pytest.mark.parametrize("name", POLICIES)
def test_contract(name):
    ds, idx, x, y, seg = batch(B=5)  # odd batch
    p = build(name, ds)
    out_x, out_y, out_seg = run(p, ds, idx, x, y, seg)
    rows = 10 if name == "varimix" else 5
    assert out_x.shape == (rows, 3, 32, 32) and out_x.dtype == x.dtype
    assert out_y.shape == (rows, K)
    assert torch.allclose(out_y.sum(1), torch.ones(rows), atol=1e-5)
    assert (out_y >= 0).all() and torch.isfinite(out_x).all()
    assert out_seg.shape == (rows, 1, 32, 32)
    last = p.last
    assert last["applied"] and last["index_a"].shape == (rows,) and last["weight_a"].shape[0] == rows
    assert "x" not in last  # the mixed batch is returned, never kept alive by the policy
    w = last["weight_a"]
    assert ((w >= 0) & (w <= 1)).all()


@pytest.mark.parametrize("name", POLICIES)
def test_grey_synthlesion_batches(name):
    """Every policy built by make_policy mixes a 1-channel SynthLesion batch (MedDiffuseMix's
    default LesionProbe used to be a 3-channel conv and raised a raw conv shape error)."""
    ds = SynthLesion(6, size=32, seed=0, channels=1)
    idx = list(range(6))
    x, seg = ds.render(idx)
    y = ds.labels[idx]
    out_x, out_y = run(build(name, ds), ds, idx, x, y)
    rows = 12 if name == "varimix" else 6
    assert out_x.shape == (rows, 1, 32, 32) and torch.isfinite(out_x).all()
    assert torch.allclose(out_y.sum(1), torch.ones(rows), atol=1e-5)


@pytest.mark.parametrize("name", POLICIES)
def test_channels_last_batches_stay_channels_last(name):
    """A channels_last batch (what a channels_last model is fed) comes back channels_last, with
    the same values as the contiguous batch (SPMix's class-balanced anchors went NCHW)."""
    ds, idx, x, y, seg = batch(B=6)
    want = run(build(name, ds), ds, idx, x, y, seed=4)[0]
    got = run(build(name, ds), ds, idx, x.contiguous(memory_format=torch.channels_last), y, seed=4)[0]
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", POLICIES)
def test_half_precision_batches_keep_their_dtype(name, dtype):
    """bf16 / fp16 batches mix and come back in their dtype, finite (MedDiffuseMix's float32
    classifier used to refuse them with a raw dtype error)."""
    ds, idx, x, y, seg = batch(B=6)
    out_x, out_y = run(build(name, ds), ds, idx, x.to(dtype), y, seed=4)
    assert out_x.dtype == dtype and bool(torch.isfinite(out_x.float()).all())
    assert out_y.shape[0] == out_x.shape[0] and torch.allclose(out_y.sum(1), torch.ones(out_y.shape[0]), atol=1e-5)


@pytest.mark.parametrize("name", POLICIES)
def test_same_generator_same_result(name):
    ds, idx, x, y, seg = batch(B=6)
    a = run(build(name, ds), ds, idx, x, y, seed=3)
    b = run(build(name, ds), ds, idx, x, y, seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("name", POLICIES)
def test_batch_of_one_returns_input_with_smoothed_targets(name):
    ds, idx, x, y, seg = batch(B=2)
    p = build(name, ds, label_smoothing=0.1)
    out_x, out_y = p(x[:1], y[:1])
    assert torch.equal(out_x, x[:1]) and not p.last["applied"]
    want = torch.full((1, K), 0.1 / K)
    want[0, y[0]] = 0.9 + 0.1 / K
    assert torch.allclose(out_y, want)


@pytest.mark.parametrize("name", ["mixup", "cutmix", "saliencymix", "spmix", "varimix", "genmix"])
def test_seg_masks_follow_the_image_weights(name):
    ds, idx, x, y, seg = batch(B=6)
    p = build(name, ds)
    _, _, out_seg = run(p, ds, idx, x, y, seg)
    last = p.last
    a = seg[last["index_a"]]
    ib = last["index_b"]
    b = last["seg_b"] if last.get("seg_b") is not None else seg[ib.clamp(min=0)]
    w = last["weight_a"]
    if last["hard"]:
        assert torch.equal(out_seg, torch.where(w.bool(), a, b))
    else:
        assert torch.allclose(out_seg, w * a + (1 - w) * b, atol=1e-6)
    # [B, H, W] masks come back as [B, H, W]
    _, _, flat = run(build(name, ds), ds, idx, x, y, seg[:, 0])
    assert flat.dim() == 3


def test_multi_label_targets_mix_linearly():
    x = torch.rand(6, 3, 16, 16)
    y = (torch.rand(6, 5) > 0.5).float()  # multi-label: rows need not sum to 1
    p = mix.Mixup(5, partner="flip")
    _, out = p(x, y, lam=0.3)
    assert torch.allclose(out, 0.3 * y + 0.7 * y.flip(0))
    assert ((out >= 0) & (out <= 1)).all()


def test_prob_zero_never_mixes():
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    p = mix.CutMix(4, prob=0.0)
    out_x, _ = p(x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out_x, x) and not p.last["applied"]


def test_elem_mode_draws_per_sample_lam():
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 4
    p = mix.Mixup(4, mode="elem")
    p(x, y, generator=torch.Generator().manual_seed(0))
    assert p.last["lam"].unique().numel() == 8



@pytest.mark.parametrize("make", [lambda: mix.CutMix(4), lambda: mix.CutMix(4, mode="elem"),
                                  lambda: mix.SaliencyMix(4), lambda: mix.SaliencyMix(4, per_sample=True)],
                         ids=["cutmix-batch", "cutmix-elem", "saliencymix", "saliencymix-per-sample"])
def test_box_policies_keep_bad_pixels_outside_the_box_out(make):
    """A pasted box takes only the partner's box region: a NaN / inf pixel elsewhere in the
    partner must not reach the output (elem mode runs the blend with 0 / 1 weights, where
    0 * inf = NaN would leak it)."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(8, 3, 20, 24, generator=g), torch.arange(8) % 4
    x[1::2, :, 0, 0], x[1::2, :, -1, -1] = float("nan"), float("inf")  # odd samples' corners
    p = make()
    out, _ = p(x, y, generator=torch.Generator().manual_seed(0))
    w, ib = p.last["weight_a"].expand(8, 3, 20, 24).bool(), p.last["index_b"]
    want = torch.where(w, x, x[ib])
    assert torch.equal(out.isnan(), want.isnan()) and torch.equal(out.nan_to_num(), want.nan_to_num())
    # the case that matters happened: a clean anchor kept its corner against a bad partner
    bad_b = ~torch.isfinite(x[ib])
    assert (w & bad_b & torch.isfinite(x)).any()
def test_class_balanced_partners_favour_the_tail():
    labels = torch.tensor([0] * 30 + [1] * 2)
    p = mix.Mixup(2, partner="class_balanced")
    rng = np.random.default_rng(0)
    picks = torch.cat([p.sample_partners(32, labels, rng) for _ in range(50)])
    tail_share = (labels[picks] == 1).float().mean()
    assert tail_share > 0.4  # 2 of 32 images, drawn about half the time


@pytest.mark.parametrize("weight", [[1.0, 1.0, 2.0, 4.0, 0.5], [3.0, 1.0], [1.0] * 7 + [100.0]])
def test_class_balanced_draw_is_the_conditional_law(weight):
    """Each row's partner j != i with probability w[j] / (sum of the others' w): the vectorised
    draw (every row from all, the rows that drew themselves again) against the exact law."""
    from medmix_ops.mix._base import draw_excluding_self

    w = np.array(weight)
    B, n = len(w), 8000
    rng = np.random.default_rng(3)
    draws = np.stack([draw_excluding_self(w, rng) for _ in range(n)])
    assert draws.dtype == np.int64 and (draws != np.arange(B)).all()
    for i in range(B):
        want = w.copy()
        want[i] = 0
        want /= want.sum()
        got = np.bincount(draws[:, i], minlength=B) / n
        assert np.abs(got - want).max() < 5 * np.sqrt(0.25 / n)  # 5 sigma of a proportion


def test_batch_class_counts_by_hand():
    labels = torch.tensor([2, 0, 2, 1, 2])
    assert mix.batch_class_counts(labels, 3).tolist() == [3, 1, 3, 1, 3]
    # one-hot and smoothed targets count as their class, like the integer labels
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    assert mix.batch_class_counts(one_hot, 3).tolist() == [3, 1, 3, 1, 3]
    assert mix.batch_class_counts((one_hot * 0.9 + 0.1 / 3).bfloat16(), 3).tolist() == [3, 1, 3, 1, 3]
    # multi-hot rows: a label's count is the number of rows holding it (entries at the row's
    # max); a row counts as its rarest label; all-zero rows ("no finding") and rows whose max
    # is NaN form one group of their own
    multi = torch.tensor([[1, 0, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0],
                          [float("nan"), 1, 0], [0.5, 0, 0.5]])
    # label 0: rows 0, 1, 2, 6 (row 6's tie holds both its classes) -> 4; label 1: row 2 -> 1;
    # label 2: rows 0, 6 -> 2; no label: rows 3, 4, 5 -> 3
    assert mix.batch_class_counts(multi, 3).tolist() == [2, 4, 1, 3, 3, 3, 2]
    assert mix.batch_class_counts(multi.numpy(), 3).tolist() == [2, 4, 1, 3, 3, 3, 2]


def test_class_balanced_partners_on_multi_hot_targets_favour_the_rarest_label():
    # every image has the common finding 0; two also have the rare finding 3
    y = torch.zeros(32, 4)
    y[:, 0] = 1
    y[[5, 17], 3] = 1
    p = mix.Mixup(4, partner="class_balanced")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 8, 8)
    picks = []
    for _ in range(30):
        p(x, y, generator=g)
        picks.append(p.last["index_b"])
    rare_share = y[torch.cat(picks), 3].mean()
    assert rare_share > 0.4  # 2 of 32 images, drawn about half the time (argmax: 1 / 16)
    # SPMix orients each pair so that the image with the rare finding is the tail
    ds = SynthLesion(8, size=32, seed=0)
    xs, _ = ds.render(list(range(8)))
    y8 = torch.zeros(8, 4)
    y8[:, 0] = 1
    y8[6, 3] = 1
    sp = mix.SPMix(4, patch=8)
    out_x, out_y = sp(xs, y8, generator=torch.Generator().manual_seed(1))
    tail, head = sp.last["index_a"], sp.last["index_b"]
    assert (head == 6).sum() == 0 and (tail == 6).any()  # image 6 is never a head background
    assert torch.equal(out_y, y8[tail])  # label="keep": the tail's findings


# ---- seed policies ----------------------------------------------------------------------------------

def test_saliencymix_box_is_centred_on_the_partner_saliency_peak():
    ds, idx, x, y, seg = batch(B=4, size=48)
    p = mix.SaliencyMix(K, per_sample=True, partner="flip")
    p(x, y, lam=0.6)
    s = p.last["saliency"]
    boxes = p.last["boxes"]
    assert torch.equal(s, saliency(x, "fine_grained")[torch.tensor([3, 2, 1, 0])])  # the partners' maps
    for i in range(4):
        peak = int(s[i].flatten().argmax())
        cy, cx = peak // 48, peak % 48
        yl, yh, xl, xh = boxes[i].tolist()
        assert yl <= cy <= yh and xl <= cx <= xh
    assert torch.allclose(p.last["lam"], 1 - (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2]) / 48 ** 2)
    # per_sample=False: one saliency map and one box for the whole batch (the official code)
    q = mix.SaliencyMix(K, per_sample=False)
    q(x, y, generator=torch.Generator().manual_seed(0))
    assert q.last["saliency"].shape[0] == 1 and (q.last["boxes"] == q.last["boxes"][0]).all()


@pytest.mark.parametrize("name,kw", [("mixup", {}), ("cutmix", {}), ("saliencymix", {}),
                                     ("saliencymix", {"per_sample": True}), ("varimix", {}), ("genmix", {})],
                         ids=["mixup", "cutmix", "saliencymix", "saliencymix-per-sample", "varimix", "genmix"])
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_label_weight_is_the_kept_share_of_each_row(name, kw, mode):
    """The anchor's label weight is exactly the share of its pixels kept, row by row, wherever
    the method defines it so (not SPMix, whose label is the tail's, nor MedDiffuseMix, whose
    label is the original's). One SaliencyMix map with lam per sample used to paste the first
    row's box into every row while the labels followed each row's own box."""
    ds, idx, x, y, seg = batch(B=8, size=40)
    p = build(name, ds, mode=mode, **kw)
    for seed in range(4):
        run(p, ds, idx, x, y, seed=seed)
        w = p.last["weight_a"]
        kept = w.expand(w.shape[0], 1, 40, 40).flatten(1).float().mean(1)
        lam = p.last["lam"].float()
        assert torch.allclose(lam, kept, atol=1e-6), (seed, lam, kept)
        if mode == "elem" and name != "varimix" and seed == 0:
            assert lam.unique().numel() > 1  # the case that matters: lam per row


@pytest.mark.parametrize("name", [n for n in POLICIES if n != "genmix"])  # genmix: synthetic partners only
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_last_describes_the_mixed_images(name, mode):
    """policy.last is what was done: every output row is weight_a * x[index_a] +
    (1 - weight_a) * x[index_b] (the rows with a real partner: all of them here)."""
    ds, idx, x, y, seg = batch(B=6)
    p = build(name, ds, mode=mode)
    out = run(p, ds, idx, x, y, seed=2)[0]
    ia, ib, w = p.last["index_a"], p.last["index_b"], p.last["weight_a"]
    assert bool((ib >= 0).all()) and out.shape[0] == ia.shape[0] == ib.shape[0]
    want = w * x[ia] + (1 - w) * x[ib]
    assert torch.allclose(out, want, atol=3e-7), (out - want).abs().max()


@pytest.mark.parametrize("name", list(POLICIES))
@pytest.mark.parametrize("prob", [1.0, 0.0], ids=["applied", "skipped"])
def test_last_holds_tensors_and_survives_copies(name, prob):
    """policy.last is built when first read: its arrays are tensors then (never numpy), a
    second read returns the same objects, the next call replaces it, and a policy copied or
    pickled between a call and the read (a DataLoader worker's copy) still reads it."""
    import copy
    import pickle

    ds, idx, x, y, seg = batch(B=6)
    p = build(name, ds, prob=prob)
    run(p, ds, idx, x, y, seed=1)
    twin, restored = copy.deepcopy(p), pickle.loads(pickle.dumps(p))
    last = p.last
    assert last["applied"] == (prob == 1.0)
    for key in ("index_a", "index_b", "lam"):
        assert isinstance(last[key], torch.Tensor) and last[key].shape[0] == last["index_a"].shape[0], key
    assert not any(isinstance(v, np.ndarray) for v in last.values())
    assert p.last is last and p.last["index_a"] is last["index_a"]
    for other in (twin, restored):
        assert other.last.keys() == last.keys()
        for k, v in last.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(other.last[k], v), k
    run(p, ds, idx, x, y, seed=2)
    assert p.last is not last
    p.last = {"mine": 1}
    assert p.last == {"mine": 1}


def test_spmix_ratios_and_tail_orientation():
    ds = SynthLesion(8, size=32, seed=0)
    x, _ = ds.render(list(range(8)))
    y = torch.tensor([0, 0, 0, 0, 0, 0, 3, 3])  # class 3 is the tail of this batch
    p = mix.SPMix(K, patch=8, alpha=0.8)
    out_x, out_y = p(x, y, generator=torch.Generator().manual_seed(0))
    r = p.last["ratios"]
    assert ((r >= 0.5 - 1e-6) & (r <= 0.8 + 1e-6)).all()
    tail = p.last["index_a"]
    assert (out_y.argmax(1) == y[tail]).all()  # label="keep": the tail's label
    head = p.last["index_b"]
    for i in range(8):  # every pair containing a tail image is oriented with the tail as anchor
        if 3 in (int(y[tail[i]]), int(y[head[i]])):
            assert int(y[tail[i]]) == 3
    soft = mix.SPMix(K, patch=8, label="soft")
    _, ys = soft(x, y, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ys.sum(1), torch.ones(8))


def test_spmix_feature_hook_mixes_vit_tokens():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=K, img_size=32, depth=1).eval()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    plain_tokens = model.patch_embed(x).detach()
    plain_logits = model(x).detach()
    policy = mix.SPMix(K, partner="flip")
    hook = mix.SPMixFeatureHook(model, policy)
    x_in, y_soft = hook(x, y)
    assert torch.equal(x_in, x) and torch.allclose(y_soft.sum(1), torch.ones(4))
    tail, head, r = policy.last["index_a"], policy.last["index_b"], policy.last["ratios"]
    assert r.shape == (4, 2, 2)  # the 32 px / 16 px token grid
    seen = {}
    probe = model.patch_embed.register_forward_hook(lambda m, i, o: seen.update(t=o), prepend=False)
    logits = model(x_in)
    probe.remove()
    w = r.reshape(4, -1, 1)
    # our hook ran first (registered first), so the recorded output is the mixed token grid
    assert torch.allclose(seen["t"], w * plain_tokens[tail] + (1 - w) * plain_tokens[head], atol=1e-5)
    assert not torch.allclose(logits, plain_logits)
    assert torch.allclose(model(x), plain_logits, atol=1e-6)  # disarmed after one forward pass
    hook.remove()


def test_spmix_feature_hook_under_torch_compile():
    """A compiled model mixes its armed forward pass like the eager one and is disarmed after
    it; a compiled step that arms the hook and runs the model gives the eager result for each
    seed (the partner draws are not baked into the graph), and dynamo does not trace the
    hook's host-side bookkeeping (it used to, warning about one_hot_targets' lru_cache)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=K, img_size=32, depth=1).eval()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    hook = mix.SPMixFeatureHook(model, mix.SPMix(K))
    plain = model(x).detach()

    def eager(seed):
        x_in, y_soft = hook(x, y, generator=torch.Generator().manual_seed(seed))
        return model(x_in).detach(), y_soft

    compiled_model = torch.compile(model)
    for seed in (1, 2):
        want, _ = eager(seed)
        hook(x, y, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(compiled_model(x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(compiled_model(x), plain, rtol=1e-5, atol=1e-5)  # disarmed

    def step(x, y, g):
        x_in, y_soft = hook(x, y, generator=g)
        return model(x_in), y_soft

    compiled_step = torch.compile(step)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed in (1, 2, 3):
            logits, y_soft = compiled_step(x, y, torch.Generator().manual_seed(seed))
            want, want_y = eager(seed)
            torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)
            assert torch.equal(y_soft, want_y)
    assert not [w for w in caught if "medmix_ops" in str(w.message)], [str(w.message) for w in caught]
    hook.remove()


def test_varimix_bidirectional_outputs_and_labels():
    ds, idx, x, y, seg = batch(B=6, size=48)
    p = build("varimix", ds, partner="flip")
    out_x, out_y = run(p, ds, idx, x, y, lam=0.2)
    k, perm = p.last["mask"], torch.arange(5, -1, -1)
    assert torch.equal(out_x[:6], torch.where(k.bool(), x, x[perm]))
    assert torch.equal(out_x[6:], torch.where(k.bool(), x[perm], x))
    area = k.mean(dim=(1, 2, 3))
    onehot = torch.nn.functional.one_hot(y, K).float()
    assert torch.allclose(out_y[:6], area[:, None] * onehot + (1 - area[:, None]) * onehot[perm], atol=1e-6)


def test_meddiffusemix_keeps_labels_and_reports_the_check():
    ds, idx, x, y, seg = batch(B=6, size=48)
    for on_fail in ("attenuate", "reject"):
        p = mix.MedDiffuseMix(K, LesionProbe(num_classes=K), kappa=1.0, on_fail=on_fail)  # kappa 1: most fail
        out_x, out_y = p(x, y, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(out_y, torch.nn.functional.one_hot(y, K).float())
        counts = p.last["counts"]
        assert int(counts.sum()) == 6
        fail = p.last["iou"] < 1.0
        if on_fail == "reject":
            assert torch.equal(out_x[fail], x[fail])
        keep = p.last["keep_mask"].bool().expand_as(x)
        # the diagnostic region is (almost) the original: a soft boundary only changes its edge
        assert (out_x - x).abs()[keep].mean() < (out_x - x).abs()[~keep].mean() + 1e-6


def test_meddiffusemix_uses_the_generator_for_the_background():
    ds, idx, x, y, seg = batch(B=4, size=32)
    calls = {}

    def gen(images, labels, keep_mask, generator=None):
        calls["keep"] = keep_mask
        return torch.zeros_like(images)

    p = mix.MedDiffuseMix(K, LesionProbe(num_classes=K), gen, kappa=0.0, sigma=0.0)
    out_x, _ = p(x, y, generator=torch.Generator().manual_seed(0))
    keep = calls["keep"].bool()
    beta = p.last["beta"].view(-1, 1, 1, 1)
    assert torch.allclose(out_x, torch.where(keep, x, (1 - beta) * x), atol=1e-6)
    assert (p.last["index_b"] == -1).all()


def test_genmix_pairs_and_folder_generator(tmp_path):
    from PIL import Image

    ds, idx, x, y, seg = batch(B=6)
    same = build("genmix", ds)
    _, ys = run(same, ds, idx, x, y)
    assert torch.allclose(ys, torch.nn.functional.one_hot(y, K).float())
    assert torch.equal(same.last["syn_classes"], y)
    rnd = build("genmix", ds, pair="random")
    _, yr = run(rnd, ds, idx, x, y)
    lam, syn = rnd.last["lam"], rnd.last["syn_classes"]
    oh = torch.nn.functional.one_hot
    assert torch.allclose(yr, lam[:, None] * oh(y, K).float() + (1 - lam[:, None]) * oh(syn, K).float())
    # a folder of synthetic images, class index sub-folders, another size: resized
    for c in range(K):
        (tmp_path / str(c)).mkdir()
        Image.fromarray((np.random.rand(20, 20) * 255).astype(np.uint8)).save(tmp_path / str(c) / "a.png")
    folder = mix.GenMix(K, str(tmp_path))
    out_x, _ = folder(x, y, generator=torch.Generator().manual_seed(0))
    assert out_x.shape == x.shape and folder.last["x_syn"].shape == x.shape


def _call_folder(folder, labels, queue):
    queue.put(folder(labels, generator=torch.Generator().manual_seed(1)).numpy())  # (by value)


def test_synthetic_folder_cache_and_threads_give_the_decoded_bits(tmp_path):
    """The cache (uint8 codes for 8-bit images, floats for the rest) and the decoding threads
    return exactly what decoding each file on every call does; the budget is respected; a
    pickled folder (a DataLoader worker's copy) starts with an empty cache of its own."""
    import pickle

    from PIL import Image

    codes = torch.arange(256, dtype=torch.uint8)  # the cache's float32 division: load_image's bits
    assert torch.equal(codes.float().div_(255), torch.from_numpy((codes.numpy() / 255.0).astype(np.float32)))
    rng = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / str(c)).mkdir()
        for i in range(4):
            Image.fromarray((rng.random((9, 11, 3)) * 255).astype(np.uint8)).save(tmp_path / str(c) / f"{i}.png")
    # another size (resized to the batch's first image) and a 16-bit grey image (not 8-bit
    # codes: cached as float)
    Image.fromarray((rng.random((5, 7, 3)) * 255).astype(np.uint8)).save(tmp_path / "1" / "small.png")
    Image.fromarray((rng.random((9, 11)) * 65535).astype(np.uint16)).save(tmp_path / "2" / "deep.png")
    labels = torch.tensor([0, 2, 1, 2, 2, 0, 1, 2] * 4)
    plain = mix.SyntheticFolder(tmp_path, cache_mb=0, workers=1)
    want = [plain(labels, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    for channels in (3, 1):
        ref = mix.SyntheticFolder(tmp_path, channels=channels, cache_mb=0, workers=1)
        cached = mix.SyntheticFolder(tmp_path, channels=channels, workers=3)
        for s in range(3):  # first calls fill the cache, later ones read it
            got = cached(labels, generator=torch.Generator().manual_seed(s))
            assert torch.equal(got, ref(labels, generator=torch.Generator().manual_seed(s)))
            if channels == 3:
                assert torch.equal(got, want[s])
        kinds = {v.dtype for v in cached._cache.values()}
        assert torch.uint8 in kinds and torch.float32 in kinds  # 8-bit codes and the 16-bit image
        assert cached._cached_bytes == sum(v.numel() * v.element_size() for v in cached._cache.values())
    small = mix.SyntheticFolder(tmp_path, cache_mb=600 / 2 ** 20)  # room for two 9 x 11 x 3 codes
    small(labels, generator=torch.Generator().manual_seed(0))
    assert len(small._cache) == 2 and small._cached_bytes <= 600
    copy = pickle.loads(pickle.dumps(small))
    assert copy._cache == {} and copy._pool is None
    assert torch.equal(copy(labels, generator=torch.Generator().manual_seed(1)), want[1])
    # a forked process (a DataLoader worker) inherits the pool without its threads: it makes
    # its own instead of waiting forever on the inherited one
    threaded = mix.SyntheticFolder(tmp_path, cache_mb=0, workers=2)
    threaded(labels, generator=torch.Generator().manual_seed(0))
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_call_folder, args=(threaded, labels, queue))  # inherited, not pickled
    child.start()
    try:
        got = queue.get(timeout=30)
    finally:
        child.join(timeout=30)
        if child.is_alive():  # (the bug this checks: the child waits forever)
            child.kill()
    assert torch.equal(torch.from_numpy(got), want[1])
    for bad in (dict(cache_mb=-1), dict(cache_mb=float("nan")), dict(workers=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            mix.SyntheticFolder(tmp_path, **bad)


IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def _constant_generator(value, dtype=torch.float32):
    def gen(classes, generator=None):
        return torch.full((classes.shape[0], 3, 12, 12), value, dtype=dtype)
    return gen


@pytest.mark.parametrize("syn_dtype", [torch.float32, torch.uint8])
def test_genmix_brings_synthetic_images_into_the_batch_space(syn_dtype):
    """Generators give [0, 1] floats (or uint8): a uint8 batch gets 0..255 (a plain cast gave
    0s and 1s: black images), a normalised batch gets (s - mean) / std."""
    syn = 0.8 if syn_dtype == torch.float32 else 204
    y = torch.tensor([0, 1, 2, 3])
    x8 = torch.randint(0, 256, (4, 3, 12, 12), dtype=torch.uint8)
    p = mix.GenMix(4, _constant_generator(syn, syn_dtype))
    out, _ = p(x8, y, generator=torch.Generator().manual_seed(0), lam=0.0)
    assert out.dtype == torch.uint8 and bool((out == 204).all())
    out, _ = p(x8, y, generator=torch.Generator().manual_seed(0), lam=0.5)  # uint8 blend rounds
    torch.testing.assert_close(out.float(), (0.5 * x8.float() + 0.5 * 204), atol=0.5, rtol=0)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    xn = (torch.rand(4, 3, 12, 12) - mean) / std
    p = mix.GenMix(4, _constant_generator(syn, syn_dtype), mean=IMAGENET[0], std=IMAGENET[1])
    out, _ = p(xn, y, generator=torch.Generator().manual_seed(0), lam=0.0)
    torch.testing.assert_close(out, ((0.8 - mean) / std).expand_as(out))
    xf = torch.rand(4, 3, 12, 12)  # float in [0, 1], no mean / std: as given
    out, _ = mix.GenMix(4, _constant_generator(syn, syn_dtype))(xf, y, generator=torch.Generator().manual_seed(0),
                                                                lam=0.0)
    torch.testing.assert_close(out, torch.full_like(xf, 0.8))


def test_pixel_space_round_trip_and_errors():
    from medmix_ops._pixels import PixelSpace

    space = PixelSpace(*IMAGENET)
    u = torch.rand(2, 3, 5, 5)
    like = torch.zeros(1, 3, 1, 1)
    torch.testing.assert_close(space.to_unit(space.from_unit(u, like)), u)
    like16 = like.to(torch.bfloat16)
    assert space.from_unit(u, like16).dtype == torch.bfloat16
    u8 = PixelSpace().from_unit(u, torch.zeros(1, dtype=torch.uint8))
    assert u8.dtype == torch.uint8 and torch.equal(u8, (u * 255).round().to(torch.uint8))
    torch.testing.assert_close(PixelSpace().to_unit(u8), u8.float() / 255)
    one = PixelSpace(0.5, 0.25)  # one value for every channel
    torch.testing.assert_close(one.from_unit(u, like), (u - 0.5) / 0.25)
    for kwargs, exc, message in [
        (dict(mean=[0.5, 0.5, 0.5]), ValueError, "give mean and std together"),
        (dict(mean=[0.5], std=[0.0]), ValueError, "std must be finite and > 0"),
        (dict(mean=[float("nan")], std=[1.0]), ValueError, "mean must be finite"),
        (dict(mean="abc", std=[1.0]), TypeError, "mean must be a number or a sequence"),
        (dict(mean=[0.1, 0.2], std=[1.0, 1.0, 1.0]), ValueError, "one value per channel"),
    ]:
        with pytest.raises(exc, match=message):
            PixelSpace(**kwargs, owner="GenMix")
    with pytest.raises(ValueError, match="mean has 2 values, the images have 3 channels"):
        PixelSpace([0.1, 0.2], [1.0, 1.0]).to_unit(u)


# ---- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,exc,message", [
    (lambda: mix.Mixup(0), ValueError, "num_classes must be an int >= 1"),
    (lambda: mix.Mixup(4, alpha=0), ValueError, "alpha must be in (0.0"),
    (lambda: mix.Mixup(4, prob=1.5), ValueError, "prob must be in [0.0, 1.0]"),
    (lambda: mix.Mixup(4, mode="pair"), ValueError, "mode must be one of"),
    (lambda: mix.Mixup(4, partner="nearest"), ValueError, "partner must be one of"),
    (lambda: mix.SPMix(4, alpha=1.2), ValueError, "alpha (the ratio cap) must be in (0, 1]"),
    (lambda: mix.SPMix(4, label="hard"), ValueError, "label must be 'keep' or 'soft'"),
    (lambda: mix.SaliencyMix(4, method="gradcam"), ValueError, "method must be 'fine_grained'"),
    (lambda: mix.VariMix(4, "generator.pt"), TypeError, "translator must be callable"),
    (lambda: mix.MedDiffuseMix(4, "resnet"), TypeError, "model must be the classifier"),
    (lambda: mix.MedDiffuseMix(4, LesionProbe(), q=0), ValueError, "q must be > 0"),
    (lambda: mix.GenMix(4, 42), TypeError, "generator must be callable"),
    (lambda: mix.GenMix(4, lambda l, generator=None: l, pair="any"), ValueError, "pair must be"),
    (lambda: make_policy("puzzlemix", 4), ValueError, "unknown policy 'puzzlemix'"),
    (lambda: make_policy("varimix", 4), ValueError, "varimix needs a translator"),
])
def test_bad_construction(make, exc, message):
    with pytest.raises(exc, match=__import__("re").escape(message)):
        make()


@pytest.mark.parametrize("args,exc,message", [
    (dict(x=torch.rand(3, 8, 8)), ValueError, "x must be images [B, C, H, W]"),
    (dict(x=torch.zeros(2, 3, 8, 8, dtype=torch.int64)), TypeError, "x must be float or uint8"),
    (dict(y=torch.tensor([0, 7])), ValueError, "labels must be in [0, num_classes = 4)"),
    (dict(y=torch.tensor([0, 1, 2])), ValueError, "integer labels y must be [B] = [2]"),
    (dict(y=torch.tensor([0.0, 1.0])), ValueError, "integer labels y must be [B] = [2] ints, got torch.float32"),
    (dict(y=torch.tensor([True, False])), ValueError, "integer labels y must be [B] = [2] ints, got torch.bool"),
    (dict(y=torch.empty(2, dtype=torch.bits8)), ValueError, "integer labels y must be [B] = [2] ints, got torch.bits8"),
    (dict(y=torch.rand(2, 3)), ValueError, "targets y must be float [B, K] = [2, 4]"),
    (dict(y=[0, 1]), TypeError, "y must be a tensor"),
    (dict(generator=42), TypeError, "generator must be a CPU torch.Generator"),
    (dict(seg=torch.zeros(2, 1, 8, 9)), ValueError, "seg must be [B, 1, H, W] or [B, H, W]"),
    (dict(lam=1.5), ValueError, "lam must be a float or [B] = [2] in [0, 1]"),
    (dict(bogus=1), TypeError, "unexpected keyword argument 'bogus'"),
])
def test_bad_call(args, exc, message):
    call = dict(x=torch.rand(2, 3, 8, 8), y=torch.tensor([0, 1]))
    call.update(args)
    with pytest.raises(exc, match=__import__("re").escape(message)):
        mix.Mixup(4)(**call)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_every_integer_label_dtype_is_accepted_and_range_checked(dtype):
    """The range check reads labels through an unsigned view of their width: a negative label
    of any width is caught, and every integer width gives the int64 result."""
    x = torch.rand(3, 3, 8, 8)
    want = mix.Mixup(4)(x, torch.tensor([0, 3, 1]), generator=torch.Generator().manual_seed(1))
    got = mix.Mixup(4)(x, torch.tensor([0, 3, 1], dtype=dtype), generator=torch.Generator().manual_seed(1))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    bad = [0, 4, 1] if dtype == torch.uint8 else [0, -1, 1]
    with pytest.raises(ValueError, match="labels must be in"):
        mix.Mixup(4)(x, torch.tensor(bad, dtype=dtype))


@pytest.mark.parametrize("kind,mode", [("mixup", "batch"), ("mixup", "elem"), ("cutmix", "batch"),
                                       ("cutmix", "elem")])
def test_soft_targets_are_the_per_row_formula_bit_for_bit(kind, mode):
    """A per-batch lam is applied to the targets as one float32 scalar: the same bits as the
    per-row column lam * t[a] + (1 - lam) * t[b] in float32."""
    ds, idx, x, y, seg = batch(B=7)
    p = (mix.Mixup if kind == "mixup" else mix.CutMix)(K, mode=mode, label_smoothing=0.1)
    for seed in range(4):
        _, got = p(x, y, generator=torch.Generator().manual_seed(seed))
        last = p.last
        lam = last["lam"].to(torch.float32)[:, None]
        t = mix.one_hot_targets(y, K, 0.1, "cpu")
        want = lam * t[last["index_a"]] + (1 - lam) * t[last["index_b"]]
        assert torch.equal(got, want), (seed, (got - want).abs().max())
        assert mode == "elem" or bool((last["lam"] == last["lam"][0]).all())


def test_hooks_and_in_place_compile_still_see_every_call():
    """Policies skip nn.Module's call machinery only while nothing is registered: a module
    hook, a process-wide hook or module.compile() takes the full path again."""
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    p = mix.CutMix(K)
    seen = []
    h = p.register_forward_hook(lambda m, i, o: seen.append("module"))
    p(x, y)
    h.remove()
    p(x, y)
    assert seen == ["module"]
    g = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, i: seen.append("global"))
    try:
        p(x, y)
    finally:
        g.remove()
    p(x, y)
    assert seen == ["module", "global"]
    calls = []
    p._compiled_call_impl = lambda *a, **k: calls.append(1) or (a[0], None)  # what module.compile() sets
    p(x, y)
    assert calls == [1]


@pytest.mark.parametrize("name", ["mixup", "cutmix", "saliencymix"])
def test_policies_run_eagerly_inside_torch_compile(name):
    """torch.compile of a policy, or of a step that calls one, runs the policy's host-side
    draws eagerly (one graph break) and gives the eager result; dynamo used to fail tracing
    the numpy bookkeeping."""
    ds, idx, x, y, seg = batch(B=5)
    p = build(name, ds, label_smoothing=0.05)  # (a smoothing no other test caches first)
    got = torch.compile(p)(x, y, generator=torch.Generator().manual_seed(2))  # compiled first
    want = p(x, y, generator=torch.Generator().manual_seed(2))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    def step(x, y):
        x_mix, y_soft = p(x, y, generator=torch.Generator().manual_seed(2))
        return x_mix.mean() + y_soft.sum()

    # Inductor's reductions (mean, sum) may order their additions unlike eager's: equal to
    # float rounding. Other partners or lam would move the value by ~1e-2.
    got = torch.compile(step)(x, y)
    torch.testing.assert_close(got, step(x, y), rtol=1e-6, atol=0)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_one_hot_targets_definition_and_out_of_range_rows(smoothing):
    """timm's mixup_target convention; an out-of-range label (unchecked labels on a GPU reach
    it that way) gives a row of NaN on every path: a NaN loss, never a silently wrong target,
    an error or a wrapped index."""
    from medmix_ops.mix import one_hot_targets
    from medmix_ops.mix._base import _one_hot_rows, _one_hot_table

    K = 4
    y = torch.tensor([0, 3, -1, 7, 2, 4, -5, 1], dtype=torch.int32)
    off = smoothing / K
    want = torch.full((8, K), off)
    for r, c in ((0, 0), (1, 3), (4, 2), (7, 1)):
        want[r, c] = 1 - smoothing + off
    for r in (2, 3, 5, 6):
        want[r] = float("nan")
    got = one_hot_targets(y, K, smoothing, "cpu")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    # the device path (clamp, wrap, one gather from a device table), run on host tensors
    table = torch.from_numpy(_one_hot_table(K, smoothing).copy())
    dev = _one_hot_rows(y.long(), K, False, table)
    torch.testing.assert_close(dev, want, rtol=0, atol=0, equal_nan=True)
    inr = y.long().clamp(0, K - 1)
    assert torch.equal(_one_hot_rows(inr, K, True, table), one_hot_targets(inr, K, smoothing, "cpu", True))
    got_meta = one_hot_targets(y.to("meta"), K, smoothing, "meta")
    assert got_meta.shape == (8, K) and got_meta.dtype == torch.float32
    soft = torch.rand(8, K)
    assert torch.equal(one_hot_targets(soft, K, smoothing, "cpu"), soft)  # [B, K] passes through


def test_validate_flag_checks_host_labels_anyway_and_is_a_bool():
    """validate=False only trusts labels on a GPU: host labels are checked for free, always."""
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"labels must be in \[0, num_classes = 4\), got min 0, max 7"):
        mix.Mixup(4, validate=False)(x, torch.tensor([0, 7]))
    with pytest.raises(TypeError, match="validate must be a bool, got str"):
        mix.CutMix(4, validate="no")
    balanced = mix.Mixup(4, partner="class_balanced", validate=False)
    with pytest.raises(ValueError, match="labels must be in"):
        balanced(x, torch.tensor([-3, 1]))
    _, y = balanced(x, torch.tensor([2, 1]), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(y).all() and torch.allclose(y.sum(1), torch.ones(2))
