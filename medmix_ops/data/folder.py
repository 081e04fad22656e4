"""Loaders for images the user already has: an ImageFolder tree (PNG / JPEG / TIFF / BMP, and
DICOM through pydicom when it is installed) and single-file loading with clear errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._validation import is_int

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_EXTENSIONS = (".dcm", ".dicom")
INTENSITY_MODES = ("bit_depth", "min_max")


class UnreadableImageError(ValueError):
    """A file that cannot be decoded as an image; the message names the file and the reason."""


def _check_intensity(owner: str, intensity) -> None:
    if intensity not in INTENSITY_MODES:
        raise ValueError(f"{owner}: intensity must be one of {INTENSITY_MODES}, got {intensity!r}")


def load_image(path, channels: int = 3, intensity: str = "bit_depth") -> torch.Tensor:
    """One image file -> float32 [channels, H, W] in [0, 1]. Greyscale DICOM pixel data is
    rescaled from its own min / max (no window assumptions), colour DICOM (RGB, or YBR which
    pydicom >= 3 converts to RGB) from its BitsStored; 16-bit PNG / TIFF from their bit depth,
    32-bit and float TIFF as ``high_depth_to_unit`` says. Colour to one channel is ITU-R 601
    luma on every path; one channel to three is repeated.

    ``intensity="min_max"`` instead rescales every image from its own min / max (over all its
    channels): for data whose values fill only part of their container, such as 12-bit X-rays
    saved as 16-bit PNG, which by bit depth load at most 4095 / 65535 bright. A constant image
    gives zeros."""
    if channels not in (1, 3) or not is_int(channels):
        raise ValueError(f"load_image: channels must be 1 or 3, got {channels!r}")
    _check_intensity("load_image", intensity)
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in DICOM_EXTENSIONS:
            try:
                import pydicom
            except ImportError as e:
                raise UnreadableImageError(f"{path}: DICOM needs pydicom (pip install 'pydicom>=3')") from e
            ds = pydicom.dcmread(str(path))
            photometric = str(ds.get("PhotometricInterpretation", "")).upper()
            if photometric.startswith("YBR") and int(pydicom.__version__.split(".")[0]) < 3:
                # pydicom 2 hands YCbCr back unconverted; 3 converts it to RGB
                raise UnreadableImageError(f"{path}: {photometric} colour needs pydicom >= 3 to become RGB "
                                           f"(found pydicom {pydicom.__version__})")
            a = ds.pixel_array.astype(np.float64)
            if int(ds.get("NumberOfFrames", 1) or 1) > 1:  # a multi-frame series: first frame
                a = a[0]
            top = 2.0 ** int(ds.get("BitsStored", 8) or 8) - 1
            if int(ds.get("SamplesPerPixel", 1) or 1) == 3 and a.min() >= 0 and a.max() <= top:
                # colour (dermoscopy, ultrasound, photographs) scales by its bit depth, as the
                # same image saved as a PNG does: a per-image min / max would change each
                # image's brightness and colour balance
                a = a / top
            else:
                a = high_depth_to_unit(a, is_float=True, force_rescale=True)
            # MONOCHROME1 stores bright as low values (many CR / DR X-rays, mammograms)
            if photometric == "MONOCHROME1":
                a = 1.0 - a
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode == "F" or im.mode == "I" or im.mode.startswith("I;"):
                    a = high_depth_to_unit(np.asarray(im, dtype=np.float64), im.mode == "F")
                else:
                    a = np.asarray(im.convert("RGB" if channels == 3 else "L"), dtype=np.float64) / 255.0
    except UnreadableImageError:
        raise
    except Exception as e:  # noqa: BLE001 - every decoder error becomes one clear message
        raise UnreadableImageError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e
    if intensity == "min_max":
        a = high_depth_to_unit(a, is_float=True, force_rescale=True)
    t = torch.from_numpy(np.ascontiguousarray(a)).float()
    t = t[None] if t.dim() == 2 else t.permute(2, 0, 1)[:3]
    if t.shape[0] == 3 and channels == 1:
        # ITU-R 601 luma, what PIL's convert("L") gives PNG / JPEG, so a colour DICOM and the
        # same image as a PNG load alike
        t = (t * t.new_tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0, keepdim=True)
    elif t.shape[0] == 1 and channels == 3:
        t = t.expand(3, -1, -1)
    return t.contiguous()


def high_depth_to_unit(a: np.ndarray, is_float: bool, force_rescale: bool = False) -> np.ndarray:
    """One-channel integer (16 / 32-bit) or float (32-bit TIFF) pixels -> [0, 1].

    Integers from their bit depth: / 255 when every value fits 8 bits, / 65535 when 16. Floats
    already in [0, 1] are kept. Anything else (32-bit counts, negative values such as signed CT
    numbers, floats outside [0, 1]) is rescaled from its own min / max, as DICOM is, rather than
    clipped: PIL's conversion to 8 bits clips, which turned a float TIFF in [0, 1] into a black
    image. ``force_rescale`` always rescales (DICOM). Non-finite pixels become the minimum."""
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, a[finite].min() if finite.any() else 0.0)
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0 and not force_rescale:
        if is_float and hi <= 1:
            return a
        if not is_float and hi <= 65535:
            return a / (65535.0 if hi > 255 else 255.0)
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _hidden(name: str) -> bool:
    """Folders and files a tree picks up without anyone meaning them as data: dot-names
    (.ipynb_checkpoints, macOS's ._ resource forks, .DS_Store) and zip's __MACOSX."""
    return name.startswith(".") or name == "__MACOSX"


class ImageFolder(torch.utils.data.Dataset):
    """``root/<class>/<image>`` -> ``(image [C, size, size] float32 in [0, 1], label)``.

    Classes are the sorted sub-folder names; hidden ones (a dot name, ``__MACOSX``) and hidden
    files are left out. ``size`` resizes (bilinear, antialiased). An
    unreadable file raises ``UnreadableImageError`` naming it. With ``skip_bad=True`` the folder
    is checked once up front, bad files are left out, and ``skipped`` lists them.
    ``intensity``: "bit_depth" (default) or "min_max", as ``load_image`` says.
    """

    def __init__(self, root, size: int | None = None, channels: int = 3, skip_bad: bool = False,
                 intensity: str = "bit_depth"):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"ImageFolder: {self.root} is not a directory")
        if channels not in (1, 3):
            raise ValueError(f"ImageFolder: channels must be 1 or 3, got {channels}")
        if size is not None and (not is_int(size) or size < 1):
            raise ValueError(f"ImageFolder: size must be a positive int or None, got {size!r}")
        _check_intensity("ImageFolder", intensity)
        self.intensity = intensity
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not _hidden(d.name))
        if not self.classes:
            raise ValueError(f"ImageFolder: {self.root} has no class sub-folders (expected root/<class>/<image>)")
        exts = IMAGE_EXTENSIONS + DICOM_EXTENSIONS
        self.samples = [(f, c) for c, name in enumerate(self.classes)
                        for f in sorted((self.root / name).rglob("*"))
                        if f.suffix.lower() in exts and not any(map(_hidden, f.relative_to(self.root).parts))]
        if not self.samples:
            raise ValueError(f"ImageFolder: no images with extensions {exts} under {self.root}")
        self.size, self.channels = (None if size is None else int(size)), channels
        self.skipped: list[str] = []
        if skip_bad:
            good = []
            for f, c in self.samples:
                try:
                    load_image(f, channels, intensity)
                    good.append((f, c))
                except UnreadableImageError as e:
                    self.skipped.append(str(e))
            self.samples = good
            if not good:
                raise ValueError(f"ImageFolder: every image under {self.root} is unreadable")
        self.labels = torch.tensor([c for _, c in self.samples], dtype=torch.long)

    def check_headers(self) -> None:
        """Open every file's header (no pixel decoding; about 0.1 ms a file) and raise
        ``UnreadableImageError`` naming the first one that is not an image, so a long run fails
        at the start rather than hours in. Files truncated inside their pixel data are only
        caught on decoding (``skip_bad=True`` decodes everything up front)."""
        from PIL import Image

        for f, _ in self.samples:
            try:
                if f.suffix.lower() in DICOM_EXTENSIONS:
                    import pydicom

                    pydicom.dcmread(str(f), stop_before_pixels=True)
                else:
                    with Image.open(f):
                        pass
            except Exception as e:  # noqa: BLE001 - one clear message naming the file
                raise UnreadableImageError(f"{f}: cannot read image ({type(e).__name__}: {e}); "
                                           "--skip-bad / skip_bad=True leaves unreadable files out") from e

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        f, c = self.samples[i]
        img = load_image(f, self.channels, self.intensity)
        if self.size is not None and img.shape[-2:] != (self.size, self.size):
            img = F.interpolate(img[None], size=(self.size, self.size), mode="bilinear",
                                align_corners=False, antialias=True)[0].clamp(0, 1)
        return img, c
