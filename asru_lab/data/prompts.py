"""How every loader phrases the two prompted task forms, so that one model sees one wording.

A multiple-choice item is its question, the lettered options one per line, then
`MCQ_SUFFIX`; a cloze item is `CLOZE_PREFIX` + the sentence with its blank written "___".
The synthetic benchmark, MLLMU-Bench and the user format all build their prompts here.
"""

from __future__ import annotations

from collections.abc import Sequence

from asru_lab.data.schema import LETTERS

MCQ_SUFFIX = "Answer with the correct option."
CLOZE_PREFIX = "Fill in the blank: "


def mcq_prompt(question: str, options: Sequence[str]) -> str:
    """A multiple-choice prompt: the question, lettered options, then the instruction."""
    lines = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    return f"{question}\n{lines}\n{MCQ_SUFFIX}"
