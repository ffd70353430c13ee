"""Figures. Visualisation only: everything shown here was computed elsewhere."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

from asru_lab.data.schema import Benchmark


def contact_sheet(
    bench: Benchmark, person_ids: Sequence[str], views: Sequence[int], scale: int = 2
) -> Image.Image:
    """A grid of portraits: one row per person, one column per view, names on the left."""
    first = bench.load_image(f"images/{person_ids[0]}_v{views[0]}.png")
    side = first.width * scale
    label = 140
    sheet = Image.new("RGB", (label + side * len(views), side * len(person_ids)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, pid in enumerate(person_ids):
        person = bench.people[pid]
        caption = f"{person.name}\n({person.split})"
        draw.text((6, row * side + side // 2 - 12), caption, fill="black")
        for col, view in enumerate(views):
            img = bench.load_image(f"images/{pid}_v{view}.png").resize((side, side), Image.NEAREST)
            sheet.paste(img, (label + col * side, row * side))
    return sheet
