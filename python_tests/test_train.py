"""Reference training: classifier and generators run, resume exactly (also after SIGKILL),
refuse incompatible checkpoints, evaluate, sample, compare, and run under torchrun DDP."""
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import numpy as np
import torch

from medmix_ops import cli, mix
from medmix_ops.models import load_generator
from medmix_ops.train.classifier import ClassifierConfig, train_classifier
from medmix_ops.train.generator import GeneratorConfig, train_generator

# 60 images in batches of 8: every epoch ends with a partial batch, which resume must handle
SMALL = dict(img_size=32, batch_size=8, n_train=60, n_test=32, log_every=2, progress=False)


TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")  # the venv's, beside its python
TORCHRUN = TORCHRUN if os.path.exists(TORCHRUN) else shutil.which("torchrun")
needs_torchrun = pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_classifier_outputs(tmp_path):
    m = train_classifier(ClassifierConfig(steps=6, ckpt_every=3, policy="cutmix", **SMALL), str(tmp_path))
    for name in ("metrics.json", "confusion.png", "log.csv", "config.json", "checkpoint.pt"):
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "auroc", "per_class_recall", "confusion_matrix"):
        assert key in saved
    assert len(saved["per_class_recall"]) == 4 and sum(map(sum, saved["confusion_matrix"])) == 32
    assert 0 <= m["accuracy"] <= 1
    assert (tmp_path / "tensorboard").is_dir()


@pytest.mark.parametrize("policy", ["saliencymix", "varimix"])
def test_resume_is_exact(tmp_path, policy):
    # short warm-up so the cosine schedule matters; the stop (step 8) is an epoch's partial batch
    cfg = ClassifierConfig(steps=12, ckpt_every=4, warmup=2, policy=policy, **SMALL)
    train_classifier(cfg, str(tmp_path / "a"))
    stopped = train_classifier(dataclasses.replace(cfg, stop_after=8), str(tmp_path / "b"))
    assert stopped["stopped_at"] == 8 and not (tmp_path / "b" / "metrics.json").exists()
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["sampler"] == dict(epoch=0, position=60)
    train_classifier(cfg, str(tmp_path / "b"), resume=True)
    a, b = weights(tmp_path / "a" / "checkpoint.pt"), weights(tmp_path / "b" / "checkpoint.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mix_start_trains_unmixed_then_mixes_and_resumes_exactly(tmp_path):
    """--mix-start 5: the first five steps are those of a run without a policy (same weights),
    the policy acts from step 6 on, and a run stopped at the switch resumes exactly."""
    cfg = ClassifierConfig(steps=8, ckpt_every=4, warmup=2, policy="mixup", mix_start=5, **SMALL)
    train_classifier(cfg, str(tmp_path / "a"))
    train_classifier(dataclasses.replace(cfg, stop_after=5), str(tmp_path / "b"))
    train_classifier(dataclasses.replace(cfg, policy="none", mix_start=0, stop_after=5), str(tmp_path / "plain5"))
    train_classifier(dataclasses.replace(cfg, policy="none", mix_start=0), str(tmp_path / "plain8"))
    b5, plain5 = weights(tmp_path / "b" / "checkpoint.pt"), weights(tmp_path / "plain5" / "checkpoint.pt")
    assert all(torch.equal(b5[k], plain5[k]) for k in b5)
    train_classifier(cfg, str(tmp_path / "b"), resume=True)
    a, b, plain8 = (weights(tmp_path / d / "checkpoint.pt") for d in ("a", "b", "plain8"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], plain8[k]) for k in a)  # the policy did act after step 5
    with pytest.raises(ValueError, match="trained with mix_start=5, this run uses mix_start=4"):
        train_classifier(dataclasses.replace(cfg, steps=9, mix_start=4), str(tmp_path / "b"), resume=True)


def test_policy_kwargs_reach_the_policy(tmp_path):
    from medmix_ops.train.classifier import build_policy

    cfg = ClassifierConfig(policy="mixup", policy_kwargs={"alpha": 0.4, "prob": 0.5}, **SMALL)
    policy = build_policy(cfg, 4, {}, None)
    assert (policy.alpha, policy.prob) == (0.4, 0.5)
    spmix = build_policy(dataclasses.replace(cfg, policy="spmix", policy_kwargs={"patch": 4}), 4, {}, None)
    assert spmix.patch == 4  # over make_policy's default of 8
    train_classifier(dataclasses.replace(cfg, steps=2), str(tmp_path / "run"))
    with pytest.raises(ValueError, match="trained with policy_kwargs="):
        train_classifier(dataclasses.replace(cfg, steps=3, policy_kwargs={"alpha": 1.0}), str(tmp_path / "run"),
                         resume=True)


def test_nan_loss_stops_before_a_checkpoint(tmp_path, monkeypatch):
    """The loss's finiteness is read at log / checkpoint steps only (no sync per step), yet a
    NaN is reported with the step it appeared at, and no checkpoint holds NaN weights."""
    from medmix_ops.train import classifier

    real, calls = classifier.soft_cross_entropy, []

    def nan_at_step_5(logits, target):
        calls.append(1)
        loss = real(logits, target)
        return loss * float("nan") if len(calls) == 5 else loss

    monkeypatch.setattr(classifier, "soft_cross_entropy", nan_at_step_5)
    cfg = ClassifierConfig(steps=12, ckpt_every=4, policy="mixup", **dict(SMALL, log_every=3))
    with pytest.raises(FloatingPointError, match=r"inf or NaN at step 5 \(found at step 6;"):
        train_classifier(cfg, str(tmp_path))
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 4
    assert all(bool(torch.isfinite(v).all()) for v in ckpt["model"].values() if v.is_floating_point())


def test_sigkill_loses_at_most_one_interval(tmp_path):
    """A run killed with SIGKILL mid-training resumes from its last (intact) checkpoint and ends
    with the weights of an uninterrupted run."""
    args = ["--steps", "30", "--img-size", "32", "--batch-size", "8", "--n-train", "60", "--n-test", "16",
            "--ckpt-every", "4", "--log-every", "4", "--warmup", "3", "--policy", "mixup"]
    run = [sys.executable, "-m", "medmix_ops.cli", "train-classifier", *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(run + ["--out", str(tmp_path / "killed")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for a checkpoint past step 8, then kill mid-training
        if ckpt.exists():
            try:
                if torch.load(ckpt, weights_only=True)["step"] >= 8:
                    break
            except Exception:  # noqa: BLE001 - being replaced right now: try again
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = torch.load(ckpt, weights_only=True)["step"]
    assert 8 <= step_at_kill <= 30
    res = subprocess.run(run + ["--out", str(tmp_path / "killed"), "--resume"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming from step {step_at_kill}" in res.stdout + res.stderr
    full = subprocess.run(run + ["--out", str(tmp_path / "full")], env=env, capture_output=True, timeout=300)
    assert full.returncode == 0
    a, b = weights(tmp_path / "full" / "checkpoint.pt"), weights(ckpt)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_incompatible_and_corrupt_checkpoints_are_refused(tmp_path, capsys):
    train_classifier(ClassifierConfig(steps=2, **SMALL), str(tmp_path))
    with pytest.raises(ValueError, match="trained with batch_size=8, this run uses batch_size=16"):
        train_classifier(ClassifierConfig(steps=4, **dict(SMALL, batch_size=16)), str(tmp_path), resume=True)
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot be read"):
        train_classifier(ClassifierConfig(steps=4, **SMALL), str(tmp_path), resume=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_classifier(ClassifierConfig(steps=4, **SMALL), str(tmp_path / "none"), resume=True)
    with pytest.raises(FileExistsError, match="pass --resume to continue that run"):  # never overwritten
        train_classifier(ClassifierConfig(steps=4, **SMALL), str(tmp_path))
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"garbage"
    gen = tmp_path / "gen"
    train_generator(GeneratorConfig(kind="dcgan", steps=1, **_gsmall()), str(gen))
    with pytest.raises(ValueError, match="is a 'generator' checkpoint, not 'classifier'"):
        train_classifier(ClassifierConfig(steps=4, **SMALL), str(gen), resume=True)


MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _gsmall():
    return dict(img_size=32, batch_size=8, n_train=32, width=8, log_every=1, progress=False)


@pytest.mark.parametrize("kind", ["dcgan", "ddpm", "i2i"])
def test_generators_train_and_drive_their_policies(tmp_path, kind):
    train_generator(GeneratorConfig(kind=kind, steps=3, ckpt_every=2, **_gsmall()), str(tmp_path))
    gen = load_generator(tmp_path / "checkpoint.pt")
    from medmix_ops.data import SynthLesion

    ds = SynthLesion(6, size=48)
    x, _ = ds.render(list(range(6)))
    y = ds.labels[:6]
    if kind == "i2i":
        x_hat = gen.translator()(x, x.flip(0))
        assert x_hat.shape == x.shape and 0 <= x_hat.min() and x_hat.max() <= 1
        # a normalised batch (timm's ImageNet mean / std) maps to [0, 1] and back
        xn = (x - MEAN) / STD
        torch.testing.assert_close(gen.translator(mean=MEAN.flatten().tolist(), std=STD.flatten().tolist())(
            xn, xn.flip(0)), (x_hat - MEAN) / STD, atol=1e-5, rtol=1e-5)
        x8 = (x * 255).round().to(torch.uint8)  # uint8 batches: 0..255 in and out
        assert gen.translator()(x8, x8.flip(0)).dtype == torch.uint8
        policy = mix.VariMix.from_checkpoint(tmp_path / "checkpoint.pt", num_classes=4)
        out, yy = policy(x, y, generator=torch.Generator().manual_seed(0))
        assert out.shape == (12, 3, 48, 48)
        with pytest.raises(ValueError, match="trained for 4 classes"):
            mix.VariMix.from_checkpoint(tmp_path / "checkpoint.pt", num_classes=5)
        with pytest.raises(ValueError, match="needs a 'ddpm' one"):
            gen.inpainter()
        return
    imgs = gen.sampler(steps=4)(y) if kind == "ddpm" else gen.sampler()(y)
    assert imgs.shape == (6, 3, 32, 32) and 0 <= imgs.min() and imgs.max() <= 1
    out, _ = mix.GenMix(4, gen.sampler(steps=4) if kind == "ddpm" else gen.sampler())(
        x, y, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape  # 32 px synthetic images resized to 48 px
    if kind == "ddpm":
        keep = torch.zeros(6, 1, 48, 48)
        keep[..., 10:30, 10:30] = 1
        filled = gen.inpainter(steps=4)(x, y, keep, generator=torch.Generator().manual_seed(0))
        assert filled.shape == x.shape
        kept = keep.bool().expand_as(x)
        assert torch.equal(filled[kept], x[kept])  # the kept pixels survive inpainting exactly
        assert (filled - x).abs()[~kept].mean() > 1e-3  # and the rest was regenerated
        filled_n = gen.inpainter(steps=4, mean=MEAN.flatten().tolist(), std=STD.flatten().tolist())(
            (x - MEAN) / STD, y, keep, generator=torch.Generator().manual_seed(0))
        # The normalised batch reaches the model as x * STD + MEAN, a few ulps off x, and four
        # DDIM steps of the UNet amplify that to ~4e-6 in [0, 1] (1.6e-5 after / STD here, one
        # dependency update away from 1e-5): the tolerance is 10x that. A wrong mean or std
        # would be off by 1e-2 or more.
        torch.testing.assert_close(filled_n, (filled - MEAN) / STD, atol=2e-4, rtol=1e-5)


@pytest.mark.parametrize("kind", ["dcgan", "i2i"])
def test_generator_resume_is_exact(tmp_path, kind):
    cfg = GeneratorConfig(kind=kind, steps=6, ckpt_every=2, **dict(_gsmall(), n_train=28))
    train_generator(cfg, str(tmp_path / "a"))
    train_generator(dataclasses.replace(cfg, stop_after=4), str(tmp_path / "b"))  # 4 = a partial batch
    train_generator(cfg, str(tmp_path / "b"), resume=True)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for part in ("models", "ema"):
        for name in a[part]:
            assert all(torch.equal(a[part][name][k], b[part][name][k]) for k in a[part][name]), (part, name)


def test_generator_nan_loss_stops_before_a_checkpoint(tmp_path, monkeypatch):
    from medmix_ops.train import generator

    real, calls = generator._dcgan_step, []

    def nan_d_at_step_3(*args):
        calls.append(1)
        losses = real(*args)
        return dict(losses, loss_d=losses["loss_d"] * float("nan")) if len(calls) == 3 else losses

    monkeypatch.setattr(generator, "_dcgan_step", nan_d_at_step_3)
    cfg = GeneratorConfig(kind="dcgan", steps=6, ckpt_every=2, **dict(_gsmall(), log_every=4))
    with pytest.raises(FloatingPointError, match=r"inf or NaN at step 3 \(found at step 4;"):
        train_generator(cfg, str(tmp_path))
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 2


def test_sample_command_and_synthetic_folder(tmp_path):
    train_generator(GeneratorConfig(kind="dcgan", steps=2, **_gsmall()), str(tmp_path / "g"))
    ck = str(tmp_path / "g" / "checkpoint.pt")
    assert cli.main(["sample", "--ckpt", ck, "--n", "3", "-o", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").exists()
    assert cli.main(["sample", "--ckpt", ck, "--n", "2", "-o", str(tmp_path / "syn")]) == 0
    assert sorted(p.name for p in (tmp_path / "syn").iterdir()) == ["0", "1", "2", "3"]
    policy = mix.GenMix(4, str(tmp_path / "syn"))
    out, _ = policy(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    assert out.shape == (4, 3, 32, 32)


def test_timm_swinv2_trains(tmp_path):
    cfg = ClassifierConfig(steps=3, model="swinv2_cr_tiny_ns_224", **dict(SMALL, img_size=64),
                           model_kwargs=dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4)))
    m = train_classifier(cfg, str(tmp_path))
    assert "accuracy" in m


def test_compare_writes_a_table(tmp_path, capsys):
    rc = cli.main(["compare", "--policies", "none,mixup", "--seeds", "2", "--steps", "3", "--img-size", "32",
                   "--batch-size", "8", "--n-train", "48", "--n-test", "16", "--imbalance", "0.2",
                   "--out", str(tmp_path)])
    assert rc == 0
    result = json.loads((tmp_path / "compare.json").read_text())
    assert set(result["results"]) == {"none", "mixup"} and result["results"]["mixup"]["runs"] == 2
    assert result["classes"][result["tail_class"]] == "metastasis"
    assert (tmp_path / "compare.md").exists() and (tmp_path / "compare.png").exists()
    assert (tmp_path / "compare_loss.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "tail recall" in printed and "balanced acc." in printed
    runs = [json.loads((tmp_path / f"mixup-seed{s}" / "metrics.json").read_text()) for s in range(2)]
    bal = result["results"]["mixup"]["balanced_accuracy"]
    assert bal["mean"] == pytest.approx(np.mean([m["balanced_accuracy"] for m in runs]))
    assert bal["std"] == pytest.approx(np.std([m["balanced_accuracy"] for m in runs], ddof=1))
    assert "2 seeds (mean +- std)" in printed and " +- " in (tmp_path / "compare.md").read_text()
    # the same folder with another recipe is refused (its finished runs would enter the table)
    capsys.readouterr()
    rc = cli.main(["compare", "--policies", "none,mixup", "--seeds", "2", "--steps", "4", "--img-size", "32",
                   "--batch-size", "8", "--n-train", "48", "--n-test", "16", "--imbalance", "0.2",
                   "--lr", "1e-3", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "none-seed0" in err and "steps=3 (asked: 4)" in err and "lr=0.0005 (asked: 0.001)" in err
    assert json.loads((tmp_path / "compare.json").read_text()) == result  # left as it was


def test_compare_policy_options_for_all_or_per_policy():
    from medmix_ops.train.compare import options_per_policy

    policies = ["none", "mixup", "spmix"]
    assert options_per_policy({}, policies) == dict(none={}, mixup={}, spmix={})
    assert options_per_policy({"prob": 0.5}, policies) == dict(none={}, mixup={"prob": 0.5}, spmix={"prob": 0.5})
    per = options_per_policy({"spmix": {"patch": 4}}, policies)
    assert per == dict(none={}, mixup={}, spmix={"patch": 4})
    for bad, msg in [({"spmix": {"patch": 4}, "prob": 0.5}, "not both: spmix name policies, prob do not"),
                     ({"none": {}}, "none takes no options"),
                     ({"cutmix": {"alpha": 1.0}}, "cutmix is not among --policies \\(none,mixup,spmix\\)"),
                     ({"mixup": 0.4}, "the options of mixup must be a JSON object, got 0.4")]:
        with pytest.raises(ValueError, match=msg):
            options_per_policy(bad, policies)


def test_compare_gives_each_policy_its_options_and_checks_them_before_training(tmp_path, capsys):
    args = ["compare", "--policies", "none,mixup,cutmix", "--seeds", "1", "--steps", "2", "--img-size", "32",
            "--batch-size", "8", "--n-train", "24", "--n-test", "8"]
    # an option cutmix does not take stops the compare before the baseline trains, not after it
    rc = cli.main([*args, "--policy-kwargs", '{"cutmix": {"q": 0.2}}', "--out", str(tmp_path / "bad")])
    assert rc == 2 and "--policy-kwargs {\"q\": 0.2} for cutmix" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "none-seed0").exists()
    rc = cli.main([*args, "--mix-start", "2", "--out", str(tmp_path / "late")])
    assert rc == 2 and "--mix-start 2 leaves no step for mixup, cutmix (2 training steps)" in capsys.readouterr().err
    assert not (tmp_path / "late" / "none-seed0").exists()
    # VariMix needs one class per image: refused before anything trains, not after four policies
    npz = _chest_like_npz(tmp_path / "chest.npz")
    rc = cli.main([*args[:2], "none,varimix", *args[3:], "--data", npz, "--out", str(tmp_path / "ml")])
    assert rc == 2 and "--policy varimix needs one class per image" in capsys.readouterr().err
    assert not (tmp_path / "ml" / "none-seed0").exists()
    rc = cli.main([*args, "--policy-kwargs", '{"mixup": {"alpha": 0.4}}', "--out", str(tmp_path / "ok")])
    assert rc == 0
    saved = {p: json.loads((tmp_path / "ok" / f"{p}-seed0" / "config.json").read_text())["policy_kwargs"]
             for p in ("none", "mixup", "cutmix")}
    assert saved == dict(none={}, mixup={"alpha": 0.4}, cutmix={})


def test_compare_table_of_one_seed_prints_no_std():
    """A std over one run says nothing: one seed gives plain values and says "1 seed"."""
    from medmix_ops.train.compare import format_table

    cell = dict(mean=0.5, std=0.0)
    result = dict(config=dict(model="m", data="d", img_size=8, imbalance=None, steps=1, batch_size=2, lr=1e-3,
                              warmup=0), seeds=1, classes=["a", "b"], tail_class=1, policies=["none"],
                  results=dict(none={k: cell for k in ("accuracy", "balanced_accuracy", "macro_f1", "auroc",
                                                        "tail_recall")}))
    text = format_table(result)
    assert "1 seed;" in text and "+-" not in text and "| none | 0.500 | 0.500 |" in text
    text = format_table(dict(result, seeds=3))
    assert "3 seeds (mean +- std)" in text and "| none | 0.500 +- 0.000 |" in text
    assert "mix from" not in text and "options" not in text
    # a recipe's mixing options are part of what the table measured: named in its header
    text = format_table(dict(result, config=dict(result["config"], mix_start=300,
                                                  policy_kwargs={"spmix": {"prob": 0.5}})))
    assert ("; policies mix from step 301 (the first 300 unmixed); policy options "
            '{"spmix": {"prob": 0.5}}') in text.splitlines()[0]


def test_compare_accepts_a_run_saved_before_a_setting_existed(tmp_path):
    """A config.json without a newer key (intensity) counts as its default, as --resume does."""
    from medmix_ops.train.compare import check_same_settings

    cfg = ClassifierConfig(steps=7)
    saved = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "intensity"}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    check_same_settings(tmp_path, cfg)
    with pytest.raises(ValueError, match="intensity='bit_depth' \\(asked: 'min_max'\\)"):
        check_same_settings(tmp_path, dataclasses.replace(cfg, intensity="min_max"))


def test_compare_balanced_accuracy_of_a_run_finished_before_the_key():
    """A compare folder picked up again may hold metrics.json files written before
    balanced_accuracy existed: the table recomputes it from the per-class recalls."""
    from medmix_ops.train.compare import _balanced_accuracy

    assert _balanced_accuracy(dict(per_class_recall=[0.5, None, 1.0])) == pytest.approx(0.75)
    assert _balanced_accuracy(dict(balanced_accuracy=0.4, per_class_recall=[0.5, 1.0])) == 0.4


def _free_port() -> int:
    """A port nothing listens on now (the OS picks it), rather than a fixed one another process
    (or a second run of the suite) may hold."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_two_ranks(out, command: str, *args: str) -> dict:
    """Runs `medmix <command> ... --device cpu --out out` on 2 gloo ranks; returns the checkpoint."""
    port = _free_port()
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(port), "-m", "medmix_ops.cli", command,
           *args, "--device", "cpu", "--out", str(out)]
    # torchrun's agent makes a torchelastic_* directory under the temp dir and leaves it there:
    # TMPDIR keeps it inside pytest's tmp_path, not in /tmp after every run of the suite
    tmp = out / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(tmp)})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return torch.load(out / "checkpoint.pt", weights_only=True)


@needs_torchrun
def test_torchrun_ddp_on_cpu(tmp_path):
    ck = _torchrun_two_ranks(tmp_path, "train-classifier", "--steps", "4", "--img-size", "32",
                             "--batch-size", "4", "--n-train", "32", "--n-test", "16", "--ckpt-every", "2",
                             "--policy", "mixup")
    assert ck["step"] == 4 and len(ck["rng"]) == 2  # both ranks' RNG states, one checkpoint
    assert json.loads((tmp_path / "config.json").read_text())["world_size"] == 2
    assert (tmp_path / "metrics.json").exists()


@needs_torchrun
def test_torchrun_generator_replicas_stay_in_step(tmp_path):
    """The i2i GAN under torchrun: gradients averaged over ranks (an optimizer hook, since DDP
    cannot do R1's double backward); the run checks every rank ends with the same weights."""
    ck = _torchrun_two_ranks(tmp_path, "train-generator", "--kind", "i2i", "--steps", "3", "--img-size", "32",
                             "--batch-size", "4", "--n-train", "16", "--width", "8", "--ckpt-every", "2")
    assert ck["step"] == 3 and len(ck["rng"]) == 2


def test_average_gradients_flat_buffer_bookkeeping(monkeypatch):
    """The generators' gradient averaging packs every gradient into one flat buffer per dtype
    for a single all-reduce. A stand-in all-reduce (the sum over a second rank holding the
    same gradients plus one per element index) checks that each gradient gets its own segment
    back, a missing gradient stays missing, and float64 parameters get their own buffer."""
    import torch.distributed as dist
    from medmix_ops.train.generator import _average_gradients

    ps = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5)),
          torch.nn.Parameter(torch.randn(2, dtype=torch.float64)), torch.nn.Parameter(torch.randn(7))]
    for p in ps[:3]:
        p.grad = torch.randn_like(p)
    want = [p.grad.clone() for p in ps[:3]]
    calls = []

    def two_rank_sum(t):
        calls.append(t.dtype)
        t.add_(t + torch.arange(t.numel(), dtype=t.dtype))  # rank 1: g + its flat index

    monkeypatch.setattr(dist, "all_reduce", two_rank_sum)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    _average_gradients(torch.optim.SGD(ps, lr=0.1), (), {})
    assert calls == [torch.float32, torch.float64]  # one collective per dtype
    offsets = {torch.float32: 0, torch.float64: 0}
    for p, w in zip(ps[:3], want):
        o = offsets[w.dtype]
        index = torch.arange(o, o + w.numel(), dtype=w.dtype).view_as(w)
        torch.testing.assert_close(p.grad, w + index / 2, rtol=0, atol=1e-6)
        offsets[w.dtype] += w.numel()
    assert ps[3].grad is None


@pytest.mark.parametrize("argv,message", [
    (["train-classifier", "--model", "no_such_model", "--steps", "1"], "--model 'no_such_model'"),
    (["train-classifier", "--data", "/nonexistent/dir", "--steps", "1"], "no such file or directory"),
    (["train-classifier", "--policy", "puzzlemix", "--steps", "1"], "--policy must be none or one of"),
    (["train-classifier", "--steps", "0"], "--steps must be >= 1"),
    (["train-classifier", "--model-kwargs", "[1]", "--steps", "1"], "--model-kwargs must be a JSON object"),
    (["train-classifier", "--policy-kwargs", "{", "--steps", "1"], "--policy-kwargs must be a JSON object"),
    (["train-classifier", "--policy", "mixup", "--policy-kwargs", '{"q": 0.2}', "--steps", "1", "--n-train", "8",
      "--n-test", "4", "--img-size", "32"], "--policy-kwargs {\"q\": 0.2} for mixup: "),
    (["train-classifier", "--policy", "varimix", "--policy-kwargs", '{"translator": 1}', "--steps", "1",
      "--n-train", "8", "--n-test", "4", "--img-size", "32"], "--policy-kwargs cannot set translator"),
    (["train-classifier", "--policy-kwargs", '{"alpha": 0.4}', "--steps", "1", "--n-train", "8", "--n-test", "4",
      "--img-size", "32"], "need a --policy other than none"),
    (["train-classifier", "--policy", "mixup", "--mix-start", "3", "--steps", "3", "--n-train", "8", "--n-test", "4",
      "--img-size", "32"], "--mix-start 3 leaves no step for --policy mixup (3 training steps)"),
    (["train-classifier", "--mix-start", "-1"], "--mix-start must be an int >= 0, got -1"),
    (["train-generator", "--kind", "ddpm", "--img-size", "40"], "must be a multiple of 16"),
    (["sample", "--ckpt", "/nonexistent.pt"], "does not exist"),
])
def test_command_errors_are_one_line(tmp_path, capsys, argv, message):
    rc = cli.main([*argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and err.count("\n") == 0


def test_skip_bad_images(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray((np.random.rand(16, 16, 3) * 255).astype(np.uint8)).save(tmp_path / "data" / c / f"{i}.png")
    (tmp_path / "data" / "a" / "bad.png").write_bytes(b"junk")
    args = ["train-classifier", "--data", str(tmp_path / "data"), "--steps", "2", "--img-size", "32",
            "--batch-size", "4", "--out", str(tmp_path / "o")]
    assert cli.main(args) == 2 and "bad.png: cannot read image" in capsys.readouterr().err
    assert cli.main([*args, "--skip-bad"]) == 0
    assert "skipped 1 unreadable images" in capsys.readouterr().out


def _image_tree(root, counts):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, n in counts.items():
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(root / c / f"{i}.png")


def test_a_presplit_folder_keeps_its_splits(tmp_path):
    from medmix_ops.train.data import build_datasets

    _image_tree(tmp_path / "d" / "train", {"benign": 5, "malignant": 3})
    _image_tree(tmp_path / "d" / "val", {"benign": 2, "malignant": 1})
    train, test, names, info = build_datasets(str(tmp_path / "d"), 16)
    # the split names used to become the classes: the model learned train-vs-test
    assert names == ["benign", "malignant"] and len(train) == 8 and len(test) == 3
    assert info["labels"].tolist() == [0] * 5 + [1] * 3 and [test[i][1] for i in range(3)] == [0, 0, 1]
    assert test[0][0].shape == (3, 16, 16)
    _image_tree(tmp_path / "e" / "train", {"benign": 2, "malignant": 2})
    _image_tree(tmp_path / "e" / "test", {"benign": 1, "other": 1})
    with pytest.raises(ValueError, match=r"train/ has classes \['benign', 'malignant'\] but test/ has"):
        build_datasets(str(tmp_path / "e"), 16)
    _image_tree(tmp_path / "f" / "train", {"benign": 2})
    with pytest.raises(ValueError, match="a train/ folder but no test/ or val/"):
        build_datasets(str(tmp_path / "f"), 16)


def test_intensity_min_max_reaches_the_folder_and_must_match_on_resume(tmp_path):
    from PIL import Image

    from medmix_ops.train.data import build_datasets

    root = tmp_path / "xray"
    for c in ("normal", "effusion"):
        (root / c).mkdir(parents=True)
        for i in range(6):  # 12-bit data in a 16-bit PNG
            Image.fromarray((np.arange(64).reshape(8, 8) * 64 + i).astype(np.uint16)).save(root / c / f"{i}.png")
    train, _, _, _ = build_datasets(str(root), 8)
    assert float(train[0][0].max()) == pytest.approx((63 * 64 + train.ds.indices[0] % 6) / 65535, abs=1e-6)
    train, _, _, _ = build_datasets(str(root), 8, intensity="min_max")
    assert float(train[0][0].min()) == 0.0 and float(train[0][0].max()) == 1.0
    cfg = ClassifierConfig(data=str(root), steps=2, intensity="min_max", **dict(SMALL, batch_size=4))
    train_classifier(cfg, str(tmp_path / "run"))
    with pytest.raises(ValueError, match="trained with intensity='min_max', this run uses intensity='bit_depth'"):
        train_classifier(dataclasses.replace(cfg, steps=3, intensity="bit_depth"), str(tmp_path / "run"), resume=True)
    # a checkpoint written before the key existed was a bit-depth run
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    del ck["config"]["intensity"]
    torch.save(ck, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(ValueError, match="trained with intensity='bit_depth', this run uses intensity='min_max'"):
        train_classifier(dataclasses.replace(cfg, steps=3), str(tmp_path / "run"), resume=True)
    assert train_classifier(dataclasses.replace(cfg, steps=3, intensity="bit_depth"), str(tmp_path / "run"),
                            resume=True)["samples"] > 0
    from medmix_ops.train.classifier import validate_config

    with pytest.raises(ValueError, match=r"--intensity must be one of \('bit_depth', 'min_max'\), got 'minmax'"):
        validate_config(dataclasses.replace(cfg, intensity="minmax"))


def _chest_like_npz(path, n_train=40, n_test=24, K=5):
    """A ChestMNIST-shaped multi-label file: 28 x 28 grey images, labels [N, K] of 0 / 1."""
    rng = np.random.default_rng(0)
    lab = lambda n: (rng.random((n, K)) < [0.5, 0.3, 0.2, 0.1, 0.05][:K]).astype(np.uint8)  # noqa: E731
    np.savez(path, train_images=(rng.random((n_train, 28, 28)) * 255).astype(np.uint8), train_labels=lab(n_train),
             test_images=(rng.random((n_test, 28, 28)) * 255).astype(np.uint8), test_labels=lab(n_test))
    return str(path)


def test_multi_label_medmnist_trains_with_per_label_sigmoids(tmp_path, capsys):
    data = _chest_like_npz(tmp_path / "chest.npz")
    for policy in ("mixup", "spmix"):  # "none" and cutmix run in the compare below
        m = train_classifier(ClassifierConfig(data=data, policy=policy, steps=2, **dict(SMALL, batch_size=6)),
                             str(tmp_path / policy))
        assert m["multi_label"] and len(m["per_class_auroc"]) == 5 and len(m["label_confusion"]) == 5
        assert all(sum(map(sum, c)) == 24 for c in m["label_confusion"])
        assert not (tmp_path / policy / "confusion.png").exists()
    # the CLI: a run stopped by --stop-after prints no summary (it used to raise KeyError there)
    out = tmp_path / "cli"
    args = ["train-classifier", "--data", data, "--steps", "3", "--img-size", "32", "--batch-size", "6",
            "--out", str(out)]
    assert cli.main(args + ["--stop-after", "1"]) == 0
    assert "stopped at step 1 of 3" in capsys.readouterr().out
    assert cli.main(args + ["--resume"]) == 0
    printed = capsys.readouterr().out
    assert "per-label recall" in printed and "confusion" not in printed
    # preview: multi-hot labels stacked (they were read as scalars), captions name the labels
    assert cli.main(["preview", "--policy", "spmix", "--data", data, "--size", "32", "-o", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0
    # a policy that needs one class per image is refused by name; preview has no "none"
    capsys.readouterr()
    assert cli.main(["preview", "--policy", "varimix", "--data", data, "--size", "32", "-o", str(tmp_path / "v.png")]) == 2
    err = capsys.readouterr().err
    assert "--policy varimix needs one class per image" in err and "use one of mixup, cutmix" in err
    from medmix_ops.preview import _label_set

    assert _label_set(torch.tensor([1.0, 0, 0.6, 0, 1]), list("abcde")) == "a+c+e"
    assert _label_set(torch.zeros(5), list("abcde")) == "no label"
    with pytest.raises(ValueError, match="--policy varimix needs one class per image; .*chest.npz is multi-label "
                                         r"\(use none or one of mixup"):
        train_classifier(ClassifierConfig(data=data, policy="varimix", steps=1, **SMALL), str(tmp_path / "v"))
    with pytest.raises(ValueError, match="is multi-label; the generators are conditioned on one class"):
        train_generator(GeneratorConfig(kind="dcgan", data=data, steps=1, img_size=32, batch_size=4, width=8,
                                        progress=False), str(tmp_path / "g"))
    rc = cli.main(["compare", "--data", data, "--policies", "none,cutmix", "--seeds", "1", "--steps", "2",
                   "--img-size", "32", "--batch-size", "6", "--out", str(tmp_path / "cmp")])
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert rc == 0 and result["tail_class"] == 4  # the label with the fewest positives


def test_multilabel_metrics_by_hand():
    from medmix_ops.train.metrics import auroc_binary, multilabel_metrics

    probs = torch.tensor([[0.9, 0.2, 0.6], [0.4, 0.7, 0.1], [0.8, 0.4, 0.3], [0.3, 0.6, 0.2]])
    labels = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0]], dtype=torch.float32)
    m = multilabel_metrics(probs, labels)
    # label 0: pred 1,0,1,0 vs 1,1,0,0 -> tn 1, fp 1, fn 1, tp 1; label 1: pred 0,1,0,1 = truth;
    # label 2 (no positives): pred 1,0,0,0 -> tn 3, fp 1
    assert m["label_confusion"] == [[[1, 1], [1, 1]], [[2, 0], [0, 2]], [[3, 1], [0, 0]]]
    assert m["accuracy"] == pytest.approx(9 / 12)
    assert m["per_class_recall"] == [0.5, 1.0, None]
    assert m["balanced_accuracy"] == pytest.approx(((0.5 + 0.5) / 2 + 1.0) / 2)  # labels with both kinds
    assert m["macro_f1"] == pytest.approx((0.5 + 1.0) / 2)
    p, y = probs.double().numpy(), labels.numpy() > 0.5
    assert m["per_class_auroc"][:2] == pytest.approx([auroc_binary(p[:, k], y[:, k]) for k in range(2)])
    assert m["per_class_auroc"][2] is None and m["auroc"] == pytest.approx(np.mean(m["per_class_auroc"][:2]))


def test_a_single_folder_is_split_per_class(tmp_path):
    from medmix_ops.train.data import build_datasets, stratified_split

    _image_tree(tmp_path / "d", {"a_common": 20, "b_rare": 2, "c_single": 1})
    train, test, names, info = build_datasets(str(tmp_path / "d"), 8, seed=3)
    test_labels = sorted(test[i][1] for i in range(len(test)))
    # a random 20% could leave the rare class out of either split; per class it is in both
    assert test_labels == [0, 0, 0, 0, 1] and info["labels"].bincount().tolist() == [16, 1, 1]
    labels = torch.tensor([0] * 50 + [1] * 7)
    for seed in range(5):
        tr, te = stratified_split(labels, 0.2, seed)
        assert sorted(tr + te) == list(range(57)) and labels[te].bincount().tolist() == [10, 1]
    assert stratified_split(labels, 0.2, 1) == stratified_split(labels, 0.2, 1)
    assert stratified_split(labels, 0.2, 1) != stratified_split(labels, 0.2, 2)


def test_classification_metrics_by_hand():
    import itertools

    import numpy as np

    from medmix_ops.train.metrics import auroc_binary, classification_metrics

    # 4 classes, class 3 absent from the labels; ties in the scores
    probs = torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.6, 0.3, 0.1, 0.0], [0.5, 0.5, 0.0, 0.0],
                          [0.2, 0.7, 0.1, 0.0], [0.1, 0.2, 0.7, 0.0], [0.4, 0.3, 0.3, 0.0],
                          [0.3, 0.3, 0.4, 0.0]])
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0])
    m = classification_metrics(probs, labels, 4)
    pred = [0, 0, 0, 1, 2, 0, 2]  # argmax; the 0.5 / 0.5 tie goes to the first class
    assert m["confusion_matrix"] == [[2, 0, 1, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert m["accuracy"] == pytest.approx(np.mean(np.array(pred) == labels.numpy()))
    recall = [2 / 3, 1 / 2, 1 / 2]
    assert m["per_class_recall"] == pytest.approx(recall + [None])
    assert m["balanced_accuracy"] == pytest.approx(np.mean(recall))
    precision = [2 / 4, 1 / 1, 1 / 2]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall)]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))

    def brute_auroc(s, pos):  # every (positive, negative) pair, ties half
        pairs = list(itertools.product(s[pos], s[~pos]))
        return np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs])

    p, y = probs.double().numpy(), labels.numpy()
    for c in range(3):
        assert m["per_class_auroc"][c] == pytest.approx(brute_auroc(p[:, c], y == c))
        assert auroc_binary(p[:, c], y == c) == pytest.approx(brute_auroc(p[:, c], y == c))
    assert m["per_class_auroc"][3] is None
    assert m["auroc"] == pytest.approx(np.mean(m["per_class_auroc"][:3]))
    # heavy ties (scores from 5 levels, like a quantised or saturated classifier) on random sets
    rng = np.random.default_rng(0)
    for n in (2, 3, 17, 60):
        s = rng.integers(0, 5, n).astype(np.float64) / 4
        pos = rng.random(n) < 0.4
        pos[0], pos[-1] = True, False
        assert auroc_binary(s, pos) == pytest.approx(brute_auroc(s, pos))
