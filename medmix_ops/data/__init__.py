"""Data: the embedded SynthLesion dataset, loaders for data the user already has, and the
collate function that runs a mixing policy on CPU workers."""
from .collate import MixCollate
from .folder import ImageFolder, UnreadableImageError, load_image
from .medmnist import MedMNIST
from .synthlesion import CLASSES, SynthLesion

__all__ = ["CLASSES", "SynthLesion", "ImageFolder", "MedMNIST", "MixCollate", "load_image",
           "UnreadableImageError"]
