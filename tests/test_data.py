"""Concept data: finding, checking, subsetting, loading every image mode, templates and prompt sampling."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_concept_images
from PIL import Image, ImageOps

from sweeper.data import (
    IMAGE_SUFFIXES,
    OBJECT_TEMPLATES,
    OBJECT_TEMPLATES_WITH_IMAGE_TOKEN,
    STYLE_TEMPLATES,
    STYLE_TEMPLATES_WITH_IMAGE_TOKEN,
    DataError,
    PromptSampler,
    check_images,
    format_prompt,
    hflip,
    list_images,
    load_image,
    select_images,
    templates_for,
)

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


def test_hflip():
    x = torch.arange(6.0).reshape(1, 2, 3)
    assert hflip(x).tolist() == [[[2, 1, 0], [5, 4, 3]]]
    assert torch.equal(hflip(hflip(x)), x)


def test_demo_images_are_valid_concept_images(tmp_path):
    from sweeper.tiny import build_demo_images

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
    from sweeper.data import _to_float_rgb

    i16 = Image.fromarray(np.full((4, 4), 40000, np.int32), "I")
    assert np.allclose(_to_float_rgb(i16), 40000 / 65535)
    i8 = Image.fromarray(np.full((4, 4), 200, np.int32), "I")
    assert np.allclose(_to_float_rgb(i8), 200 / 255)
    f = Image.fromarray(np.full((4, 4), 0.25, np.float32), "F")
    assert np.allclose(_to_float_rgb(f), 0.25) and _to_float_rgb(f).shape == (4, 4, 3)
