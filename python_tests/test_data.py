"""SynthLesion, the loaders for the user's data, and MixCollate in a DataLoader."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from medmix_ops import mix
from medmix_ops.data import ImageFolder, MedMNIST, MixCollate, SynthLesion, UnreadableImageError, load_image


# ---- SynthLesion ------------------------------------------------------------------------------

def test_items_are_deterministic_and_independent_of_batching():
    a, b = SynthLesion(20, size=48, seed=3), SynthLesion(20, size=48, seed=3)
    img, label, mask = a[7]
    img2, label2, mask2 = b[7]
    assert torch.equal(img, img2) and label == label2 and torch.equal(mask, mask2)
    batch_img, batch_mask = a.render([2, 7, 11])
    assert torch.equal(batch_img[1], img) and torch.equal(batch_mask[1], mask)
    assert not torch.equal(SynthLesion(20, size=48, seed=4)[7][0], img)
    assert img.shape == (3, 48, 48) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


def test_lesion_morphology_is_the_class():
    ds = SynthLesion(200, size=96, seed=0)
    stats = {c: [] for c in range(4)}
    for i in range(60):
        img, c, m = ds[i]
        g = img[0]
        if c == 0:
            assert m.sum() == 0
            continue
        area = float(m.mean())
        assert 0.005 < area < 0.11
        inside = g[m[0] > 0].mean()
        ring = torch.nn.functional.max_pool2d(m, 9, 1, 4)[0] - m[0]  # a band around the lesion
        stats[c].append(float(inside - g[ring > 0].mean()))
    assert np.mean(stats[1]) < -0.2   # cyst: darker than its surroundings
    assert np.mean(stats[2]) > 0.2    # hemangioma: brighter
    # metastasis: a dark core inside a bright rim
    img, m = ds.counterfactual(list(range(5)), [3] * 5)
    for k in range(5):
        core = torch.nn.functional.avg_pool2d(m[k], 7, 1, 3)[0] > 0.99
        rim = (m[k][0] > 0) & ~core
        assert img[k, 0][rim].mean() > img[k, 0][core].mean() + 0.2


def test_imbalance_gives_long_tailed_counts():
    ds = SynthLesion(1000, imbalance=0.05)
    counts = ds.class_counts()
    assert counts.sum() == 1000 and (counts[:-1] >= counts[1:]).all()
    assert 15 <= counts[0] / counts[-1] <= 25
    assert (SynthLesion(1000).class_counts() == 250).all()


def test_counterfactual_changes_only_the_lesion():
    ds = SynthLesion(10, size=64, seed=1)
    for i in range(10):
        img, c, m = ds[i]
        for target in range(4):
            cf, cm = ds.counterfactual(i, target)
            # the masks mark where the lesion is > 50%: its soft edge reaches ~3 px beyond them
            near = torch.nn.functional.max_pool2d(m + cm, 9, 1, 4) > 0
            outside = (~near).expand_as(img)
            assert torch.equal(cf[outside], img[outside])
            if target == c:
                assert torch.equal(cf, img)


def test_getitems_and_dataloader():
    ds = SynthLesion(64, size=32)
    dl = torch.utils.data.DataLoader(ds, batch_size=16)
    x, y, m = next(iter(dl))
    assert x.shape == (16, 3, 32, 32) and y.shape == (16,) and m.shape == (16, 1, 32, 32)
    assert torch.equal(x[3], ds[3][0])


@pytest.mark.parametrize("kwargs,exc,message", [
    (dict(n=0), ValueError, "n must be >= 1"),
    (dict(n=4, size=16), ValueError, "size must be in [32, 256]"),
    (dict(n=4, channels=2), ValueError, "channels must be 1 or 3"),
    (dict(n=4, imbalance=0.0), ValueError, "imbalance must be in (0, 1]"),
    (dict(n=4, imbalance="0.1"), TypeError, "imbalance must be a float"),
    (dict(n=4.0), TypeError, "n must be an int"),
])
def test_synthlesion_bad_input(kwargs, exc, message):
    with pytest.raises(exc, match=__import__("re").escape(message)):
        SynthLesion(**kwargs)


def test_synthlesion_bad_index():
    with pytest.raises(IndexError, match="index 9 out of range for 4 items"):
        SynthLesion(4)[9]
    with pytest.raises(ValueError, match=r"classes must be in \[0, 4\)"):
        SynthLesion(4).render([0], [5])


# ---- loaders ------------------------------------------------------------------------------------

def make_folder(root, per_class=3):
    rng = np.random.default_rng(0)
    for c in ("benign", "malignant"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(root / c / f"{i}.png")
    return root


def test_image_folder_png_and_resize(tmp_path):
    ds = ImageFolder(make_folder(tmp_path / "data"), size=16)
    assert ds.classes == ["benign", "malignant"] and len(ds) == 6
    x, y = ds[4]
    assert x.shape == (3, 16, 16) and y == 1 and 0 <= x.min() and x.max() <= 1
    grey = ImageFolder(tmp_path / "data", channels=1)[0][0]
    assert grey.shape == (1, 20, 24)


def test_image_folder_leaves_hidden_folders_and_files_out(tmp_path):
    root = make_folder(tmp_path / "data", per_class=2)
    for hidden in (".ipynb_checkpoints", "__MACOSX", "benign/.cache"):
        (root / hidden).mkdir()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / hidden / "x.png")
    (root / "malignant" / "._0.png").write_bytes(b"\x00\x05\x16\x07 a macOS resource fork")
    ds = ImageFolder(root)
    assert ds.classes == ["benign", "malignant"] and len(ds) == 4
    assert all(not p.name.startswith(".") and ".cache" not in str(p) for p, _ in ds.samples)
    ds.check_headers()  # the resource fork would fail it


def test_image_folder_reads_dicom_and_16_bit(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    root = make_folder(tmp_path / "data", per_class=1)
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "malignant" / "ct.dcm")
    Image.fromarray((np.arange(400).reshape(20, 20) * 100).astype(np.uint16)).save(root / "benign" / "deep.png")
    ds = ImageFolder(root)
    dcm = next(i for i, (f, _) in enumerate(ds.samples) if f.suffix == ".dcm")
    x, y = ds[dcm]
    ref = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array.astype(np.float64)
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    assert x.shape == (3, 128, 128) and y == 1
    assert np.allclose(x[0].numpy(), ref, atol=1e-6)
    deep = next(i for i, (f, _) in enumerate(ds.samples) if f.name == "deep.png")
    assert float(ds[deep][0].max()) == pytest.approx(39900 / 65535, rel=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path):
    # MONOCHROME1 (many CR / DR X-rays and mammograms) stores bright anatomy as low values
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    ds.save_as(tmp_path / "m2.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "m1.dcm")
    m2, m1 = load_image(tmp_path / "m2.dcm", channels=1), load_image(tmp_path / "m1.dcm", channels=1)
    assert m2.shape == m1.shape == (1, 128, 128) and m2.max() == 1 and m2.min() == 0
    torch.testing.assert_close(m1, 1 - m2, rtol=0, atol=1e-6)


def _colour_dicom(path, rgb: np.ndarray, photometric: str) -> None:
    """An uncompressed 8-bit secondary-capture DICOM of an [H, W, 3] uint8 RGB image, stored
    as RGB or as YBR_FULL (how ultrasound and many dermoscopy DICOMs hold colour)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.pixels import convert_color_space
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, photometric, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    data = rgb if photometric == "RGB" else convert_color_space(rgb, "RGB", photometric)
    ds.PixelData = np.ascontiguousarray(data).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_colour_dicom_loads_like_the_same_png(tmp_path, monkeypatch):
    # a colour DICOM was min / max stretched per image (brightness and colour balance changed
    # from image to image) and averaged, not luma-weighted, to one channel
    pydicom = pytest.importorskip("pydicom", minversion="3")
    rng = np.random.default_rng(0)
    rgb = np.clip(rng.normal([150, 90, 60], 20, (23, 31, 3)), 20, 230).astype(np.uint8)  # a dim skin tone
    Image.fromarray(rgb).save(tmp_path / "same.png")
    _colour_dicom(tmp_path / "rgb.dcm", rgb, "RGB")
    _colour_dicom(tmp_path / "ybr.dcm", rgb, "YBR_FULL")
    for channels in (3, 1):
        png = load_image(tmp_path / "same.png", channels=channels)
        assert png.shape == (channels, 23, 31)
        rounding = 0.0 if channels == 3 else 0.5 / 255  # PIL's "L" rounds the luma to 8 bits
        torch.testing.assert_close(load_image(tmp_path / "rgb.dcm", channels=channels), png, rtol=0,
                                   atol=rounding + 1e-6)
        # the YCbCr round trip in 8 bits costs a couple of levels
        torch.testing.assert_close(load_image(tmp_path / "ybr.dcm", channels=channels), png, rtol=0,
                                   atol=rounding + 3 / 255)
    monkeypatch.setattr(pydicom, "__version__", "2.4.4")
    with pytest.raises(UnreadableImageError, match=r"ybr\.dcm: YBR_FULL colour needs pydicom >= 3"):
        load_image(tmp_path / "ybr.dcm")
    with pytest.raises(ValueError, match="channels must be 1 or 3, got 2"):
        load_image(tmp_path / "same.png", channels=2)


def test_intensity_min_max(tmp_path):
    # 12-bit data in a 16-bit PNG loads at most 4095 / 65535 bright by bit depth; min_max
    # stretches each image over [0, 1] (over all its channels, so colours keep their balance)
    Image.fromarray((np.arange(20 * 30).reshape(20, 30) * 4095 // 599 + 7).astype(np.uint16)).save(tmp_path / "x.png")
    assert float(load_image(tmp_path / "x.png", 1).max()) == pytest.approx(4102 / 65535, rel=1e-6)
    got = load_image(tmp_path / "x.png", 1, intensity="min_max")
    want = (np.arange(600).reshape(20, 30) * 4095 // 599) / 4095
    assert got.shape == (1, 20, 30) and np.allclose(got[0].numpy(), want, atol=1e-6)
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 50, 150
    rgb[0, 0] = 200
    Image.fromarray(rgb).save(tmp_path / "c.png")
    got = load_image(tmp_path / "c.png", 3, intensity="min_max")
    assert got[:, 1, 1].tolist() == pytest.approx([50 / 150, 0.0, 100 / 150]) and float(got.max()) == 1.0
    Image.fromarray(np.full((3, 3), 9, np.uint8)).save(tmp_path / "flat.png")
    assert load_image(tmp_path / "flat.png", 1, intensity="min_max").abs().max() == 0  # zeros, not NaN
    root = tmp_path / "tree"
    (root / "a").mkdir(parents=True)
    shutil.copy(tmp_path / "x.png", root / "a" / "x.png")
    assert float(ImageFolder(root, channels=1, intensity="min_max")[0][0].max()) == 1.0
    with pytest.raises(ValueError, match=r"ImageFolder: intensity must be one of \('bit_depth', 'min_max'\), got 'auto'"):
        ImageFolder(root, intensity="auto")
    with pytest.raises(ValueError, match="load_image: intensity must be one of"):
        load_image(tmp_path / "x.png", intensity=None)


def test_float_and_32_bit_tiff(tmp_path):
    # PIL's conversion to 8 bits clips: a float TIFF in [0, 1] came back as a black image
    # (values 0 and 1/255) and a 32-bit one with counts above 65535 went past 1.
    unit = np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)
    Image.fromarray(unit, mode="F").save(tmp_path / "unit.tif")
    got = load_image(tmp_path / "unit.tif", channels=1)
    assert got.shape == (1, 48, 64) and np.allclose(got[0].numpy(), unit, atol=1e-7)

    hu = np.linspace(-1024, 3071, 48 * 64, dtype=np.float32).reshape(48, 64)
    hu[0, 0] = np.nan  # a non-finite pixel becomes the minimum, not NaN
    Image.fromarray(hu, mode="F").save(tmp_path / "hu.tif")
    got = load_image(tmp_path / "hu.tif", channels=3)
    lo, hi = np.nanmin(hu), np.nanmax(hu)
    want = (np.nan_to_num(hu, nan=lo) - lo) / (hi - lo)
    assert got.shape == (3, 48, 64) and torch.isfinite(got).all()
    assert np.allclose(got[1].numpy(), want, atol=1e-6)

    counts = np.linspace(0, 100000, 48 * 64).astype(np.int32).reshape(48, 64)
    Image.fromarray(counts).save(tmp_path / "counts.tif")
    got = load_image(tmp_path / "counts.tif", channels=1)
    assert np.allclose(got[0].numpy(), counts / 100000, atol=1e-6)

    Image.fromarray(np.full((8, 8), 7.5, dtype=np.float32), mode="F").save(tmp_path / "flat.tif")
    assert load_image(tmp_path / "flat.tif", channels=1).eq(0).all()


def test_unreadable_file_is_named(tmp_path):
    root = make_folder(tmp_path / "data")
    (root / "benign" / "broken.png").write_bytes(b"not a png at all")
    ds = ImageFolder(root)
    bad = next(i for i, (f, _) in enumerate(ds.samples) if f.name == "broken.png")
    with pytest.raises(UnreadableImageError, match="broken.png: cannot read image"):
        ds[bad]
    skipping = ImageFolder(root, skip_bad=True)
    assert len(skipping) == 6 and len(skipping.skipped) == 1 and "broken.png" in skipping.skipped[0]


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolder(tmp_path / "flat")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images with extensions"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(UnreadableImageError, match="x.dcm"):
        (tmp_path / "x.dcm").write_bytes(b"junk")
        load_image(tmp_path / "x.dcm")


def test_medmnist_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "pathmnist.npz"
    np.savez(path, train_images=(rng.random((10, 28, 28, 3)) * 255).astype(np.uint8),
             train_labels=rng.integers(0, 9, (10, 1)), val_images=np.zeros((2, 28, 28), np.uint8),
             val_labels=np.zeros((2, 1), np.int64))
    ds = MedMNIST(path)
    x, y = ds[3]
    assert x.shape == (3, 28, 28) and isinstance(y, int) and len(ds) == 10
    assert MedMNIST(path, "val", channels=1)[0][0].shape == (1, 28, 28)
    multi = tmp_path / "chest.npz"
    np.savez(multi, train_images=np.zeros((4, 28, 28), np.uint8), train_labels=np.eye(4, 14, dtype=np.int64))
    assert MedMNIST(multi)[1][1].shape == (14,)
    with pytest.raises(ValueError, match=r"lacks \['test_images', 'test_labels'\]"):
        MedMNIST(path, "test")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad.npz is not a readable .npz"):
        MedMNIST(bad)
    # MedMNIST 3D volumes [N, D, H, W]: their depth was taken for colour channels
    vol = tmp_path / "organmnist3d.npz"
    np.savez(vol, train_images=np.zeros((3, 28, 28, 28), np.uint8), train_labels=np.zeros((3, 1), np.int64))
    with pytest.raises(ValueError, match=r"train_images is \(3, 28, 28, 28\), not 2-D images"):
        MedMNIST(vol)
    odd = tmp_path / "odd.npz"
    np.savez(odd, train_images=np.zeros((3, 8, 8), np.float32), train_labels=np.zeros((3, 1), np.int64),
             val_images=np.zeros((0, 8, 8), np.uint8), val_labels=np.zeros((0, 1), np.int64))
    with pytest.raises(TypeError, match="train_images must be uint8.*got float32"):
        MedMNIST(odd)
    with pytest.raises(ValueError, match="the val split is empty"):
        MedMNIST(odd, "val")


# ---- MixCollate ------------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 2])
def test_mix_collate_in_a_dataloader(workers):
    ds = SynthLesion(32, size=32)
    dl = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=workers,
                                     collate_fn=MixCollate(mix.CutMix(4), seed=0))
    x, y, seg = next(iter(dl))
    assert x.shape == (8, 3, 32, 32) and y.shape == (8, 4) and seg.shape == (8, 1, 32, 32)
    assert torch.allclose(y.sum(1), torch.ones(8))
    again = next(iter(torch.utils.data.DataLoader(ds, batch_size=8, num_workers=workers,
                                                  collate_fn=MixCollate(mix.CutMix(4), seed=0))))
    if workers == 0:
        assert torch.equal(x, again[0])  # seeded: reproducible


@pytest.mark.parametrize("workers", [0, 2])
def test_mix_collate_reproducible_and_fresh_every_epoch(workers):
    """With a seeded loader a run repeats exactly; within it, each epoch mixes afresh (the same
    items, unshuffled, must not get the same boxes again: with workers the batch count used to
    restart every epoch and repeat the draws)."""
    ds = SynthLesion(16, size=32)

    def epochs(n):
        dl = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=workers,
                                         generator=torch.Generator().manual_seed(5),
                                         collate_fn=MixCollate(mix.CutMix(4, mode="elem"), seed=0))
        return [torch.cat([b[0] for b in dl]) for _ in range(n)]

    first, second = epochs(2)
    assert not torch.equal(first, second)
    again = epochs(2)
    assert torch.equal(first, again[0]) and torch.equal(second, again[1])
