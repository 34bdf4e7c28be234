"""Checking image files before training: every file is decoded once with PIL, up front.

``scan_images`` returns, for each input file, a path that ``tf.io.decode_image(channels=3,
expand_animations=False)`` decodes correctly, or ``None`` when the file cannot be used (the
reason goes into the :class:`~kft.data.report.DataReport`). So a bad file is found before the
first epoch, never in the middle of one.

What TensorFlow 2.21 decodes correctly as-is (checked against PIL, pixel for pixel):

* JPEG: RGB and grayscale. CMYK/YCCK JPEGs decode too, but TF assumes Adobe-inverted CMYK, so
  kft converts them with PIL, which reads the Adobe marker.
* PNG: every bit depth and colour type, 16-bit included (TF scales to 8 bits), palette PNGs,
  grayscale and grayscale+alpha. TF drops the alpha channel.
* GIF: the first frame (``expand_animations=False``).
* BMP: only uncompressed 24/32-bit RGB and 8-bit grayscale. An 8-bit palette BMP comes out as
  raw palette indices, so every other BMP is converted.

Converted to an RGB PNG in ``cache_dir`` (the user's file is never modified):

* EXIF orientation other than 1 (TF ignores EXIF): rotated upright.
* Any real transparency (an alpha channel with a pixel below 255, or a palette/colour-key
  ``transparency`` entry): composited over :data:`ALPHA_BACKGROUND`, because the colour TF
  would show under transparent pixels is arbitrary. Fully opaque alpha is decoded as-is.
* CMYK/YCCK JPEG, odd BMPs (see above), and any other format PIL reads under an image
  extension (TIFF or WebP named ``.png``, ...).

Skipped with a reason: empty files, files PIL cannot identify (text, ``.DS_Store`` renamed),
truncated or corrupt data (PIL's full ``load()`` fails), and images with a side shorter than
``min_side``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels are shown over white
TF_FORMATS = ("JPEG", "PNG", "GIF", "BMP")
_EXIF_ORIENTATION = 0x0112
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclass(frozen=True)
class ScanResult:
    """The verdict on one file.

    ``path``: what to decode (the source itself, or a converted PNG), ``None`` when skipped.
    ``reason``: why it was converted or skipped (``None`` when used as-is).
    ``field``: which check failed for a skipped file (``"decode"`` or ``"size"``).
    """

    source: str
    path: str | None
    reason: str | None = None
    converted: bool = False
    field: str | None = None


def has_image_extension(path) -> bool:
    """True when ``path`` ends in one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def default_cache_dir() -> Path:
    """Where converted copies go when no ``cache_dir`` is given."""
    return Path(tempfile.gettempdir()) / "kft_converted"


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a corrupt EXIF block must not hide a usable image
        return 1


def _alpha(im: Image.Image) -> Image.Image | None:
    """The alpha band (mode L) when some pixel is not fully opaque, else None."""
    if im.mode not in _ALPHA_MODES and "transparency" not in im.info:
        return None
    if im.mode.startswith("I") or im.mode == "F":
        return None  # colour-key transparency on 16-bit/float data: treated as opaque
    alpha = im.convert("RGBA").getchannel("A")
    return alpha if alpha.getextrema()[0] < 255 else None


def conversion_reason(im: Image.Image, orientation: int = 1) -> str | None:
    """Why ``im`` (a loaded PIL image) must be converted before TF decodes it, or None.

    See the module docstring for the rules and why each one exists.
    """
    fmt, mode = im.format or "unknown", im.mode
    if fmt not in TF_FORMATS:
        return f"{fmt} data, which tf.io.decode_image does not read: converted to PNG"
    if orientation != 1:
        return f"EXIF orientation {orientation}: rotated upright"
    if _alpha(im) is not None:
        return (f"{mode} image with transparency: composited over RGB{ALPHA_BACKGROUND}")
    if fmt == "JPEG" and mode not in ("L", "RGB"):
        return f"{mode} JPEG: converted to RGB"
    if fmt == "BMP" and (mode not in ("L", "RGB") or im.info.get("compression", 0) != 0):
        return (f"BMP mode {mode}, compression {im.info.get('compression', 0)}: TF reads only "
                "uncompressed RGB/grayscale BMPs, converted to PNG")
    return None


def _high_depth_to_8bit(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale -> 8-bit grayscale (PIL's own convert clips)."""
    arr = np.asarray(im).astype(np.float64)
    if im.mode == "F":
        arr = arr * 255.0 if arr.max(initial=0.0) <= 1.0 else arr
    elif arr.max(initial=0.0) > 255:
        arr = arr / 257.0  # 16-bit range 0..65535 -> 0..255
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def to_rgb(im: Image.Image, orientation: int = 1) -> Image.Image:
    """A loaded PIL image -> upright 8-bit RGB, transparency composited over
    :data:`ALPHA_BACKGROUND`."""
    if orientation != 1:
        im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I") or im.mode == "F":
        im = _high_depth_to_8bit(im)
    alpha = _alpha(im)
    if alpha is None:
        return im.convert("RGB")
    out = Image.new("RGB", im.size, ALPHA_BACKGROUND)
    out.paste(im.convert("RGBA").convert("RGB"), mask=alpha)
    return out


def converted_path(source, cache_dir) -> Path:
    """Where the converted copy of ``source`` lives: keyed by its absolute path, size and
    modification time, so an edited file gets a new copy and an unchanged one is reused."""
    st = os.stat(source)
    key = f"{os.path.abspath(source)}|{st.st_size}|{st.st_mtime_ns}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(source).stem)[:40]
    return Path(cache_dir) / f"{stem}_{digest}.png"


def _write_png(im: Image.Image, dest: Path) -> None:
    """Writes atomically (temporary name, then rename), so a killed run leaves no half file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{id(im)}.tmp")
    im.save(tmp, format="PNG")
    os.replace(tmp, dest)


def inspect_image(path, cache_dir, min_side: int = 8) -> ScanResult:
    """Decodes ``path`` fully with PIL and decides: use as-is, convert, or skip.

    Never raises for a bad file; the verdict says why. A conversion writes an RGB PNG into
    ``cache_dir`` (reused when already there). PIL's warnings on odd files (EXIF, palette
    transparency) are silenced.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's EXIF/palette warnings on odd files
        return _inspect(path, cache_dir, min_side)


def _inspect(path, cache_dir, min_side: int) -> ScanResult:
    """:func:`inspect_image` without touching the warning filters: safe in worker threads.

    ``warnings.catch_warnings`` swaps process-wide state, so two threads inside it at once can
    leave the filters at "ignore" when both exit: every later warning of the process (the
    readers' "most objects were dropped" included) would be lost silently. The thread pool of
    :func:`scan_images` is therefore wrapped once, in the calling thread.
    """
    source = str(path)
    try:
        if os.path.getsize(source) == 0:
            return ScanResult(source, None, "empty file (0 bytes)", field="decode")
        with Image.open(source) as im:
            width, height = im.size
            if min(width, height) < min_side:
                return ScanResult(
                    source, None, f"image is {width}x{height} pixels, smaller than "
                    f"min_side={min_side} (data.min_side)", field="size")
            im.load()
            orientation = _orientation(im)
            reason = conversion_reason(im, orientation)
            if reason is None:
                return ScanResult(source, source)
            dest = converted_path(source, cache_dir)
            if not dest.is_file():
                _write_png(to_rgb(im, orientation), dest)
            return ScanResult(source, str(dest), reason, converted=True)
    except UnidentifiedImageError:
        return ScanResult(source, None, "not an image PIL can identify (wrong extension, or "
                          "not image data)", field="decode")
    except Image.DecompressionBombError as e:
        return ScanResult(source, None, f"too many pixels ({e})", field="size")
    except (OSError, SyntaxError, ValueError) as e:
        return ScanResult(source, None, f"truncated or corrupt image data ({e})", field="decode")
    except Exception as e:  # any other decoder failure: skip the file, keep the run going
        return ScanResult(source, None, f"cannot decode ({type(e).__name__}: {e})",
                          field="decode")


def scan_images(paths, cache_dir=None, report=None, min_side: int = 8,
                workers: int = 2) -> list[str | None]:
    """Checks every file with a small thread pool; see :func:`inspect_image`.

    Args:
        paths: image files (any order; the output keeps it).
        cache_dir: folder for converted PNGs (default :func:`default_cache_dir`).
        report: a :class:`~kft.data.report.DataReport` receiving every skip and conversion,
            recorded in input order; counters ``scanned``, ``usable``, ``converted``,
            ``skipped``.
        min_side: images whose width or height is below this are skipped.
        workers: threads decoding in parallel (PIL releases the GIL while decoding).

    Returns:
        One entry per input: the path TF should decode, or ``None`` when skipped.
    """
    if min_side < 1:
        raise ValueError(f"min_side={min_side} must be at least 1 (data.min_side)")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    paths = [str(p) for p in paths]
    with warnings.catch_warnings():  # once, here: see _inspect
        warnings.simplefilter("ignore")  # PIL's EXIF/palette warnings on odd files
        if len(paths) < 2 or workers <= 1:
            results = [_inspect(p, cache_dir, min_side) for p in paths]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(lambda p: _inspect(p, cache_dir, min_side), paths))
    if report is not None:
        _record(results, report)
    return [r.path for r in results]


def _record(results: list[ScanResult], report) -> None:
    for r in results:
        if r.path is None:
            report.skip(r.source, r.reason, field=r.field)
        elif r.converted:
            report.convert(r.source, r.reason, to=r.path)
    report.count("scanned", len(results))
    report.count("usable", sum(r.path is not None for r in results))
    report.count("converted", sum(r.converted for r in results))
    report.count("skipped", sum(r.path is None for r in results))
