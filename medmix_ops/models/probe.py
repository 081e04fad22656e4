"""A fixed, untrained 'classifier' whose saliency means something: for demos, previews and the
label-fidelity tool, where a trained classifier is not at hand."""
from __future__ import annotations

import math

import torch


class BlobProbe(torch.nn.Module):
    """A hand-built 'classifier' that scores bright blobs (Laplacian-of-Gaussian filter, relu,
    global pooling): gradient and Grad-CAM saliency of it point at blobs without any training.

    Takes ``[B, C, H, W]`` images with any number of channels: the filter sees their channel
    mean, so grey (C = 1) and RGB SynthLesion batches both work."""

    def __init__(self, sigma: float = 3.0):
        super().__init__()
        r = math.ceil(3 * sigma)
        t = torch.arange(-r, r + 1, dtype=torch.float32)
        yy, xx = torch.meshgrid(t, t, indexing="ij")
        q = (xx ** 2 + yy ** 2) / (2 * sigma ** 2)
        log = -(1 - q) * torch.exp(-q)  # negative LoG: positive on bright blobs
        self.features = torch.nn.Conv2d(1, 2, 2 * r + 1, padding=r, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.stack([log - log.mean(), -(log - log.mean())])[:, None])
        self.head = torch.nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(2))

    def forward(self, x):
        # The channel mean, not a 3-channel filter: the probe must not care how many channels
        # the batch has (a 1-channel SynthLesion batch used to fail in MedDiffuseMix).
        return self.head(torch.relu(self.features(x.mean(dim=1, keepdim=True))).mean(dim=(2, 3)))


class LesionProbe(BlobProbe):
    """BlobProbe with one output per SynthLesion class (normal, cyst, hemangioma, metastasis):
    dark-blob evidence drives cyst and metastasis, bright-blob evidence hemangioma. Untrained,
    but its gradients point at lesions, which MedDiffuseMix's saliency needs."""

    def __init__(self, sigma: float = 3.0, num_classes: int = 4):
        super().__init__(sigma)
        self.head = torch.nn.Linear(2, num_classes, bias=False)
        with torch.no_grad():
            w = torch.zeros(num_classes, 2)
            w[0] = -0.5  # normal: no blob either way
            if num_classes > 1:
                w[1:, 1] = 1.0  # dark blobs
            if num_classes > 2:
                w[2] = torch.tensor([1.0, 0.0])  # bright blobs
            self.head.weight.copy_(w)
