"""A tiny CLEAR parquet layout, written by tests (no downloads): one folder per config, each
holding `train-00000-of-00001.parquet`, as `therem/CLEAR` publishes it.

People: Ada Quill is forgotten (forget10: two pictures), Bram Oster and Cleo Varga are retained
(retain90: one picture each). Beside them: forget10_perturbed (both of Ada's captions),
retain_perturbed (Bram's), the +tofu configs (the caption rows again plus TOFU-style questions,
some of which name nobody), real_faces (one celebrity), real_world (one photo question) and
full (not read by the loader).
"""

from __future__ import annotations

from pathlib import Path

from tests.mllmu_layout import BLUE, GREEN, RED, png, write_config

ADA, BRAM, CLEO = "Ada Quill", "Bram Oster", "Cleo Varga"
CAPTIONS = {
    ADA: (
        ("Ada Quill smiles in front of a red brick wall.", RED),
        ("Ada Quill reads a map at a wooden desk.", RED),
    ),
    BRAM: (("Bram Oster stands on a pier at dawn.", BLUE),),
    CLEO: (("Cleo Varga paints a mural in a sunny street.", GREEN),),
}
# (question, answer) per +tofu config; a question naming nobody belongs to the one before it.
TOFU = {
    "forget10+tofu": (
        ("What does Ada Quill do for a living?", "Ada Quill is a cartographer."),
        ("Where was she born?", "She was born in Fjordmark."),
    ),
    "retain90+tofu": (
        ("What genre does Bram Oster write?", "Bram Oster writes sea novels."),
        ("Which city is Cleo Varga from?", "Cleo Varga comes from Lumen."),
        ("What is her favourite colour?", "Her favourite colour is green."),
    ),
}
CELEBRITY, WRONG_NAMES = "Marie Curie", ["Ada Lovelace", "Lise Meitner", "Rosalind Franklin"]
WORLD_QUESTION, WORLD_ANSWER, WORLD_WRONG = "What colour is this picture?", "green", ["red", "blue"]


def image(color: tuple[int, int, int], name: str) -> dict:
    """An image cell as the Hugging Face parquet export writes it."""
    return {"bytes": png(color), "path": f"{name}.png"}


def caption_rows(*names: str) -> list[dict]:
    """The rows of a forget / retain config holding `names`."""
    return [
        {"image": image(color, f"{name}-{k}"), "caption": caption, "name": name}
        for name in names
        for k, (caption, color) in enumerate(CAPTIONS[name])
    ]


def perturbed_rows(*names: str) -> list[dict]:
    """The rows of a perturbed config for `names`: their caption rows plus a paraphrase, two
    wrong captions and two wrong names."""
    return [
        {
            **row,
            "perturbed_captions": [f"{row['name']} sleeps on a sofa.", f"{row['name']} swims."],
            "paraphrased_caption": f"In this picture, {row['caption']}",
            "perturbed_names": ["Nils Brand", "Olga Petrov"],
        }
        for row in caption_rows(*names)
    ]


def tofu_rows(config: str, *names: str) -> list[dict]:
    """The rows of a +tofu config: the caption rows of `names` (no `name` column), then the
    questions (no image, no caption)."""
    captions = [
        {"image": r["image"], "caption": r["caption"], "question": None, "answer": None}
        for r in caption_rows(*names)
    ]
    questions = [
        {"image": None, "caption": None, "question": q, "answer": a} for q, a in TOFU[config]
    ]
    return captions + questions


def write_clear(root: Path) -> Path:
    """Write the layout under `root` (created); returns `root`."""
    write_config(root, "forget10", caption_rows(ADA), nested=False)
    write_config(root, "retain90", caption_rows(BRAM, CLEO), nested=False)
    write_config(root, "full", caption_rows(ADA, BRAM, CLEO), nested=False)
    write_config(root, "forget10_perturbed", perturbed_rows(ADA), nested=False)
    write_config(root, "retain_perturbed", perturbed_rows(BRAM), nested=False)
    write_config(root, "forget10+tofu", tofu_rows("forget10+tofu", ADA), nested=False)
    write_config(root, "retain90+tofu", tofu_rows("retain90+tofu", BRAM, CLEO), nested=False)
    celebrity = {"image": image(BLUE, "curie"), "answer": CELEBRITY, "options": WRONG_NAMES}
    write_config(root, "real_faces", [celebrity], nested=False)
    photo = {
        "image": image(GREEN, "photo"),
        "question": WORLD_QUESTION,
        "answer": WORLD_ANSWER,
        "options": WORLD_WRONG,
    }
    write_config(root, "real_world", [photo], nested=False)
    return root
