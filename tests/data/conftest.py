"""Fixtures for the data tests: writers of every kind of awkward image file."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

SIZE = (20, 16)  # PIL (width, height)


def rgb_array(seed=0, height=16, width=20):
    """A uint8 [H,W,3] image: random pixels, a red top half (so orientation is visible)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    arr[: height // 2] = [200, 30, 40]
    return arr


def _rgba(seed):
    arr = np.dstack([rgb_array(seed), np.full((16, 20), 255, np.uint8)])
    arr[:, :5, 3] = 0  # a transparent stripe whose hidden colour is arbitrary
    arr[:, :5, :3] = 7
    return arr


def write_all(folder, seed=0):
    """Writes one file of each kind into ``folder``; returns {kind: (path, expected)} where
    expected is "ok" (decoded as-is), "converted" or "skipped"."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(rgb_array(seed))
    out = {}

    def put(kind, name, expected, save):
        path = folder / name
        save(path)
        out[kind] = (path, expected)

    put("jpeg", "plain.jpg", "ok", lambda p: rgb.save(p, quality=95))
    put("png", "plain.PNG", "ok", lambda p: rgb.save(p, format="PNG"))
    put("grayscale", "gray.png", "ok", lambda p: rgb.convert("L").save(p))
    put("grayscale_jpeg", "gray.jpeg", "ok", lambda p: rgb.convert("L").save(p))
    put("rgba_opaque", "opaque.png", "ok", lambda p: rgb.convert("RGBA").save(p))
    put("palette", "palette.png", "ok",
        lambda p: rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(p))
    put("png16", "deep.png", "ok", lambda p: open(p, "wb").write(
        tf.io.encode_png(tf.constant(rgb_array(seed).astype(np.uint16) * 257)).numpy()))
    put("gray16", "deep_gray.png", "ok",
        lambda p: Image.fromarray(rgb_array(seed)[..., 0].astype(np.uint16) * 257).save(p))
    put("gif", "anim.gif", "ok", lambda p: rgb.convert("P").save(
        p, save_all=True, append_images=[Image.fromarray(255 - rgb_array(seed)).convert("P")]))
    put("bmp", "plain.bmp", "ok", lambda p: rgb.save(p))
    put("rgba", "alpha.png", "converted", lambda p: Image.fromarray(_rgba(seed)).save(p))
    put("palette_alpha", "palette_alpha.png", "converted",
        lambda p: rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(
            p, transparency=0))
    put("cmyk", "cmyk.jpg", "converted", lambda p: rgb.convert("CMYK").save(p, quality=95))
    put("exif", "rotated.jpg", "converted", lambda p: rgb.save(p, exif=_exif(6), quality=95))
    put("palette_bmp", "palette.bmp", "converted",
        lambda p: rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(p))
    put("tiff_as_png", "really_tiff.png", "converted", lambda p: rgb.save(p, format="TIFF"))
    put("empty", "empty.jpg", "skipped", lambda p: p.write_bytes(b""))
    put("text", "notes.png", "skipped", lambda p: p.write_text("not an image\n"))
    put("truncated_jpeg", "cut.jpg", "skipped", lambda p: _truncate(rgb, p, "JPEG"))
    put("truncated_png", "cut.png", "skipped", lambda p: _truncate(rgb, p, "PNG"))
    put("one_pixel", "dot.png", "skipped",
        lambda p: Image.fromarray(rgb_array(seed)[:1, :1]).save(p))
    return out


def _exif(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _truncate(image, path, fmt):
    tmp = path.with_suffix(".full")
    image.save(tmp, format=fmt)
    data = tmp.read_bytes()
    tmp.unlink()
    path.write_bytes(data[: len(data) // 2])


def write_strays(folder):
    """Non-image files that sit in class folders; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "README.txt", folder / ".DS_Store"]
    paths[0].write_text("labels by hand\n")
    paths[1].write_bytes(b"\x00\x00\x00\x01Bud1")
    return paths


@pytest.fixture
def broken_files():
    """``broken_files(folder, seed=0)`` -> {kind: (path, "ok" | "converted" | "skipped")}."""
    return write_all


@pytest.fixture
def stray_files():
    """``stray_files(folder)`` -> paths of non-image files written into ``folder``."""
    return write_strays


@pytest.fixture
def rgb_image():
    """``rgb_image(seed)`` -> uint8 [16,20,3] with a red top half."""
    return rgb_array
