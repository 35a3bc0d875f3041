"""Concept data: finding, checking, subsetting, loading every image mode, templates and prompt sampling."""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_concept_images
from PIL import Image, ImageOps

from sweeper.data.images import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    OBJECT_TEMPLATES,
    OBJECT_TEMPLATES_WITH_IMAGE_TOKEN,
    STYLE_TEMPLATES,
    STYLE_TEMPLATES_WITH_IMAGE_TOKEN,
    DataError,
    PromptSampler,
    check_images,
    format_prompt,
    list_images,
    load_image,
    select_images,
    templates_for,
)

ROOT = Path(__file__).resolve().parent.parent
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def px(x: torch.Tensor, y: int, col: int) -> list[float]:
    """Pixel (row y, column col) back in 0..255."""
    return ((x[:, y, col] + 1) * 127.5).tolist()


def close(a: list[float], b: tuple, tol: float = 3.0) -> bool:
    return all(abs(u - v) <= tol for u, v in zip(a, b))


# ------------------------------------------------------------------------------------------ finding


def test_list_images_sorted_case_insensitive_hidden_skipped(tmp_path):
    for name in ["b.png", "a.JPG", "c.webp", "d.jpeg", "._a.jpg", ".DS_Store", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()  # a folder named like an image is not an image
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.webp", "d.jpeg"]
    assert IMAGE_SUFFIXES == (".jpg", ".jpeg", ".png", ".webp")


def test_list_images_errors_name_the_key_and_folder(tmp_path):
    with pytest.raises(DataError, match=r"data.images=.*nope: no such folder"):
        list_images(tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError, match=r"data.images=.*file.png: not a folder"):
        list_images(tmp_path / "file.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"data.images=.*empty: no images.*empty"):
        list_images(tmp_path / "empty")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=r"no images.*readme.txt"):
        list_images(tmp_path / "texts")


def test_check_images_names_every_bad_file(tmp_path):
    folder = write_concept_images(tmp_path / "c", n=2)
    (folder / "zz_text.png").write_text("this is not a png")
    (folder / "zz_html.jpg").write_bytes(b"<html>403 Forbidden</html>")
    good = Image.new("RGB", (64, 64), RED)
    good.save(folder / "zz_trunc.jpg", quality=95)
    data = (folder / "zz_trunc.jpg").read_bytes()
    (folder / "zz_trunc.jpg").write_bytes(data[: len(data) // 2])  # a half-downloaded photo
    paths = list_images(folder)
    with pytest.raises(DataError) as err:
        check_images(paths)
    msg = str(err.value)
    assert "3 file(s)" in msg
    for name in ["zz_text.png", "zz_html.jpg", "zz_trunc.jpg"]:
        assert name in msg
    assert "img_00.png" not in msg
    check_images([p for p in paths if not p.name.startswith("zz")])  # the good ones pass


# ------------------------------------------------------------------------------------------ subsets


def test_select_images_seeded_stable_nested(tmp_path):
    paths = [tmp_path / f"{i:02d}.png" for i in range(10)]
    assert select_images(paths, None, 0) == paths
    a = select_images(paths, 4, seed=3)
    assert a == select_images(paths, 4, seed=3)
    assert len(a) == 4 and len(set(a)) == 4
    assert a == sorted(a, key=paths.index)  # input order kept
    subsets = {tuple(select_images(paths, 4, seed=s)) for s in range(10)}
    assert len(subsets) > 1  # the seed matters
    for n in range(1, 10):  # a larger subset (same seed) adds images, never swaps them
        assert set(select_images(paths, n, 7)) <= set(select_images(paths, n + 1, 7))
    assert select_images(paths, 10, 1) == paths


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "3"])
def test_select_images_rejects_bad_n(tmp_path, bad):
    with pytest.raises(DataError, match=r"data.n_images="):
        select_images([tmp_path / "a.png"], bad, 0)


def test_select_images_too_few(tmp_path):
    with pytest.raises(DataError, match=r"data.n_images=5: only 3 image\(s\) in .*lower data.n_images"):
        select_images([tmp_path / f"{i}.png" for i in range(3)], 5, 0)


# ------------------------------------------------------------------------------------------ loading


def test_load_image_shape_range_and_centre_crop(tmp_path):
    # 60 wide x 20 tall: red | white | blue thirds; the centre square is the white third
    arr = np.zeros((20, 60, 3), np.uint8)
    arr[:, :20] = RED
    arr[:, 20:40] = WHITE
    arr[:, 40:] = BLUE
    Image.fromarray(arr).save(tmp_path / "wide.png")
    x = load_image(tmp_path / "wide.png", 16)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert close(px(x, 8, 8), WHITE) and close(px(x, 8, 1), WHITE, 12) and close(px(x, 8, 14), WHITE, 12)
    # tall image and up-scaling of a small one
    Image.fromarray(arr.transpose(1, 0, 2).copy()).save(tmp_path / "tall.png")
    y = load_image(tmp_path / "tall.png", 48)
    assert y.shape == (3, 48, 48) and close(px(y, 24, 24), WHITE)


def test_load_image_applies_exif_orientation(tmp_path):
    # stored 40 wide x 20 tall, left half red / right half blue; EXIF 6 = display rotated 90 deg clockwise,
    # so the displayed image is 20 wide x 40 tall with red on top and blue below
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = RED
    arr[:, 20:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "rot.jpg", exif=exif, quality=100)
    with Image.open(tmp_path / "rot.jpg") as im:
        assert im.size == (40, 20)
        assert ImageOps.exif_transpose(im).size == (20, 40)
    x = load_image(tmp_path / "rot.jpg", 20)
    assert close(px(x, 2, 10), RED, 20) and close(px(x, 17, 10), BLUE, 20)  # top red, bottom blue
    assert close(px(x, 2, 2), RED, 20) and close(px(x, 2, 17), RED, 20)  # not the unrotated left/right split


def test_load_image_16bit_png_scaled_not_clipped(tmp_path):
    arr = np.full((24, 24), 1000, np.uint16)
    arr[:, 12:] = 50000
    Image.fromarray(arr).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # really a 16-bit image
    x = load_image(tmp_path / "g16.png", 24)
    assert x.shape == (3, 24, 24)
    assert torch.allclose(x[:, 5, 2], torch.full((3,), 1000 / 65535 * 2 - 1), atol=1e-4)
    assert torch.allclose(x[:, 5, 20], torch.full((3,), 50000 / 65535 * 2 - 1), atol=1e-4)


def test_load_image_transparency_composited_on_white(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere; alpha: left half transparent, right half opaque
    rgba[:, 8:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    x = load_image(tmp_path / "rgba.png", 16)
    assert close(px(x, 8, 1), WHITE) and close(px(x, 8, 14), RED)

    la = Image.new("LA", (16, 16), (0, 0))  # black, fully transparent -> white
    la.save(tmp_path / "la.png")
    assert close(px(load_image(tmp_path / "la.png", 16), 8, 8), WHITE)

    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(0, (0, 0, 8, 16))
    pal.save(tmp_path / "pt.png", transparency=0)  # index 0 (black) transparent
    x = load_image(tmp_path / "pt.png", 16)
    assert close(px(x, 8, 1), WHITE) and close(px(x, 8, 14), RED)


def test_load_image_other_modes_to_rgb(tmp_path):
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    pal.save(tmp_path / "p.png")
    assert close(px(load_image(tmp_path / "p.png", 16), 8, 8), BLUE)

    Image.new("L", (16, 16), 100).save(tmp_path / "l.png")
    assert close(px(load_image(tmp_path / "l.png", 16), 4, 4), (100, 100, 100))

    Image.new("1", (16, 16), 1).save(tmp_path / "one.png")
    assert close(px(load_image(tmp_path / "one.png", 16), 4, 4), WHITE)

    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    c = px(load_image(tmp_path / "cmyk.jpg", 16), 8, 8)
    assert c[0] > 200 and c[1] < 60 and c[2] < 60  # red


def test_load_image_webp_matches_png(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (20, 20, 3), np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray(arr).save(tmp_path / "a.webp", lossless=True)
    assert [p.suffix for p in list_images(tmp_path)] == [".png", ".webp"]
    assert torch.equal(load_image(tmp_path / "a.png", 20), load_image(tmp_path / "a.webp", 20))
    # at native resolution the pixels are exactly the file's
    assert torch.allclose(
        load_image(tmp_path / "a.png", 20), torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1
    )


def test_load_image_bad_file(tmp_path):
    (tmp_path / "x.png").write_text("nope")
    with pytest.raises(DataError, match=r"x.png"):
        load_image(tmp_path / "x.png", 16)


# ------------------------------------------------------------------------------------- large images


def write_blank_png(path: Path, width: int, height: int) -> Path:
    """An all-white 1-bit PNG written row by row, never held in memory: 12000 x 12000 is ~20 KB on disk."""
    row = b"\x00" + b"\xff" * ((width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return path


# Runs in a fresh process: the peak resident memory of one load_image call above the process's memory just
# before it (Linux: VmHWM reset through /proc/self/clear_refs; ru_maxrss - current RSS if that is refused,
# which can only over-state the growth).
RSS_PROBE = """
import os, resource, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from sweeper.data.images import DataError, load_image

load_image(Path(sys.argv[1]), 16)  # warm-up: decoders and torch kernels allocate their buffers once
def kib(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))
try:
    open("/proc/self/clear_refs", "w").write("5")
    peak_kib = lambda: kib("VmHWM")
except OSError:
    peak_kib = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
baseline = kib("VmRSS")
try:
    load_image(Path(sys.argv[2]), int(sys.argv[3]))
    outcome = "loaded"
except DataError as err:
    outcome = "refused: " + str(err)
peak = peak_kib()
print(outcome)
print((peak - baseline) * 1024)
"""


def load_memory(path: Path, resolution: int, warm_up: Path) -> tuple[str, int]:
    """(outcome, bytes of peak memory growth) of load_image(path, resolution) in a fresh process."""
    out = (
        subprocess.run(
            [sys.executable, "-c", RSS_PROBE, str(warm_up), str(path), str(resolution)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        .stdout.strip()
        .splitlines()
    )
    return out[0], int(out[1])


def test_image_over_the_pixel_cap_is_refused_from_its_header(tmp_path):
    huge = write_blank_png(tmp_path / "huge.png", 12000, 12000)
    assert huge.stat().st_size < 64_000  # a decompression bomb: 144 megapixels in a few KB
    with pytest.warns(Image.DecompressionBombWarning), Image.open(huge) as im:  # Pillow only warns
        assert im.size == (12000, 12000) and im.width * im.height > MAX_PIXELS
    with pytest.raises(DataError, match=r"huge.png: 12000x12000 \(144 megapixels\).*MAX_PIXELS.*downscale"):
        check_images([huge])
    with pytest.raises(DataError, match=r"huge.png: 12000x12000.*cap"):
        load_image(huge, 32)
    # refused from the header: the load never decodes it (4.3 GiB before this was checked)
    small = write_concept_images(tmp_path / "c", n=1) / "img_00.png"
    outcome, growth = load_memory(huge, 32, small)
    assert outcome.startswith("refused: data.images: ") and "huge.png" in outcome
    assert growth < 16 * 2**20, growth


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    # 6000 x 4000 = 24 megapixels, under the cap: red | white | blue, the centre square all white
    arr = np.zeros((4000, 6000, 3), np.uint8)
    arr[:, :1000], arr[:, 1000:5000], arr[:, 5000:] = RED, WHITE, BLUE
    Image.fromarray(arr).save(tmp_path / "big.jpg", quality=90)
    full_decode = arr.nbytes  # 72 MB of 8-bit pixels
    del arr
    x = load_image(tmp_path / "big.jpg", 64)
    assert x.shape == (3, 64, 64) and close(px(x, 32, 32), WHITE) and close(px(x, 32, 2), WHITE, 12)
    small = write_concept_images(tmp_path / "c", n=1) / "img_00.png"
    outcome, growth = load_memory(tmp_path / "big.jpg", 64, small)
    assert outcome == "loaded"
    # draft decodes at 1/8 scale: the full-size image never exists (before: ~10x full_decode in floats)
    assert growth < full_decode / 4, (growth, full_decode)


def test_large_png_is_reduced_before_any_float_copy(tmp_path):
    arr = np.zeros((4000, 6000, 3), np.uint8)
    arr[:, :1000], arr[:, 1000:5000], arr[:, 5000:] = RED, WHITE, BLUE
    Image.fromarray(arr).save(tmp_path / "big.png", compress_level=1)
    full_decode = arr.nbytes
    del arr
    x = load_image(tmp_path / "big.png", 64)
    assert close(px(x, 32, 32), WHITE) and close(px(x, 32, 2), WHITE, 12)
    small = write_concept_images(tmp_path / "c", n=1) / "img_00.png"
    outcome, growth = load_memory(tmp_path / "big.png", 64, small)
    assert outcome == "loaded"
    # a PNG must be decoded once at full size; nothing bigger than that one 8-bit copy is made (before: the
    # full image converted to float32 twice: 824 MiB here, ~12x this)
    assert growth < 2 * full_decode, (growth, full_decode)


@pytest.mark.parametrize("mode", ["RGB-exif", "I;16", "P-transparent", "1", "LA"])
def test_reduced_path_gives_the_same_picture_as_the_direct_one(tmp_path, mode):
    # the same two-colour picture at 24 px (loaded directly) and 768 px (reduced first: 768 // (4 * 12) = 16)
    def picture(side: int) -> Image.Image:
        half = side // 2
        if mode == "I;16":
            arr = np.full((side, side), 1000, np.uint16)
            arr[:, half:] = 50000
            return Image.fromarray(arr)
        if mode == "P-transparent":
            im = Image.new("P", (side, side), 1)
            im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
            im.paste(0, (0, 0, half, side))
            return im
        if mode == "1":
            im = Image.new("1", (side, side), 0)
            im.paste(1, (half, 0, side, side))
            return im
        if mode == "LA":
            im = Image.new("LA", (side, side), (0, 0))
            im.paste((0, 255), (half, 0, side, side))
            return im
        arr = np.zeros((side, side, 3), np.uint8)
        arr[:, :half], arr[:, half:] = RED, BLUE
        return Image.fromarray(arr)

    for side in (24, 768):
        kwargs = {"transparency": 0} if mode == "P-transparent" else {}
        if mode == "RGB-exif":  # stored red | blue, displayed rotated: red on top
            exif = Image.Exif()
            exif[0x0112] = 6
            picture(side).save(tmp_path / f"{side}.jpg", exif=exif, quality=100)
        else:
            picture(side).save(tmp_path / f"{side}.png", **kwargs)
    suffix = ".jpg" if mode == "RGB-exif" else ".png"
    direct, reduced = (load_image(tmp_path / f"{side}{suffix}", 12) for side in (24, 768))
    # interior pixels of each half agree (edges differ by the filters' support: box+bicubic vs bicubic)
    for y, col in ((2, 2), (2, 9), (9, 2), (9, 9), (3, 3), (8, 8)):
        assert close(px(direct, y, col), px(reduced, y, col), 8), (y, col)
    assert not close(px(reduced, 2, 2), px(reduced, 9, 9), 8)  # opposite halves (either orientation) differ


def test_image_named_symlink_loop_is_warned_about(tmp_path, caplog):
    folder = write_concept_images(tmp_path / "c", n=2)
    (folder / "loop.jpg").symlink_to("loop.jpg")  # a loop: is_file() is False
    (folder / "gone.png").symlink_to(tmp_path / "deleted.png")  # broken
    with caplog.at_level(logging.WARNING, logger="sweeper.data.images"):
        paths = list_images(folder)
    assert [p.name for p in paths] == ["img_00.png", "img_01.png"]
    assert "loop.jpg" in caplog.text and "gone.png" in caplog.text and "symlink" in caplog.text
    only = tmp_path / "only"
    only.mkdir()
    (only / "loop.jpg").symlink_to("loop.jpg")
    with pytest.raises(DataError, match=r"no images.*loop.jpg"):
        list_images(only)


def test_demo_images_are_valid_concept_images(tmp_path):
    from tiny_components import build_demo_images

    paths = list_images(build_demo_images(tmp_path / "demo", n=5, size=48))
    assert len(paths) == 5
    check_images(paths)
    a, b = load_image(paths[0], 32), load_image(paths[1], 32)
    assert not torch.equal(a, b)


# ---------------------------------------------------------------------------------------- templates


def test_template_sets_are_the_official_ones():
    assert (len(OBJECT_TEMPLATES), len(OBJECT_TEMPLATES_WITH_IMAGE_TOKEN)) == (81, 27)
    assert (len(STYLE_TEMPLATES), len(STYLE_TEMPLATES_WITH_IMAGE_TOKEN)) == (19, 17)
    assert OBJECT_TEMPLATES[0] == "a photo of a {}" and STYLE_TEMPLATES[0] == "a painting in the style of {}"
    assert OBJECT_TEMPLATES_WITH_IMAGE_TOKEN[0] == "a photo of a {} with {}"
    assert all(t.count("{}") == 1 for t in OBJECT_TEMPLATES + STYLE_TEMPLATES)
    assert all(
        t.count("{}") == 2 for t in OBJECT_TEMPLATES_WITH_IMAGE_TOKEN + STYLE_TEMPLATES_WITH_IMAGE_TOKEN
    )
    assert templates_for("object", False) is OBJECT_TEMPLATES
    assert templates_for("object", True) is OBJECT_TEMPLATES_WITH_IMAGE_TOKEN
    assert templates_for("style", False) is STYLE_TEMPLATES
    assert templates_for("style", True) is STYLE_TEMPLATES_WITH_IMAGE_TOKEN
    with pytest.raises(DataError, match="data.property must be object or style"):
        templates_for("person", False)


def test_every_prompt_carries_all_k_tokens():
    text = "<cat> <cat>_1 <cat>_2"
    for property in ("object", "style"):
        for t in templates_for(property, False):
            assert text in format_prompt(t, text, None)
        for t in templates_for(property, True):
            p = format_prompt(t, text, "<img3>")
            assert text in p and p.index(text) < p.index("<img3>")
    with pytest.raises(ValueError, match="image token"):
        format_prompt("a photo of a {} with {}", text, None)


# ----------------------------------------------------------------------------------------- sampling


def draw(sampler: PromptSampler, n: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [ex for _ in range(n // 100) for ex in sampler.sample(100, g)]


def test_sampler_statistics():
    tokens = ["<i0>", "<i1>", "<i2>", "<i3>"]
    ex = draw(PromptSampler(4, "object", tokens, per_image_p=0.25, flip_p=0.5), 20000, seed=0)
    counts = Counter(e.image_index for e in ex)
    assert set(counts) == {0, 1, 2, 3} and all(abs(c / 20000 - 0.25) < 0.015 for c in counts.values())
    assert abs(np.mean([e.flip for e in ex]) - 0.5) < 0.015
    per = [e for e in ex if e.image_token is not None]
    assert abs(len(per) / 20000 - 0.25) < 0.015
    assert all(e.image_token == tokens[e.image_index] for e in per)  # each image carries its own token
    assert {e.template for e in per} == set(OBJECT_TEMPLATES_WITH_IMAGE_TOKEN)
    assert {e.template for e in ex if e.image_token is None} == set(OBJECT_TEMPLATES)

    ex = draw(PromptSampler(3, "style", tokens[:3], per_image_p=0.6, flip_p=0.2), 20000, seed=1)
    assert abs(np.mean([e.flip for e in ex]) - 0.2) < 0.015
    assert abs(np.mean([e.image_token is not None for e in ex]) - 0.6) < 0.015
    assert {e.template for e in ex} == set(STYLE_TEMPLATES) | set(STYLE_TEMPLATES_WITH_IMAGE_TOKEN)

    ex = draw(PromptSampler(2, "object", None, flip_p=0.0), 2000, seed=2)
    assert all(e.image_token is None and not e.flip for e in ex)  # no image tokens: never per-image


def test_sampler_determined_by_generator_state():
    s = PromptSampler(5, "object", [f"<i{i}>" for i in range(5)])
    assert draw(s, 300, 0) == draw(s, 300, 0)
    assert draw(s, 300, 0) != draw(s, 300, 1)
    g = torch.Generator().manual_seed(42)
    s.sample(7, g)
    state = g.get_state()  # what a checkpoint stores
    after = s.sample(16, g)
    g2 = torch.Generator()
    g2.set_state(state)
    assert s.sample(16, g2) == after


def test_sampler_bad_arguments():
    with pytest.raises(ValueError, match="one token per image"):
        PromptSampler(3, "object", ["<a>"])
    with pytest.raises(DataError, match="data.flip_p"):
        PromptSampler(3, "object", flip_p=1.5)
    with pytest.raises(DataError, match="data.property"):
        PromptSampler(3, "portrait")
    with pytest.raises(DataError):
        PromptSampler(0, "object")


def test_concept_images_fixture_roundtrip(concept_images: Path):
    paths = select_images(list_images(concept_images), 3, seed=0)
    check_images(paths)
    batch = torch.stack([load_image(p, 32) for p in paths])
    assert batch.shape == (3, 3, 32, 32)


def test_int_and_float_modes_scaled():
    # Older Pillow opens 16-bit PNGs as mode "I"; float images come as "F" in [0, 1]
    from sweeper.data.images import _to_float_rgb

    i16 = Image.fromarray(np.full((4, 4), 40000, np.int32), "I")
    assert np.allclose(_to_float_rgb(i16), 40000 / 65535)
    i8 = Image.fromarray(np.full((4, 4), 200, np.int32), "I")
    assert np.allclose(_to_float_rgb(i8), 200 / 255)
    f = Image.fromarray(np.full((4, 4), 0.25, np.float32), "F")
    assert np.allclose(_to_float_rgb(f), 0.25) and _to_float_rgb(f).shape == (4, 4, 3)
