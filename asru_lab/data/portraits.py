"""Procedural portraits of fictitious people.

A person's identity is a tuple of visual traits (skin, hair colour and style, eyes, shirt,
glasses, beard, face shape); a *view* of that person varies only what a photo varies: pose
(shift, scale, tilt), lighting (brightness and a side gradient) and the background colour and
texture. Identities are drawn with a minimum Hamming distance between trait tuples, so two
people always differ in several clearly visible traits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IMAGE_SIZE = 64
_CANVAS = 256  # drawn at 4x and downsampled, for anti-aliased edges

SKIN = {
    "pale": (246, 222, 200),
    "light": (232, 190, 150),
    "tan": (198, 146, 100),
    "brown": (140, 92, 60),
    "dark": (88, 56, 38),
}
HAIR_COLORS = {
    "black": (20, 20, 24),
    "brown": (110, 66, 30),
    "blonde": (236, 204, 96),
    "auburn": (168, 52, 26),
    "gray": (150, 150, 156),
    "white": (245, 245, 245),
    "blue": (40, 90, 220),
    "pink": (236, 110, 180),
}
HAIR_STYLES = ("short", "long", "buzz", "bun", "curly")
EYE_COLORS = {
    "brown": (96, 56, 20),
    "blue": (40, 110, 230),
    "green": (40, 170, 70),
    "gray": (120, 120, 130),
}
SHIRT_COLORS = {
    "red": (210, 30, 40),
    "blue": (30, 60, 200),
    "green": (30, 150, 60),
    "yellow": (240, 210, 40),
    "purple": (130, 50, 170),
    "orange": (245, 130, 20),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
GLASSES = ("none", "round", "square")
BEARD = ("none", "beard", "mustache")
ACCESSORIES = ("none", "earrings", "necklace", "bowtie")
FACE_SHAPES = {"round": (1.0, 1.0), "oval": (0.86, 1.08), "long": (0.78, 1.2)}
BACKGROUNDS = {
    "teal": (40, 160, 160),
    "peach": (250, 200, 160),
    "beige": (225, 215, 185),
    "navy": (25, 35, 95),
    "olive": (120, 125, 40),
    "lavender": (190, 170, 235),
    "maroon": (120, 25, 45),
    "mint": (170, 240, 200),
}

TRAITS: dict[str, tuple[str, ...]] = {
    "skin": tuple(SKIN),
    "hair_color": tuple(HAIR_COLORS),
    "hair_style": HAIR_STYLES,
    "eyes": tuple(EYE_COLORS),
    "shirt": tuple(SHIRT_COLORS),
    "glasses": GLASSES,
    "beard": BEARD,
    "face": tuple(FACE_SHAPES),
    "accessory": ACCESSORIES,
}


@dataclass(frozen=True)
class Appearance:
    """The visual identity of one person: one value per trait in TRAITS."""

    skin: str
    hair_color: str
    hair_style: str
    eyes: str
    shirt: str
    glasses: str
    beard: str
    face: str
    accessory: str

    def as_tuple(self) -> tuple[str, ...]:
        return tuple(getattr(self, t) for t in TRAITS)


@dataclass(frozen=True)
class View:
    """What changes between two photos of the same person."""

    dx: float
    dy: float
    scale: float
    tilt: float
    brightness: float
    gradient: float
    background: str
    texture_seed: int


def trait_distance(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """Number of traits in which two appearances differ."""
    return sum(x != y for x, y in zip(a, b, strict=True))


def draw_appearances(
    n: int,
    rng: random.Random,
    min_distance: int = 4,
    keep_away: tuple[tuple[list[Appearance], int], ...] = (),
) -> list[Appearance]:
    """`n` appearances, pairwise differing in at least `min_distance` traits.

    `keep_away` holds (other appearances, distance) pairs: every new appearance also differs
    from each of those others in at least that many traits.
    """
    others = [([o.as_tuple() for o in group], d) for group, d in keep_away]
    chosen: list[tuple[str, ...]] = []
    attempts = 0
    while len(chosen) < n:
        attempts += 1
        if attempts > 500_000:
            raise RuntimeError(f"could not draw {n} appearances at distance {min_distance}")
        cand = tuple(rng.choice(values) for values in TRAITS.values())
        if all(trait_distance(cand, c) >= min_distance for c in chosen) and all(
            trait_distance(cand, o) >= d for group, d in others for o in group
        ):
            chosen.append(cand)
    return [Appearance(*c) for c in chosen]


def draw_view(rng: random.Random) -> View:
    return View(
        dx=rng.uniform(-10, 10),
        dy=rng.uniform(-8, 8),
        scale=rng.uniform(0.92, 1.08),
        tilt=rng.uniform(-7, 7),
        brightness=rng.uniform(0.82, 1.15),
        gradient=rng.uniform(-0.18, 0.18),
        background=rng.choice(tuple(BACKGROUNDS)),
        texture_seed=rng.randrange(2**31),
    )


def _jitter(color: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, ...]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in color)


def render_portrait(look: Appearance, view: View, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw one view of a person as a `size`x`size` RGB image."""
    rng = random.Random(view.texture_seed)
    c = _CANVAS
    bg = Image.new("RGB", (c, c), _jitter(BACKGROUNDS[view.background], rng, 10))
    bgd = ImageDraw.Draw(bg)
    for _ in range(6):  # soft background blobs: texture that carries no identity
        x, y, r = rng.randrange(c), rng.randrange(c), rng.randrange(20, 60)
        bgd.ellipse(
            (x - r, y - r, x + r, y + r), fill=_jitter(BACKGROUNDS[view.background], rng, 22)
        )
    bg = bg.filter(ImageFilter.GaussianBlur(8))

    fig = Image.new("RGBA", (c, c), (0, 0, 0, 0))
    d = ImageDraw.Draw(fig)
    skin = SKIN[look.skin]
    hair = HAIR_COLORS[look.hair_color]
    wx, wy = FACE_SHAPES[look.face]
    cx, cy = c / 2, c * 0.44
    fw, fh = 52 * wx, 62 * wy

    # shoulders and shirt
    d.ellipse((cx - 105, c * 0.78, cx + 105, c * 1.3), fill=SHIRT_COLORS[look.shirt])
    d.rectangle((cx - 16, cy + fh * 0.7, cx + 16, c * 0.82), fill=skin)
    # hair behind the head
    if look.hair_style == "long":
        d.rounded_rectangle((cx - fw - 14, cy - fh - 12, cx + fw + 14, cy + fh + 40), 30, fill=hair)
    elif look.hair_style == "curly":
        for k in range(12):
            ang = np.pi * (1.05 + k / 11 * 0.9)
            px, py = cx + (fw + 6) * np.cos(ang), cy + (fh + 4) * np.sin(ang) + 6
            d.ellipse((px - 20, py - 20, px + 20, py + 20), fill=hair)
    elif look.hair_style == "bun":
        d.ellipse((cx - 24, cy - fh - 44, cx + 24, cy - fh + 4), fill=hair)
    # head
    d.ellipse((cx - fw, cy - fh, cx + fw, cy + fh), fill=skin)
    # hair on top
    if look.hair_style in ("short", "long", "bun", "curly"):
        d.chord((cx - fw - 4, cy - fh - 8, cx + fw + 4, cy + fh * 0.5), 180, 360, fill=hair)
    elif look.hair_style == "buzz":
        d.chord((cx - fw, cy - fh - 2, cx + fw, cy + fh * 0.2), 190, 350, fill=hair)
    # eyes
    ey = cy - fh * 0.08
    for sx in (-1, 1):
        ex = cx + sx * fw * 0.42
        d.ellipse((ex - 11, ey - 8, ex + 11, ey + 8), fill=(250, 250, 250))
        d.ellipse((ex - 7, ey - 7, ex + 7, ey + 7), fill=EYE_COLORS[look.eyes])
        d.ellipse((ex - 2, ey - 2, ex + 2, ey + 2), fill=(0, 0, 0))
    # glasses
    if look.glasses != "none":
        frame = (30, 30, 30)
        for sx in (-1, 1):
            ex = cx + sx * fw * 0.42
            box = (ex - 17, ey - 14, ex + 17, ey + 14)
            if look.glasses == "round":
                d.ellipse(box, outline=frame, width=5)
            else:
                d.rectangle(box, outline=(180, 30, 30), width=6)
        d.line((cx - fw * 0.42 + 17, ey, cx + fw * 0.42 - 17, ey), fill=frame, width=4)
    # mouth and beard
    my = cy + fh * 0.48
    if look.beard == "beard":
        d.chord((cx - fw * 0.85, cy + fh * 0.05, cx + fw * 0.85, cy + fh + 6), 0, 180, fill=hair)
        d.ellipse((cx - 14, my - 5, cx + 14, my + 5), fill=(150, 40, 50))
    else:
        d.arc((cx - 16, my - 10, cx + 16, my + 6), 20, 160, fill=(150, 40, 50), width=5)
        if look.beard == "mustache":
            d.rounded_rectangle((cx - 26, my - 16, cx + 26, my - 6), 5, fill=hair)

    # accessories
    if look.accessory == "earrings":
        for sx in (-1, 1):
            ax = cx + sx * (fw + 2)
            d.ellipse((ax - 8, cy + 8, ax + 8, cy + 24), fill=(250, 200, 30))
    elif look.accessory == "necklace":
        d.arc((cx - 34, cy + fh * 0.55, cx + 34, c * 0.86), 20, 160, fill=(250, 200, 30), width=7)
    elif look.accessory == "bowtie":
        by = c * 0.8
        d.polygon([(cx, by), (cx - 26, by - 14), (cx - 26, by + 14)], fill=(200, 20, 120))
        d.polygon([(cx, by), (cx + 26, by - 14), (cx + 26, by + 14)], fill=(200, 20, 120))

    # pose: scale, tilt, shift of the figure over the background
    w = int(c * view.scale)
    fig = fig.resize((w, w), Image.BICUBIC).rotate(view.tilt, resample=Image.BICUBIC, expand=False)
    ox = int((c - w) / 2 + view.dx)
    oy = int((c - w) / 2 + view.dy)
    bg.paste(fig, (ox, oy), fig)

    # lighting: global brightness and a left-right gradient
    arr = np.asarray(bg, dtype=np.float32)
    ramp = 1.0 + view.gradient * np.linspace(-1, 1, c, dtype=np.float32)[None, :, None]
    arr = np.clip(arr * view.brightness * ramp, 0, 255).astype(np.uint8)
    return Image.fromarray(arr).resize((size, size), Image.LANCZOS)
