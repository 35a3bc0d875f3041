"""Concept data: find and check the images, pick the seeded subset, load them as tensors, sample prompts.

    paths = select_images(list_images(cfg.data.images), cfg.data.n_images, cfg.data.subset_seed)
    check_images(paths)                                  # before any model is loaded
    pixels = [load_image(p, resolution) for p in paths]  # [3, R, R] in [-1, 1]; the trainer caches latents
    sampler = PromptSampler(len(paths), cfg.data.property, image_tokens, per_image_p, flip_p)
    for ex in sampler.sample(batch_size, generator): format_prompt(ex.template, placeholder_text, ex.image_token)

The template sets (sweeper/data/templates.py) are the official textual_inversion code's, kept verbatim.
"""

from __future__ import annotations

import logging
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sweeper.data.templates import (
    OBJECT_TEMPLATES,
    OBJECT_TEMPLATES_WITH_IMAGE_TOKEN,
    STYLE_TEMPLATES,
    STYLE_TEMPLATES_WITH_IMAGE_TOKEN,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
PROPERTIES = ("object", "style")
# The largest image accepted (width x height). Checked from the file's header before anything is decoded;
# decoding one at the cap holds at most ~4 bytes per pixel (268 MB). Larger photos: downscale them first.
MAX_PIXELS = 8192 * 8192
_TOO_LARGE = (
    f"over the {MAX_PIXELS // 10**6}-megapixel cap (sweeper.data.images.MAX_PIXELS); "
    "downscale it (e.g. to 4096 px on the long side) or remove it"
)
REDUCE_TO_SIDES = 4  # a large image is reduced to no less than this many times the resolution first
EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {  # EXIF orientation -> the transpose that displays the image upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class DataError(ValueError):
    """Bad concept data; the message names the folder, file or config key and what to do."""


# ------------------------------------------------------------------------------------------ finding


def list_images(folder: str | Path) -> list[Path]:
    """The folder's .jpg/.jpeg/.png/.webp files, sorted by name (hidden files such as ._x.jpg skipped)."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise DataError(
            f"data.images={folder}: no such folder; point data.images at a folder of concept images"
        )
    if not folder.is_dir():
        raise DataError(f"data.images={folder}: not a folder; give the folder that holds the concept images")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file()]
    # is_file() is False for a broken symlink or a symlink loop: an image-named one is skipped with a warning
    unreadable = [
        p.name for p in entries if p.is_symlink() and not p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if unreadable:
        log.warning(
            "data.images=%s: ignoring %d image-named symlink(s) that lead to no file (broken or a loop): %s",
            folder,
            len(unreadable),
            ", ".join(unreadable[:10]),
        )
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if not images:
        others += unreadable
        found = f"found only {', '.join(others[:10])}" if others else "it is empty"
        raise DataError(
            f"data.images={folder}: no images ({'/'.join(IMAGE_SUFFIXES)}): {found}; add the concept's images"
        )
    if others:
        log.warning(
            "data.images=%s: ignoring %d non-image file(s): %s", folder, len(others), ", ".join(others[:10])
        )
    return images


def check_images(paths: list[Path]) -> None:
    """Decode every image; raise one DataError naming every file that is corrupt, not an image, or too large.

    A file over MAX_PIXELS is refused from its header, before any pixel is decoded; a JPEG is decoded at
    reduced scale (the whole stream is still read, so a truncated file fails here)."""
    bad = []
    for path in paths:
        try:
            with _open_image(path) as im:
                im.draft(None, (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
                _to_float_rgb(im.crop((0, 0, min(im.width, 8), min(im.height, 8))))  # same mode path, cheaply
        except DataError as e:
            bad.append(str(e))
        except Exception as e:  # PIL raises UnidentifiedImageError, OSError (truncated), SyntaxError, ...
            bad.append(f"{path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'})")
    if bad:
        raise DataError(
            f"data.images: {len(bad)} file(s) are corrupt or not images: "
            + "; ".join(bad)
            + ". Remove or replace them."
        )


def select_images(paths: list[Path], n_images: int | None, seed: int) -> list[Path]:
    """All paths (None) or a seeded subset of `n_images`, in the input order.

    The subset is the first n of one seeded permutation, so with the same seed a smaller subset is
    contained in a larger one: the dataset-size axis (Fig. 12) adds images rather than reshuffling.
    """
    if n_images is None:
        return list(paths)
    if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images < 1:
        raise DataError(f"data.n_images={n_images!r}: must be a positive integer, or null for all images")
    if n_images > len(paths):
        where = f" in {paths[0].parent}" if paths else ""
        raise DataError(
            f"data.n_images={n_images}: only {len(paths)} image(s){where}; lower data.n_images or add images"
        )
    order = list(range(len(paths)))
    random.Random(seed).shuffle(order)
    return [paths[i] for i in sorted(order[:n_images])]


# ------------------------------------------------------------------------------------------ loading


def _to_float_rgb(im) -> np.ndarray:
    """Any PIL mode -> float32 [H, W, 3] in [0, 1]; transparency composited on white, 16-bit kept exact."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16"):
            scale = 65535.0
        elif mode == "F" and arr.max(initial=0) <= 1.0:
            scale = 1.0
        else:  # "I" holds 16-bit PNGs on some Pillow versions; 8-bit data otherwise
            scale = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / scale, 0.0, 1.0).astype(np.float32)
        return np.repeat(arr[..., None], 3, axis=-1)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    rgb = im.convert("RGB")
    return np.asarray(rgb, dtype=np.float32) / 255.0


def _open_image(path: Path):
    """Open an image lazily (header only) and refuse it if it is over MAX_PIXELS, before decoding anything."""
    try:
        with warnings.catch_warnings():
            # our own cap below is stricter than Pillow's decompression-bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError:  # over twice Pillow's own limit: Image.open refuses before we can
        raise DataError(f"{path}: {_TOO_LARGE}") from None
    if im.width * im.height > MAX_PIXELS:
        size = f"{im.width}x{im.height} ({im.width * im.height / 1e6:.0f} megapixels)"
        im.close()
        raise DataError(f"{path}: {size}; {_TOO_LARGE}")
    return im


def _decode_reduced(im, min_side: int):
    """Decode `im` at the smallest integer reduction whose shorter side is still >= min_side.

    JPEG: `draft` makes libjpeg decode at 1/2, 1/4 or 1/8 scale, so the full-size image never exists.
    Other formats are decoded once at their own bit depth, then box-reduced before any float conversion.
    """
    factor = max(1, min(im.size) // min_side)
    if factor > 1:
        im.draft(None, (max(1, im.width // factor), max(1, im.height // factor)))  # no-op unless JPEG
    im.load()
    factor = max(1, min(im.size) // min_side)
    if factor == 1:
        return im
    if im.mode.startswith("I;16"):  # reduce() lacks the 16-bit modes; a box resize is the same filter
        size = (-(-im.width // factor), -(-im.height // factor))
        return im.resize(size, Image.Resampling.BOX)
    if im.mode in ("1", "P", "PA"):  # averaging bits or palette indices is meaningless: to pixels first
        has_alpha = im.mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else ("L" if im.mode == "1" else "RGB"))
    return im.reduce(factor)


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """One training image as float32 [3, R, R] in [-1, 1].

    EXIF orientation applied; any mode to RGB; the centred square of side min(H, W) resized to R
    (bicubic, antialiased): the same pixels as resizing the shorter side to R and centre-cropping.
    An image over MAX_PIXELS is refused from its header. A large one is first decoded reduced to no less
    than 4R on its shorter side (JPEG by draft, others by reduce()), so float copies are only ever made at
    that size: loading holds at most the 8-bit decode (a JPEG's reduced one), not gigabytes of floats.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    try:
        with _open_image(path) as opened:
            orientation = opened.getexif().get(EXIF_ORIENTATION, 1)
            im = _decode_reduced(opened, REDUCE_TO_SIDES * resolution)
            if orientation in _TRANSPOSE:
                im = im.transpose(_TRANSPOSE[orientation])
            arr = _to_float_rgb(im)
    except DataError as e:
        raise DataError(f"data.images: {e}") from None
    except Exception as e:
        raise DataError(
            f"data.images: cannot read {path} ({type(e).__name__}: {e}); remove or replace it"
        ) from e
    x = torch.from_numpy(arr).permute(2, 0, 1)  # [3, H, W]
    h, w = x.shape[1:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[:, top : top + side, left : left + side]
    if side != resolution:
        x = F.interpolate(
            x[None], size=(resolution, resolution), mode="bicubic", antialias=True, align_corners=False
        )[0]
    return (x.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()


# ---------------------------------------------------------------------------------------- templates


def templates_for(property: str, per_image: bool) -> list[str]:
    """The template list for `data.property`; the two-slot "... {} with {}" list when per_image."""
    if property not in PROPERTIES:
        raise DataError(f"data.property={property!r}: data.property must be object or style")
    if property == "object":
        return OBJECT_TEMPLATES_WITH_IMAGE_TOKEN if per_image else OBJECT_TEMPLATES
    return STYLE_TEMPLATES_WITH_IMAGE_TOKEN if per_image else STYLE_TEMPLATES


def format_prompt(template: str, placeholder_text: str, image_token: str | None) -> str:
    """Fill a template: placeholder_text (all the concept's tokens, space-joined) first, image token second."""
    slots = template.count("{}")
    if slots == 2:
        if not image_token:
            raise ValueError(f"template {template!r} needs an image token")
        return template.format(placeholder_text, image_token)
    if slots != 1:
        raise ValueError(f"template {template!r} must have one or two {{}} slots")
    return template.format(placeholder_text)


# ------------------------------------------------------------------------------------------ sampling


@dataclass
class Example:
    image_index: int
    flip: bool
    template: str
    image_token: str | None


class PromptSampler:
    """Draws (image, flip, template) triples like the official dataset, from a torch.Generator only."""

    def __init__(
        self,
        n_images: int,
        property: str,
        image_tokens: list[str] | None = None,
        per_image_p: float = 0.25,
        flip_p: float = 0.5,
    ):
        if n_images < 1:
            raise DataError(f"n_images={n_images}: need at least one training image")
        if image_tokens is not None and len(image_tokens) != n_images:
            raise ValueError(f"image_tokens: need one token per image ({n_images}), got {len(image_tokens)}")
        for name, p in (("per_image_p", per_image_p), ("data.flip_p", flip_p)):
            if not 0.0 <= p <= 1.0:
                raise DataError(f"{name}={p}: must be a probability in [0, 1]")
        self.n_images = n_images
        self.templates = templates_for(property, per_image=False)
        self.image_tokens = list(image_tokens) if image_tokens is not None else None
        self.templates_with_token = templates_for(property, per_image=True) if image_tokens else []
        self.per_image_p = per_image_p if image_tokens else 0.0
        self.flip_p = flip_p

    def sample(self, batch_size: int, generator: torch.Generator) -> list[Example]:
        # The same number of draws every call, whatever the branches: the generator state alone decides.
        dev = generator.device
        index = torch.randint(self.n_images, (batch_size,), generator=generator, device=dev).tolist()
        flip = (torch.rand(batch_size, generator=generator, device=dev) < self.flip_p).tolist()
        per_image = (torch.rand(batch_size, generator=generator, device=dev) < self.per_image_p).tolist()
        plain = torch.randint(len(self.templates), (batch_size,), generator=generator, device=dev).tolist()
        dual_n = max(len(self.templates_with_token), 1)
        dual = torch.randint(dual_n, (batch_size,), generator=generator, device=dev).tolist()
        out = []
        tokens = self.image_tokens or []  # per_image is never drawn without image tokens (per_image_p 0)
        for i in range(batch_size):
            if per_image[i]:
                img = index[i]
                out.append(Example(img, bool(flip[i]), self.templates_with_token[dual[i]], tokens[img]))
            else:
                out.append(Example(index[i], bool(flip[i]), self.templates[plain[i]], None))
        return out
