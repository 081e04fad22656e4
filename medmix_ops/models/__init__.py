"""Models: generators for the policies (training issue) and small fixed probes."""
from .probe import BlobProbe

__all__ = ["BlobProbe"]
