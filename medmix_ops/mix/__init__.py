"""Mixing policies as drop-in batch transforms: ``x_mix, y_soft = policy(x, y)``.

Baselines: Mixup, CutMix. Seed papers: SaliencyMix, SPMix (and SPMixFeatureHook), VariMix,
MedDiffuseMix, GenMix. Every policy is built from medmix_ops.ops; see _base.MixPolicy for the
shared contract."""
from ._base import MixPolicy, batch_class_counts, one_hot_targets
from .cutmix import CutMix
from .genmix import GenMix, SyntheticFolder
from .meddiffusemix import MedDiffuseMix
from .mixup import Mixup
from .saliencymix import SaliencyMix
from .spmix import SPMix, SPMixFeatureHook
from .varimix import VariMix

__all__ = ["MixPolicy", "batch_class_counts", "one_hot_targets", "Mixup", "CutMix", "SaliencyMix", "SPMix",
           "SPMixFeatureHook", "VariMix", "MedDiffuseMix", "GenMix", "SyntheticFolder"]
