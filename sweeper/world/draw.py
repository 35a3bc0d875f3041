"""The embedded world: procedurally drawn 32x32 images and the caption grammar that describes them.

An image is one object (sometimes with a plain companion) on a background scene. Attributes:
colour x shape x texture x background, plus size, position, style (photo / sketch / blurry) and the
texture's phase. Shapes are drawn at 64 px and averaged down to 32 px (anti-aliasing), with a dark
outline so that a shape stays readable on a background of its own colour.

Three SECRET shapes (arrow, ring, house) are drawn in training images but the generator's captions
only ever call them "thing"; they are the held-out concepts textual inversion has to find. The judge,
a separate model, is taught their names so that it can tell them apart. All shapes are left-right
symmetric, so the inversion trainer's horizontal flips never make a new shape.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

SIZE = 32  # image size; drawn at 2 * SIZE and averaged down
COLOURS = {
    "red": (215, 40, 40),
    "green": (50, 185, 60),
    "blue": (40, 90, 230),
    "yellow": (245, 215, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 20),
}
SHAPES = ["circle", "square", "triangle", "star", "cross", "heart"]
SECRET_SHAPES = ["arrow", "ring", "house"]
TEXTURES = ["plain", "striped", "dotted", "checkered"]
BACKGROUNDS = {
    "sky": "in the sky",
    "grass": "on the grass",
    "sand": "on the sand",
    "night": "at night",
    "snow": "in the snow",
}
STYLES = {"photo": None, "sketch": "a sketch of", "blurry": "a blurry photo of"}
SIZES = ["small", "large"]
GENERIC = "thing"  # the only word the generator ever reads for a secret shape
# Prefixes of the textual-inversion templates (official code / diffusers example), so that the
# trainer's prompts are in distribution; their adjectives mean nothing in this world.
PREFIXES = [
    "a photo of",
    "a rendering of",
    "a cropped photo of",
    "the photo of",
    "a close-up photo of",
    "a good photo of",
    "a bright photo of",
    "a dark photo of",
    "a rendition of",
    "a picture of",
    "an image of",
    "a drawing of",
    "a photo of my",
    "a photo of one",
    "",
]
FILLERS = ["clean", "dirty", "cool", "nice", "weird", "good"]
EXTRA_WORDS = "a an the of on in at next to and with photo painting style art image".split()


@dataclass(frozen=True)
class Spec:
    """Everything that decides one image (with the rng for noise and texture phase)."""

    colour: str
    shape: str
    texture: str
    background: str
    size: str = "large"
    style: str = "photo"
    companion: tuple[str, str] | None = None  # (colour, shape), plain texture
    x: float = 0.5  # centre, as a fraction of the free range
    y: float = 0.5

    def with_attribute(self, attr: str, value: str) -> Spec:
        """This spec with one attribute (colour, shape, texture, background, ...) changed."""
        changes: dict[str, Any] = {attr: value}
        return replace(self, **changes)


def held_out_combos(seed: int = 7, fraction: float = 0.1) -> set[tuple[str, str, str, str]]:
    """(colour, shape, texture, background) combinations no model ever trains on (known shapes only)."""
    combos = [(c, s, t, b) for c in COLOURS for s in SHAPES for t in TEXTURES for b in BACKGROUNDS]
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(combos), size=int(round(fraction * len(combos))), replace=False)
    return {combos[i] for i in sorted(picked)}


def vocabulary(judge: bool = False) -> list[str]:
    """Every word a caption or the world's prompts use; the judge also knows the secret shapes."""
    words = [*COLOURS, *SHAPES, *TEXTURES, *SIZES, GENERIC, *FILLERS, *EXTRA_WORDS]
    for phrase in [*BACKGROUNDS.values(), *(s for s in STYLES.values() if s), *PREFIXES]:
        words += phrase.split()
    words += ["close", "up", "sketch", "blurry"]
    if judge:
        words += SECRET_SHAPES
    return sorted({part for w in words for part in w.split("-") if part})


# ------------------------------------------------------------------------------------------ drawing

_G = np.arange(2 * SIZE, dtype=np.float32) + 0.5
_X: np.ndarray
_Y: np.ndarray
_X, _Y = np.meshgrid(_G, _G)


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of `shape` in unit coordinates (u right, v down, radius 1)."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "triangle":
        return (v <= 0.75) & (np.abs(u) <= 0.98 * (v + 0.95) / 1.7)
    if shape == "star":
        theta = np.mod(np.arctan2(u, -v), 2 * np.pi / 5)
        phi = np.minimum(theta, 2 * np.pi / 5 - theta)
        inner, half = 0.42, np.pi / 5
        edge = inner * np.sin(half) / (np.sin(phi) + inner * np.sin(half - phi))
        return np.sqrt(u * u + v * v) <= 1.05 * edge
    if shape == "cross":
        return ((np.abs(u) <= 0.32) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.32) & (np.abs(u) <= 0.95))
    if shape == "heart":
        x, y = 1.2 * u, -1.2 * v + 0.25
        return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
    if shape == "arrow":
        head = (v <= -0.05) & (np.abs(u) <= 0.9 * (v + 0.95) / 0.9)
        return head | ((np.abs(u) <= 0.3) & (v > -0.05) & (v <= 0.95))
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.45**2)
    if shape == "house":
        roof = (v <= -0.05) & (v >= -0.95) & (np.abs(u) <= 0.95 * (v + 0.95) / 0.9)
        return roof | ((np.abs(u) <= 0.7) & (v > -0.05) & (v <= 0.9))
    raise ValueError(f"unknown shape {shape!r}")


def _part_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray | None:
    """A dark detail drawn on top: the house's door."""
    if shape == "house":
        return (np.abs(u) <= 0.2) & (v >= 0.4) & (v <= 0.9)
    return None


def _texture(texture: str, rng: np.random.Generator) -> np.ndarray:
    px, py = rng.integers(0, 12, 2)
    if texture == "plain":
        return np.zeros_like(_X, dtype=bool)
    if texture == "striped":
        return ((_Y + py) // 5).astype(int) % 2 == 1
    if texture == "checkered":
        return (((_X + px) // 6).astype(int) + ((_Y + py) // 6).astype(int)) % 2 == 1
    if texture == "dotted":
        return (np.mod(_X + px, 10) - 5) ** 2 + (np.mod(_Y + py, 10) - 5) ** 2 <= 3.2**2
    raise ValueError(f"unknown texture {texture!r}")


def _background(name: str, rng: np.random.Generator) -> np.ndarray:
    n = 2 * SIZE
    img: np.ndarray = np.empty((n, n, 3), np.float32)
    if name == "sky":
        t = (_Y / n)[..., None]
        img[:] = (1 - t) * np.array([120, 185, 250]) + t * np.array([200, 230, 255])
    elif name == "grass":
        img[:] = (60, 135, 45)
        img += rng.normal(0, 1, (1, n, 1)) * 14 + rng.normal(0, 6, (n, n, 1))
    elif name == "sand":
        img[:] = (225, 200, 140)
        img += rng.normal(0, 8, (n, n, 1))
    elif name == "night":
        img[:] = (15, 20, 55)
        stars = rng.random((n, n)) < 0.012
        img[stars] = (230, 230, 200)
    elif name == "snow":
        img[:] = (238, 242, 250)
        img += rng.normal(0, 5, (n, n, 1)) * np.array([1.0, 1.0, 0.5])
    elif name == "paper":
        img[:] = (250, 248, 240)
    else:
        raise ValueError(f"unknown background {name!r}")
    return img


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _paint(img, colour, shape, texture, cx, cy, r, sketch, rng) -> None:
    u, v = (_X - cx) / r, (_Y - cy) / r
    mask = shape_mask(shape, u, v)
    rgb = np.array(COLOURS[colour], np.float32)
    if sketch:  # the outline alone, in the object's colour
        img[_dilate(mask, 3) & ~mask] = rgb
        return
    img[_dilate(mask, 2) & ~mask] = (20, 20, 25)
    lum = rgb @ np.array([0.3, 0.59, 0.11], np.float32)
    second = rgb * 0.4 if lum > 140 else 0.45 * rgb + 0.55 * 255
    tex = _texture(texture, rng)
    img[mask] = rgb
    img[mask & tex] = second
    part = _part_mask(shape, u, v)
    if part is not None:
        img[mask & part] = (20, 20, 25)


def _blur(img: np.ndarray) -> np.ndarray:
    k = np.array([1, 4, 6, 4, 1], np.float32) / 16
    for axis in (0, 1):
        padded = np.pad(img, [(2, 2) if a == axis else (0, 0) for a in range(3)], mode="edge")
        img = sum(k[i] * np.take(padded, np.arange(i, i + img.shape[axis]), axis=axis) for i in range(5))
    return img


def render(spec: Spec, rng: np.random.Generator) -> np.ndarray:
    """The image of `spec` as uint8 [SIZE, SIZE, 3]."""
    n = 2 * SIZE
    sketch = spec.style == "sketch"
    img = _background("paper" if sketch else spec.background, rng)
    if spec.companion is None:
        r = n * (rng.uniform(0.22, 0.27) if spec.size == "small" else rng.uniform(0.33, 0.4))
        free = n - 2 * r - 4
        _paint(
            img,
            spec.colour,
            spec.shape,
            spec.texture,
            2 + r + spec.x * free,
            2 + r + spec.y * free,
            r,
            sketch,
            rng,
        )
    else:
        r = n * rng.uniform(0.2, 0.23)
        left = rng.random() < 0.5
        xs = (n * 0.26, n * 0.74) if left else (n * 0.74, n * 0.26)
        ys = 2 + r + np.array([spec.y, rng.random()]) * (n - 2 * r - 4)
        _paint(img, spec.colour, spec.shape, spec.texture, xs[0], ys[0], r, sketch, rng)
        c_colour, c_shape = spec.companion
        _paint(img, c_colour, c_shape, "plain", xs[1], ys[1], r, sketch, rng)
    img = img.reshape(SIZE, 2, SIZE, 2, 3).mean(axis=(1, 3))
    if spec.style == "blurry":
        img = _blur(img)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ captions


def caption(spec: Spec, rng: np.random.Generator, *, judge: bool = False, drop: float = 0.2) -> str:
    """A caption from the grammar: [prefix] a [size] [colour] [texture] noun [next to ...] [background].

    Each attribute is left out with probability `drop` (size: 0.5), so prompts that name only some
    attributes ("a photo of a {}", "a {} on the grass") are in distribution. The generator reads
    secret shapes as "thing" (and known shapes as "thing" 10% of the time); the judge reads names.
    """
    return caption_facts(spec, rng, judge=judge, drop=drop)[0]


def caption_facts(
    spec: Spec, rng: np.random.Generator, *, judge: bool = False, drop: float = 0.2
) -> tuple[str, dict]:
    """`caption` and the facts it states ({attribute: value}); an image matches it if it has them all."""
    secret = spec.shape in SECRET_SHAPES
    noun = spec.shape if (judge or not secret) else GENERIC
    if not judge and not secret and rng.random() < 0.1:
        noun = GENERIC
    facts = {"style": spec.style, "companion": spec.companion}
    words = []
    if spec.size and rng.random() < 0.5:
        words.append(spec.size)
        facts["size"] = spec.size
    if rng.random() >= drop:
        words.append(spec.colour)
        facts["colour"] = spec.colour
    if spec.style != "sketch" and rng.random() >= drop:
        words.append(spec.texture)
        facts["texture"] = spec.texture
    if rng.random() < 0.04:
        words.insert(0, FILLERS[rng.integers(len(FILLERS))])
    if rng.random() >= 0.03:  # sometimes no noun at all: the evaluation's "prompt without S*"
        words.append(noun)
        if noun != GENERIC:
            facts["shape"] = noun
    if spec.companion is not None:
        words += ["next", "to", "an" if spec.companion[0][0] in "aeiou" else "a", *spec.companion]
    if spec.style != "sketch" and rng.random() >= drop:
        words += BACKGROUNDS[spec.background].split()
        facts["background"] = spec.background
    prefix = STYLES[spec.style] or PREFIXES[rng.integers(len(PREFIXES))]
    article = "an" if words and words[0][0] in "aeiou" else "a"
    if prefix.endswith(("my", "one")):
        article = ""
    return " ".join(f"{prefix} {article} {' '.join(words)}".split()), facts


def full_caption(spec: Spec, judge: bool = True) -> str:
    """The deterministic, complete caption (the zero-shot and prompt-following prompts)."""
    noun = spec.shape if (judge or spec.shape not in SECRET_SHAPES) else GENERIC
    article = "an" if spec.colour[0] in "aeiou" else "a"
    return f"a photo of {article} {spec.colour} {spec.texture} {noun} {BACKGROUNDS[spec.background]}"


def random_spec(
    rng: np.random.Generator,
    held_out: set,
    *,
    secret_p: float = 0.2,
    style_p: float = 0.2,
    companion_p: float = 0.1,
) -> Spec:
    """A random training spec, never one of the `held_out` combinations."""
    while True:
        secret = rng.random() < secret_p
        shape = SECRET_SHAPES[rng.integers(3)] if secret else SHAPES[rng.integers(len(SHAPES))]
        spec = Spec(
            colour=list(COLOURS)[rng.integers(len(COLOURS))],
            shape=shape,
            texture=TEXTURES[rng.integers(len(TEXTURES))],
            background=list(BACKGROUNDS)[rng.integers(5)],
            size=SIZES[rng.integers(2)],
            x=float(rng.random()),
            y=float(rng.random()),
        )
        if (spec.colour, spec.shape, spec.texture, spec.background) not in held_out:
            break
    roll = rng.random()
    if roll < style_p:
        spec = replace(spec, style="sketch" if roll < style_p / 2 else "blurry")
    elif rng.random() < companion_p:
        others = [c for c in COLOURS if c != spec.colour]
        spec = replace(spec, companion=(others[rng.integers(len(others))], SHAPES[rng.integers(len(SHAPES))]))
    return spec


def render_dataset(n: int, seed: int, held_out: set, **kwargs) -> tuple[np.ndarray, list[Spec]]:
    """`n` training images (uint8 [n, SIZE, SIZE, 3]) and their specs, deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    specs = [random_spec(rng, held_out, **kwargs) for _ in range(n)]
    images = np.stack([render(s, rng) for s in specs])
    return images, specs


# ------------------------------------------------------------------------------------------ concepts

# Held-out concepts: a secret shape in one colour and texture. The generator has drawn such shapes only
# under the word "thing"; each concept's init word is a coarse, known shape.
CONCEPTS: dict[str, dict[str, Any]] = {
    "arrow": dict(
        shape="arrow",
        colour="orange",
        texture="striped",
        init_word="triangle",
        backgrounds=("sand", "sky", "sand", "sky", "sand"),
    ),
    "ring": dict(
        shape="ring",
        colour="blue",
        texture="dotted",
        init_word="circle",
        backgrounds=("snow", "sand", "snow", "sand", "snow"),
    ),
    "house": dict(
        shape="house",
        colour="red",
        texture="checkered",
        init_word="square",
        backgrounds=("grass", "sky", "grass", "sky", "grass"),
    ),
}


def concept_images(name: str, seed: int = 0) -> list[np.ndarray]:
    """The five images of concept `name` (deterministic): varied background, size and position."""
    c = CONCEPTS[name]
    rng = np.random.default_rng([seed, list(CONCEPTS).index(name)])
    return [
        render(
            Spec(
                c["colour"],
                c["shape"],
                c["texture"],
                bg,
                size="small" if i == 4 else "large",
                x=float(rng.random()),
                y=float(rng.random()),
            ),
            rng,
        )
        for i, bg in enumerate(c["backgrounds"])
    ]
