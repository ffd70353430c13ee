"""Scoring of single answers: multiple-choice parsing, fill-in-the-blank and ROUGE-L.

These functions take the generated text and the item's ground truth; they never run a model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from rouge_score import rouge_scorer

from asru_lab.data.schema import LETTERS, contains_value, normalize_text

# A letter "claim" is an upper-case option letter, or a lower-case one closed by punctuation or
# the end of the answer (so that the article in "a teacher" is not read as option A).
_LETTER = r"(?:(?P<upper>[A-H])\b|(?P<lower>[a-h])(?=\s*(?:[.:)\]]|$)))"
_LETTER_CLAIMS = (
    # "B", "B.", "B)", "(B)", "[B]", "b:" at the very start of the answer.
    re.compile(rf"^\s*[(\[]?{_LETTER}(?:\s*[.:)\]]|\s*$)"),
    # "Answer: B", "The answer is (B)", "correct option is B", "choice B", "letter B", "it's B".
    re.compile(
        rf"\b(?i:answer|option|choice|letter|it['’]?s|it\s+is)\s*(?i:is|would\s+be)?\s*[:=-]?\s*"
        rf"[(\[]?{_LETTER}"
    ),
    # A letter in parentheses anywhere: "I'd go with (C)".
    re.compile(r"\((?P<upper>[A-Ha-h])\)"),
    # A second letter offered as an alternative: "A or B", "(A) and (C)", "B/C".
    re.compile(r"\b(?P<first>[A-H])\)?\s*(?:\bor\b|\band\b|/)\s*\(?(?P<other>[A-H])\b"),
    # A letter opening a later line, as when the options are echoed ("B. Oslo").
    re.compile(r"(?m)^\s*[(\[]?(?P<upper>[A-H])\s*[.:)\]]"),
)
# "A" followed by plain text is usually the article ("A teacher."), so a bare leading "A <text>"
# counts as letter A only when the text is option A itself; other letters need no such check.
_BARE_LEADING = re.compile(r"^\s*(?P<letter>[A-H])\s+(?P<rest>\S.*)$", re.DOTALL)


def _claimed_letters(answer: str, first_option: str | None) -> set[str]:
    letters: set[str] = set()
    for pattern in _LETTER_CLAIMS:
        for match in pattern.finditer(answer):
            letters.update(g.upper() for g in match.groupdict().values() if g is not None)
    bare = _BARE_LEADING.match(answer)
    if bare and not letters:
        letter, rest = bare.group("letter"), normalize_text(bare.group("rest"))
        option_a = normalize_text(first_option or "")
        if letter != "A" or (option_a and f"{rest} ".startswith(f"{option_a} ")):
            letters.add(letter)
    return letters


def parse_mcq(answer: str, options: Sequence[str]) -> int | None:
    """The index of the option an answer chooses, or None when it chooses none or several.

    A letter wins when one is claimed ("B", "B.", "(B)", "b:", "Answer: B", "The answer is B",
    "option B"); two different letters, or a letter with no option, give None. Without a letter,
    the answer chooses the one option whose text it contains (normalised, whole words); an option
    contained in another matching option ("York" in "New York") does not count separately.
    """
    if not options:
        raise ValueError("parse_mcq needs at least one option")
    if len(options) > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} options are supported, got {len(options)}")
    if not answer.strip():
        return None
    letters = _claimed_letters(answer, options[0])
    if letters:
        if len(letters) > 1:
            return None
        index = LETTERS.index(letters.pop())
        return index if index < len(options) else None
    matched = [i for i, option in enumerate(options) if contains_value(answer, option)]
    chosen = [
        i
        for i in matched
        if not any(j != i and contains_value(options[j], options[i]) for j in matched)
    ]
    return chosen[0] if len(chosen) == 1 else None


def cloze_correct(answer: str, value: str) -> bool:
    """True when the blank's ground truth `value` occurs in the answer (normalised, whole words)."""
    return contains_value(answer, value)


@lru_cache(maxsize=1)
def _rouge_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure in [0, 1] between a generated answer and the reference answer."""
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)
