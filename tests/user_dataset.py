"""Rows of a hand-written user-format dataset (`profiles.jsonl`, `qa.jsonl`) for tests."""

from __future__ import annotations

PEOPLE = [
    {"id": "p1", "name": "Ada Lind", "split": "forget", "facts": {"hobby": "chess"}},
    {"id": "p2", "name": "Bo Falk", "split": "retain", "facts": {"hobby": "rowing"}},
]


def qa(person_id: str | None = "p1", split: str = "forget", **extra) -> dict:
    """One qa.jsonl row about `person_id`'s hobby, with `extra` fields replacing or added."""
    row = {
        "person_id": person_id,
        "split": split,
        "image": "images/a.png",
        "question": "What is this person's hobby?",
        "answer": "Their hobby is chess.",
        "attribute": "hobby",
    }
    row.update(extra)
    return row
