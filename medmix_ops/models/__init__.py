"""Models: generators for the policies (trained by ``medmix train-generator``) and small
fixed probes. ``load_generator(path)`` turns a checkpoint into the callables the policies take:
``.translator()`` (VariMix), ``.sampler()`` (GenMix), ``.inpainter()`` (MedDiffuseMix)."""
from __future__ import annotations

from .probe import BlobProbe, LesionProbe

KINDS = ("i2i", "dcgan", "ddpm")


def build_generator_models(kind: str, num_classes: int, img_size: int, channels: int = 3, width: int = 32) -> dict:
    """The trainable modules of a generator kind (names match the checkpoint's keys)."""
    if kind == "dcgan":
        from .dcgan import DCGANDiscriminator, DCGANGenerator

        return dict(g=DCGANGenerator(num_classes, img_size, channels, width=width),
                    d=DCGANDiscriminator(num_classes, img_size, channels, width=width))
    if kind == "ddpm":
        from .ddpm import UNet

        return dict(unet=UNet(num_classes, channels, width=width))
    if kind == "i2i":
        from .i2i import Discriminator, Generator, MappingNetwork, StyleEncoder

        return dict(g=Generator(img_size, channels, width=width), m=MappingNetwork(num_classes),
                    e=StyleEncoder(img_size, channels, width=width),
                    d=Discriminator(num_classes, img_size, channels, width=width))
    raise ValueError(f"--kind must be one of {KINDS}, got {kind!r}")


class LoadedGenerator:
    """A trained generator (EMA weights) and the interfaces the policies use."""

    def __init__(self, kind, models, config, device="cpu"):
        self.kind, self.models, self.config = kind, models, config
        for m in models.values():
            m.to(device).eval()

    def _need(self, kind, what):
        if self.kind != kind:
            raise ValueError(f"this is a {self.kind!r} generator checkpoint; {what} needs a {kind!r} one")

    def translator(self, mean=None, std=None):
        """VariMix's translator. mean, std: the per-channel normalisation of the batches it will
        see (a normalising loader's), both or neither; without them float images are [0, 1]."""
        self._need("i2i", "VariMix's translator")
        from .i2i import Translator

        return Translator(self.models["g"], self.models["e"], self.config["img_size"], self.config["channels"],
                          mean=mean, std=std)

    def sampler(self, steps: int = 50):
        if self.kind == "dcgan":
            from .dcgan import DCGANSampler

            return DCGANSampler(self.models["g"])
        self._need("ddpm", "GenMix's sampler (a dcgan or ddpm checkpoint)")
        from .ddpm import DDPMSampler, Diffusion

        return DDPMSampler(self.models["unet"], Diffusion(self.config["T"]), self.config["img_size"],
                           self.config["channels"], steps)

    def inpainter(self, steps: int = 50, mean=None, std=None):
        """MedDiffuseMix's inpainter (DDIM, ``steps`` steps); mean, std as for ``translator``."""
        self._need("ddpm", "MedDiffuseMix's inpainting")
        from .ddpm import DDPMInpainter, Diffusion

        return DDPMInpainter(self.models["unet"], Diffusion(self.config["T"]), self.config["img_size"],
                             self.config["channels"], steps, mean=mean, std=std)


def load_generator(path, device: str = "cpu") -> LoadedGenerator:
    """A train-generator checkpoint (loaded with weights_only=True) -> LoadedGenerator."""
    from ..train.common import load_checkpoint

    ckpt = load_checkpoint(path, "generator")
    cfg = ckpt["config"]
    models = build_generator_models(cfg["kind"], cfg["num_classes"], cfg["img_size"], cfg["channels"], cfg["width"])
    for name, state in ckpt["ema"].items():  # the EMA weights are the ones to sample with
        models[name].load_state_dict(state)
    return LoadedGenerator(cfg["kind"], {k: models[k] for k in ckpt["ema"]}, cfg, device)


__all__ = ["BlobProbe", "LesionProbe", "KINDS", "build_generator_models", "load_generator", "LoadedGenerator"]
