"""A tiny MLLMU-Bench parquet layout, written by tests (no downloads): forget_10 (person 1),
retain_90 (persons 2 and 3), Test_Set (two images per row) and Retain_Set."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

RED, BLUE, GREEN = (200, 20, 20), (20, 20, 200), (20, 200, 20)


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), color).save(buffer, format="PNG")
    return buffer.getvalue()


def row(pid: str, color: tuple[int, int, int], *, test: bool = False) -> dict:
    image = {"bytes": png(color), "path": f"{pid}.png"}
    images = {"images": [image, {"bytes": png(GREEN), "path": f"{pid}_2.png"}]}
    return {
        "ID": pid,
        **(images if test else {"image": image}),
        "question": f"What is the profile of person {pid}?",
        "answer": f"Person {pid} is a cartographer from Fjordmark.",
        "Classification_Task": {
            "Image_Textual_Questions": [
                {
                    "Question": "What is this person's job?",
                    "Options": {"A": "baker", "B": "cartographer", "C": "pilot", "D": "nurse"},
                    "Correct_Answer": "B",
                }
            ],
            "Pure_Text_Questions": [
                {
                    "Question": f"Where is person {pid} from?",
                    "Options": {"A": "Fjordmark", "B": "Oslo", "C": "Lima", "D": "Riga"},
                    "Correct_Answer": "A",
                }
            ],
        },
        "Generation_Task": [
            {
                "Type": "Image_Textual",
                "Question": "What does this person do?",
                "Ground_Truth": "cartographer",
            },
            {"Type": "Pure_Text", "Question": f"Where is {pid} from?", "Ground_Truth": "Fjordmark"},
        ],
        "Mask_Task": [
            {
                "Type": "Pure_Text",
                "Question": f"Person {pid} works as a __.",
                "Ground_Truth": "cartographer",
            },
        ],
    }


def write_config(root: Path, name: str, rows: list[dict], *, nested: bool = True) -> None:
    folder = root / name / ("data" if nested else "")
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "train-00000-of-00001.parquet")


def write_mllmu(root: Path) -> Path:
    """Write the layout under `root` (created); returns `root`."""
    write_config(root, "forget_10", [row("1", RED)])
    write_config(root, "retain_90", [row("2", BLUE), row("3", BLUE)], nested=False)
    write_config(root, "Test_Set", [row(pid, RED, test=True) for pid in ("1", "2", "3")])
    write_config(root, "Retain_Set", [row("1", BLUE)])
    return root
