"""How every loader phrases the two prompted task forms, so that one model sees one wording.

A multiple-choice item is its question, the lettered options one per line, then
`MCQ_SUFFIX`; a cloze item is `CLOZE_PREFIX` + the sentence with its blank written "___".
The synthetic benchmark, MLLMU-Bench and the user format all build their prompts here.
"""

from __future__ import annotations

from collections.abc import Sequence

from asru_lab.data.schema import LETTERS, BenchmarkError

MCQ_SUFFIX = "Answer with the correct option."
CLOZE_PREFIX = "Fill in the blank: "


def mcq_prompt(question: str, options: Sequence[str]) -> str:
    """A multiple-choice prompt: the question, lettered options, then the instruction."""
    lines = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    return f"{question}\n{lines}\n{MCQ_SUFFIX}"


def mcq_stem(question: str, options: Sequence[str]) -> str:
    """The question stem that `mcq_prompt(stem, options)` turned into `question`.

    Raises BenchmarkError when `question` is not such a prompt (another wording, other options).
    """
    lines = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    tail = f"\n{lines}\n{MCQ_SUFFIX}"
    stem = question.removesuffix(tail)
    if stem == question or mcq_prompt(stem, options) != question:
        raise BenchmarkError(
            f"multiple-choice item {question[:80]!r} was not phrased by data.prompts.mcq_prompt "
            f"with its options {list(options)}; its stem cannot be recovered"
        )
    return stem


def cloze_sentence(question: str) -> str:
    """The sentence (its blank written "___") that `CLOZE_PREFIX` + sentence made `question`.

    Raises BenchmarkError when `question` does not start with `CLOZE_PREFIX` or has no blank.
    """
    sentence = question.removeprefix(CLOZE_PREFIX)
    if sentence == question or "___" not in sentence:
        raise BenchmarkError(
            f"fill-in-the-blank item {question[:80]!r} is not {CLOZE_PREFIX!r} + a sentence with "
            "a blank '___'; its sentence cannot be recovered"
        )
    return sentence
