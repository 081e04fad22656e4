"""Building policies by name, with sensible stand-ins when no trained generator or classifier
is given: the CLI (preview, fidelity, demo) and the training scripts use this."""
from __future__ import annotations

import torch

from . import mix

POLICIES = ("mixup", "cutmix", "saliencymix", "spmix", "varimix", "meddiffusemix", "genmix")
# Policies that mix multi-label targets ([B, K] of 0 / 1, ChestMNIST) as they are. The others
# need one class per image: a translator toward the partner's class (varimix), class-conditional
# generation (genmix), the classifier's saliency for the label (meddiffusemix).
MULTI_LABEL_POLICIES = ("mixup", "cutmix", "saliencymix", "spmix")


def check_multi_label_policy(name: str, data, *, none_ok: bool = True) -> None:
    """Raises ValueError for a policy that needs one class per image on multi-label data
    ``data`` (named in the error; none_ok: whether "none" is among the caller's choices).
    Class-balanced partners (SPMix's default) balance multi-hot rows by their rarest label."""
    if name not in MULTI_LABEL_POLICIES:
        choices = ", ".join(MULTI_LABEL_POLICIES)
        raise ValueError(f"--policy {name} needs one class per image; {data} is multi-label "
                         f"(use {'none or one of ' if none_ok else 'one of '}{choices})")


def make_policy(name: str, num_classes: int, *, dataset=None, model=None, translator=None,
                generator=None, **kwargs):
    """A policy by name. varimix needs ``translator`` (default: the SynthLesion counterfactual
    oracle when ``dataset`` is a SynthLesion); genmix needs ``generator`` (default: SynthLesion's
    class-conditional renderer); meddiffusemix uses ``model`` (default: the untrained
    LesionProbe, whose gradients point at blobs)."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    if name == "mixup":
        return mix.Mixup(num_classes, **kwargs)
    if name == "cutmix":
        return mix.CutMix(num_classes, **kwargs)
    if name == "saliencymix":
        return mix.SaliencyMix(num_classes, **kwargs)
    if name == "spmix":
        kwargs.setdefault("patch", 8)
        return mix.SPMix(num_classes, **kwargs)
    if name == "varimix":
        if translator is None:
            translator = _oracle(dataset, "varimix", "a translator (an I2I generator checkpoint)")
            translator = CounterfactualTranslator(translator)
        return mix.VariMix(num_classes, translator, **kwargs)
    if name == "meddiffusemix":
        if model is None:
            from .models.probe import LesionProbe

            model = LesionProbe(num_classes=num_classes)
        return mix.MedDiffuseMix(num_classes, model, generator, **kwargs)
    if generator is None:
        generator = SynthLesionGenerator(_oracle(dataset, "genmix", "a generator"))
    return mix.GenMix(num_classes, generator, **kwargs)


def _oracle(dataset, policy, what):
    from .data import SynthLesion

    if not isinstance(dataset, SynthLesion):
        raise ValueError(f"{policy} needs {what}; without one it can only use SynthLesion's "
                         "oracle, so pass a SynthLesion dataset")
    return dataset


class CounterfactualTranslator:
    """SynthLesion's oracle image-to-image translator: each image's scene re-rendered with its
    partner's class lesion. Call ``set_batch(indices, labels)`` before the policy; the partner
    of each row is recovered from x_ref (rows of x_ref are rows of x)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.indices = None
        self.labels = None

    def set_batch(self, indices, labels) -> None:
        self.indices = [int(i) for i in indices]
        self.labels = torch.as_tensor(labels).reshape(-1).cpu()

    def __call__(self, x_src: torch.Tensor, x_ref: torch.Tensor) -> torch.Tensor:
        if self.indices is None or len(self.indices) != x_src.shape[0]:
            raise ValueError("CounterfactualTranslator: call set_batch(indices, labels) for this batch first")
        a = x_src.flatten(1).float()
        b = x_ref.flatten(1).float()
        partner = torch.cdist(b, a).argmin(dim=1).cpu()  # exact copies: distance 0
        imgs, _ = self.dataset.render(self.indices, self.labels[partner])
        return imgs.to(device=x_src.device, dtype=x_src.dtype)


class SynthLesionGenerator:
    """A class-conditional 'generator' that renders new SynthLesion scenes of the requested
    classes (with their lesion masks): GenMix's oracle synthetic data."""

    def __init__(self, dataset, offset: int = 10_000_000):
        self.dataset, self.offset = dataset, offset

    def __call__(self, labels: torch.Tensor, generator: torch.Generator | None = None):
        from .data import SynthLesion

        seed = int(torch.randint(0, 2 ** 31, (1,), generator=generator))
        n = labels.shape[0]
        fresh = SynthLesion(n, size=self.dataset.size, seed=self.dataset.seed + self.offset + seed,
                            channels=self.dataset.channels)
        imgs, masks = fresh.render(list(range(n)), labels.cpu())
        return imgs.to(labels.device), masks.to(labels.device)
