"""Concept data: find and check the images, pick the seeded subset, load them as tensors, sample prompts.

    paths = select_images(list_images(cfg.data.images), cfg.data.n_images, cfg.data.subset_seed)
    check_images(paths)                                  # before any model is loaded
    pixels = [load_image(p, resolution) for p in paths]  # [3, R, R] in [-1, 1]; the trainer caches latents
    sampler = PromptSampler(len(paths), cfg.data.property, image_tokens, per_image_p, flip_p)
    for ex in sampler.sample(batch_size, generator): format_prompt(ex.template, placeholder_text, ex.image_token)

The template sets are the official textual_inversion code's (rinongal/textual_inversion,
ldm/data/personalized.py and personalized_style.py), kept verbatim: their repeats weight the sampling.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
PROPERTIES = ("object", "style")


class DataError(ValueError):
    """Bad concept data; the message names the folder, file or config key and what to do."""


# ------------------------------------------------------------------------------------------ finding


def list_images(folder: str | Path) -> list[Path]:
    """The folder's .jpg/.jpeg/.png/.webp files, sorted by name (hidden files such as ._x.jpg skipped)."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise DataError(f"data.images={folder}: no such folder; point data.images at a folder of concept images")
    if not folder.is_dir():
        raise DataError(f"data.images={folder}: not a folder; give the folder that holds the concept images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if not images:
        found = f"found only {', '.join(others[:10])}" if others else "it is empty"
        raise DataError(
            f"data.images={folder}: no images ({'/'.join(IMAGE_SUFFIXES)}): {found}; add the concept's images"
        )
    if others:
        log.warning("data.images=%s: ignoring %d non-image file(s): %s", folder, len(others), ", ".join(others[:10]))
    return images


def check_images(paths: list[Path]) -> None:
    """Decode every image fully; raise one DataError naming every file that fails."""
    from PIL import Image, ImageOps

    bad = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                _to_float_rgb(im.crop((0, 0, min(im.width, 8), min(im.height, 8))))  # same mode path, cheaply
        except Exception as e:  # PIL raises UnidentifiedImageError, OSError (truncated), SyntaxError, ...
            bad.append(f"{path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'})")
    if bad:
        raise DataError(
            f"data.images: {len(bad)} file(s) are corrupt or not images: " + "; ".join(bad)
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
    from PIL import Image

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


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """One training image as float32 [3, R, R] in [-1, 1].

    EXIF orientation applied; any mode to RGB; the centred square of side min(H, W) resized to R
    (bicubic, antialiased): the same pixels as resizing the shorter side to R and centre-cropping.
    """
    from PIL import Image, ImageOps

    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            arr = _to_float_rgb(im)
    except Exception as e:
        raise DataError(f"data.images: cannot read {path} ({type(e).__name__}: {e}); remove or replace it") from e
    x = torch.from_numpy(arr).permute(2, 0, 1)  # [3, H, W]
    h, w = x.shape[1:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[:, top : top + side, left : left + side]
    if side != resolution:
        x = F.interpolate(x[None], size=(resolution, resolution), mode="bicubic", antialias=True, align_corners=False)[0]
    return (x.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()


def hflip(pixels: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of [..., H, W] pixels or latents."""
    return torch.flip(pixels, dims=[-1])


# ---------------------------------------------------------------------------------------- templates

# imagenet_templates_small (ldm/data/personalized.py), verbatim: 27 photo templates, then the same
# with "an illustration" / "a depiction" in place of some photos (the repeats weight the sampling)
OBJECT_TEMPLATES = [
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
    "an illustration of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "an illustration of a clean {}",
    "an illustration of a dirty {}",
    "a dark photo of the {}",
    "an illustration of my {}",
    "an illustration of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "an illustration of the {}",
    "a good photo of the {}",
    "an illustration of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "an illustration of the clean {}",
    "a rendition of a {}",
    "an illustration of a nice {}",
    "a good photo of a {}",
    "an illustration of the nice {}",
    "an illustration of the small {}",
    "an illustration of the weird {}",
    "an illustration of the large {}",
    "an illustration of a cool {}",
    "an illustration of a small {}",
    "a depiction of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a depiction of a clean {}",
    "a depiction of a dirty {}",
    "a dark photo of the {}",
    "a depiction of my {}",
    "a depiction of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a depiction of the {}",
    "a good photo of the {}",
    "a depiction of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a depiction of the clean {}",
    "a rendition of a {}",
    "a depiction of a nice {}",
    "a good photo of a {}",
    "a depiction of the nice {}",
    "a depiction of the small {}",
    "a depiction of the weird {}",
    "a depiction of the large {}",
    "a depiction of a cool {}",
    "a depiction of a small {}",
]

# imagenet_dual_templates_small (personalized.py): the first 27 object templates + " with {}"
OBJECT_TEMPLATES_WITH_IMAGE_TOKEN = [t + " with {}" for t in OBJECT_TEMPLATES[:27]]

# imagenet_templates_small (ldm/data/personalized_style.py), verbatim
STYLE_TEMPLATES = [
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a cropped painting in the style of {}",
    "a good painting in the style of {}",
    "a close-up painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
]

# imagenet_dual_templates_small (personalized_style.py), verbatim
STYLE_TEMPLATES_WITH_IMAGE_TOKEN = [
    "a painting in the style of {} with {}",
    "a rendering in the style of {} with {}",
    "a cropped painting in the style of {} with {}",
    "the painting in the style of {} with {}",
    "a clean painting in the style of {} with {}",
    "a dirty painting in the style of {} with {}",
    "a dark painting in the style of {} with {}",
    "a cool painting in the style of {} with {}",
    "a close-up painting in the style of {} with {}",
    "a bright painting in the style of {} with {}",
    "a cropped painting in the style of {} with {}",
    "a good painting in the style of {} with {}",
    "a painting of one {} in the style of {}",
    "a nice painting in the style of {} with {}",
    "a small painting in the style of {} with {}",
    "a weird painting in the style of {} with {}",
    "a large painting in the style of {} with {}",
]


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
        for i in range(batch_size):
            if per_image[i]:
                img = index[i]
                out.append(Example(img, bool(flip[i]), self.templates_with_token[dual[i]], self.image_tokens[img]))
            else:
                out.append(Example(index[i], bool(flip[i]), self.templates[plain[i]], None))
        return out
