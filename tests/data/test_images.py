"""scan_images: every awkward file is decoded as-is, converted, or skipped with its reason."""

import hashlib
import json
import warnings

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from kft.data.images import inspect_image, scan_images
from kft.data.report import DataReport


def _decode(path):
    return tf.io.decode_image(tf.io.read_file(str(path)), channels=3,
                              expand_animations=False).numpy()


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_kind_is_used_converted_or_skipped_with_a_reason(tmp_path, broken_files,
                                                                rgb_image):
    files = broken_files(tmp_path / "in")
    before = {kind: _digest(path) for kind, (path, _) in files.items()}
    report = DataReport()
    kinds = list(files)
    out = scan_images([files[k][0] for k in kinds], tmp_path / "cache", report, min_side=8)
    verdicts = dict(zip(kinds, out, strict=True))
    data = report.to_dict()
    skipped = {e["path"]: e for e in data["skipped"]}
    converted = {e["path"]: e for e in data["converted"]}
    for kind, (path, expected) in files.items():
        got = verdicts[kind]
        if expected == "skipped":
            assert got is None, kind
            assert skipped[str(path)]["reason"], kind
        elif expected == "converted":
            assert got is not None and got.startswith(str(tmp_path / "cache")), kind
            assert converted[str(path)]["to"] == got and converted[str(path)]["reason"], kind
        else:
            assert got == str(path), (kind, report.reasons_for(path))
        if got is not None:
            assert _decode(got).shape[2] == 3, kind
    assert data["num_skipped"] == sum(e == "skipped" for _, e in files.values())
    assert data["counts"]["scanned"] == len(files)
    # The user's files are untouched.
    assert {kind: _digest(path) for kind, (path, _) in files.items()} == before
    json.dumps(data)

    reason = skipped[str(files["one_pixel"][0])]
    assert "1x1" in reason["reason"] and "min_side=8" in reason["reason"]
    assert reason["field"] == "size"
    assert "empty" in skipped[str(files["empty"][0])]["reason"]
    assert "truncated" in skipped[str(files["truncated_png"][0])]["reason"]
    assert "identify" in skipped[str(files["text"][0])]["reason"]


def test_converted_pixels_are_right(tmp_path, broken_files, rgb_image):
    files = broken_files(tmp_path / "in")
    ref = rgb_image(0).astype(int)
    get = {k: scan_images([p], tmp_path / "cache")[0] for k, (p, _) in files.items()}
    # EXIF orientation 6 (rotate 90 degrees clockwise to display): the red top goes right.
    upright = _decode(get["exif"]).astype(int)
    assert upright.shape == (20, 16, 3)
    with Image.open(files["exif"][0]) as im:
        np.testing.assert_array_equal(upright, np.asarray(ImageOps.exif_transpose(im)))
    assert np.abs(upright[:, -6:] - [200, 30, 40]).mean() < 12  # red half now on the right
    # Transparent pixels over white; opaque ones kept.
    rgba = _decode(get["rgba"]).astype(int)
    assert (rgba[:, :5] == 255).all()
    np.testing.assert_array_equal(rgba[:, 5:], ref[:, 5:])
    assert (_decode(get["palette_alpha"]) == 255).all(axis=-1).any()
    # CMYK and palette BMP keep their colours; 16-bit PNGs decode exactly as-is.
    with Image.open(files["cmyk"][0]) as im:
        np.testing.assert_array_equal(_decode(get["cmyk"]), np.asarray(im.convert("RGB")))
    assert np.abs(_decode(get["cmyk"])[:8].astype(int) - [200, 30, 40]).mean() < 12
    palette_png = _decode(get["palette"]).astype(int)
    np.testing.assert_array_equal(_decode(get["palette_bmp"]), palette_png)
    np.testing.assert_array_equal(_decode(get["png16"]), ref)
    np.testing.assert_array_equal(_decode(get["gray16"])[..., 1], ref[..., 0])
    np.testing.assert_array_equal(_decode(get["tiff_as_png"]), ref)


def test_min_side_and_cache_reuse(tmp_path, broken_files):
    files = broken_files(tmp_path / "in")
    small = inspect_image(files["png"][0], tmp_path / "cache", min_side=17)
    assert small.path is None and "20x16" in small.reason and "min_side=17" in small.reason
    first = inspect_image(files["cmyk"][0], tmp_path / "cache")
    mtime = (tmp_path / "cache").joinpath(first.path).stat().st_mtime_ns
    again = inspect_image(files["cmyk"][0], tmp_path / "cache")
    assert again.path == first.path and again.converted
    assert (tmp_path / "cache").joinpath(first.path).stat().st_mtime_ns == mtime


def test_thread_pool_keeps_input_order(tmp_path, broken_files):
    files = broken_files(tmp_path / "in")
    paths = [p for p, _ in files.values()]
    one = scan_images(paths, tmp_path / "c1", DataReport(), workers=1)
    two = scan_images(paths, tmp_path / "c2", DataReport(), workers=2)
    assert [p is None for p in one] == [p is None for p in two]
    assert [p for p in one if p and "/c1/" not in p] == [p for p in two if p and "/c2/" not in p]


def test_thread_pool_leaves_the_warning_filters_as_they_were(tmp_path):
    # catch_warnings inside worker threads used to race: the filters stayed at "ignore" and a
    # reader's later "most objects were dropped" warning was lost (seen in a CI run)
    paths = []
    for i in range(24):
        paths.append(tmp_path / f"p{i}.png")
        Image.new("P", (20 + i, 16), 0).save(paths[-1], transparency=b"\x00" * 256)
    with pytest.warns(UserWarning, match="still heard"):
        before = list(warnings.filters)
        for _ in range(5):
            scan_images(paths, cache_dir=tmp_path / "cache", workers=8)
        assert warnings.filters == before
        warnings.warn("still heard", UserWarning, stacklevel=1)


def test_report_merge_and_save(tmp_path):
    a, b = DataReport(), DataReport()
    a.skip("x.jpg", "bad", field="decode")
    a.count("scanned", 2)
    b.convert("y.png", "alpha", to="/c/y.png")
    b.count("scanned", 3)
    a.merge(b)
    data = json.loads(a.save(tmp_path / "r" / "report.json").read_text())
    assert data["num_skipped"] == 1 and data["num_converted"] == 1
    assert data["counts"] == {"scanned": 5}
    assert data["skipped"][0] == {"path": "x.jpg", "reason": "bad", "field": "decode"}
    assert data["converted"][0]["to"] == "/c/y.png"
