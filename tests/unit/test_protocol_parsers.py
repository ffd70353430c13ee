"""The reply parsers of each evaluation protocol, checked against hand-written replies.

Expected values come from each protocol's definition, not from running its code:

- ``asru_lab`` (today's protocol): ``metrics.parse_mcq`` / ``metrics.cloze_correct`` as their
  docstrings define them. A letter wins when one is claimed ("B", "B.", "(B)", "b:",
  "Answer: B", "The answer is B", "option B"); two different letters, or a letter with no
  option, give None; without a letter the reply chooses the one option whose text it contains
  (normalised, whole words). Cloze: the value occurs in the reply, normalised, as whole words.
- ``mllmu`` (MLLMU-Bench's public evaluation script): take the text after "ASSISTANT:" if the
  reply contains it, else after the first "Answer:" if it contains that, else the whole reply
  (both markers matched case-sensitively, as Python's ``in`` does); strip it; its first
  character, upper-cased, is the choice when it is one of the option keys, otherwise no choice
  (counted wrong). Cloze: ``truth.lower()`` is a substring of ``reply.lower()`` - no stripping,
  no word boundaries.
- ``asru_paper`` (the ASRU authors' variant): a reply containing ":" counts only when everything
  before its first ":" (stripped) is exactly an option key ("B: Oslo" -> B, "b: Oslo" and
  "Answer: B" -> none); a reply without ":" is scored by the ``mllmu`` rule.

The item has four options; option C's text starts with a "C" so that the official first
character rule happens to read the sentence "Celia Corwin's hobby is stargazing." as C.
"""

from __future__ import annotations

import pytest

from asru_lab.evaluation import metrics
from asru_lab.evaluation.protocols import asru_paper, mllmu

OPTIONS = ("Lima", "Oslo", "Celia Corwin's hobby is stargazing.", "Kyiv")
KEYS = ("A", "B", "C", "D")
OPTION_C = OPTIONS[2]


def _cases(table: list[tuple[str, str, str | None]]) -> list:
    return [pytest.param(reply, expected, id=case_id) for case_id, reply, expected in table]


# --------------------------------------------------------------------------------------------
# asru_lab: parse_mcq(answer, options) -> option index; written here as the option's letter.
# --------------------------------------------------------------------------------------------
ASRU_LAB_MCQ = [
    ("bare-B", "B", "B"),
    ("lower-b", "b", "B"),  # a lower-case letter closed by the end of the answer
    ("space-B", " B", "B"),
    ("tab-B-newline", "\tB\n", "B"),
    ("B-dot", "B.", "B"),
    ("B-paren", "B)", "B"),
    ("B-dot-text", "B. Oslo", "B"),
    ("B-colon-other-text", "B: Lima", "B"),  # the claimed letter wins over option A's text
    ("Answer-colon-B", "Answer: B", "B"),
    ("answer-colon-b", "answer: b", "B"),
    ("Answer-colon-D", "Answer: D", "D"),
    ("ASSISTANT-colon-C", "ASSISTANT: C", None),  # no documented letter form, no option text
    ("parens-B", "(B)", "B"),
    ("brackets-B", "[B]", "B"),
    ("the-answer-is-B", "The answer is B.", "B"),
    ("the-answer-is-parens-C", "The answer is (C).", "C"),
    ("I-think-its-B", "I think it's B", "B"),
    ("option-C-text", OPTION_C, "C"),
    ("option-C-text-other-case", "celia corwin's hobby is STARGAZING", "C"),
    ("option-A-text", "Lima", "A"),
    ("option-B-text", "Oslo", "B"),
    ("option-D-text", "Kyiv", "D"),
    ("two-option-texts", "Oslo or Lima", None),
    ("article-A", "A teacher.", None),  # the article, not option A
    ("bare-A", "A", "A"),
    ("A-then-option-A-text", "A Lima", "A"),
    ("E-not-a-key", "E", None),
    ("E-colon-option-text", "E: Oslo", None),  # a letter with no option gives None
    ("empty", "", None),
    ("blank", "   ", None),
    ("B-or-C", "B or C", None),  # two different letters
    ("Note-colon-B", "Note: B", None),
    ("bold-B", "**B**", None),  # not a documented letter form
    ("ASSISTANT-Answer-B", "ASSISTANT: Answer: B", "B"),
    ("b-colon-text", "b: Lima", "B"),
    ("B-dot-text-colon", "B. Oslo: the capital", "B"),
]


@pytest.mark.parametrize(("reply", "expected"), _cases(ASRU_LAB_MCQ))
def test_asru_lab_mcq(reply: str, expected: str | None) -> None:
    index = metrics.parse_mcq(reply, OPTIONS)
    assert (KEYS[index] if index is not None else None) == expected


@pytest.mark.xfail(
    strict=True,
    reason=(
        "parse_mcq's docstring: a bare letter ('B') is a claim and two different letters give "
        "None; a first line 'C' then an echoed 'B. something' claims C and B, but the parser "
        "reads B (the echoed-line pattern wins and the bare leading C is not counted)"
    ),
)
def test_asru_lab_mcq_first_line_letter_then_echoed_option() -> None:
    assert metrics.parse_mcq("C\nB. something", OPTIONS) is None


def test_asru_lab_mcq_letter_beyond_the_options_is_none() -> None:
    assert metrics.parse_mcq("C", ("Lima", "Oslo")) is None


ASRU_LAB_CLOZE = [
    ("word-other-case", "Her hobby is Stargazing.", "stargazing", True),
    ("split-word", "star gazing", "stargazing", False),
    ("upper-case", "STARGAZING", "stargazing", True),
    ("inside-a-longer-word", "I love stargazingclubs", "stargazing", False),  # whole words
    ("trailing-punctuation", "stargazing!", "Stargazing", True),
    ("value-within-reply", "Oslo, Norway", "Oslo", True),
    ("reply-within-value", "Oslo", "Oslo, Norway", False),
    ("empty-reply", "", "Oslo", False),
    ("empty-value", "anything", "", False),
    ("digits-prefix", "He was born in 1984", "198", False),
    ("hyphen-is-a-space", "Paris-based", "paris", True),
    ("curly-apostrophe", "It’s Celia's", "it's celia's", True),
    ("spaces-around", "stargazing ", " stargazing", True),
    ("number", "The answer is 42.", "42", True),
]


@pytest.mark.parametrize(
    ("reply", "truth", "expected"),
    [pytest.param(r, t, e, id=i) for i, r, t, e in ASRU_LAB_CLOZE],
)
def test_asru_lab_cloze(reply: str, truth: str, expected: bool) -> None:
    assert metrics.cloze_correct(reply, truth) is expected


# --------------------------------------------------------------------------------------------
# mllmu: mcq_choice(reply, keys) -> key or None; the official first-character rule.
# --------------------------------------------------------------------------------------------
MLLMU_MCQ = [
    ("bare-B", "B", "B"),
    ("lower-b", "b", "B"),
    ("space-B", " B", "B"),
    ("tab-B-newline", "\tB\n", "B"),
    ("B-dot", "B.", "B"),
    ("B-paren", "B)", "B"),
    ("B-dot-text", "B. Oslo", "B"),
    ("B-colon-other-text", "B: Lima", "B"),
    ("Answer-colon-B", "Answer: B", "B"),
    # "Answer:" is matched case-sensitively: "answer: b" is read whole, first character "a".
    ("answer-colon-b", "answer: b", "A"),
    ("Answer-colon-D", "Answer: D", "D"),
    ("text-then-Answer-colon-D", "Let me think. Answer: D", "D"),
    ("Answer-colon-nothing", "Answer:", None),
    ("ASSISTANT-colon-C", "ASSISTANT: C", "C"),
    ("ASSISTANT-colon-b", "ASSISTANT: b", "B"),
    ("prompt-echo-ASSISTANT-D", "USER: which one?\nASSISTANT: D. Kyiv", "D"),
    # "ASSISTANT:" takes precedence; the text after it starts with "A" of "Answer".
    ("ASSISTANT-Answer-B", "ASSISTANT: Answer: B", "A"),
    ("Answer-then-ASSISTANT-C", "Answer: B\nASSISTANT: C", "C"),
    ("parens-B", "(B)", None),
    ("brackets-B", "[B]", None),
    ("bold-B", "**B**", None),
    ("the-answer-is-B", "The answer is B.", None),
    ("the-answer-is-parens-C", "The answer is (C).", None),
    ("I-think-its-B", "I think it's B", None),
    ("option-C-text", OPTION_C, "C"),  # first character "C", by chance option C
    ("option-A-text", "Lima", None),  # "L" is not a key
    ("option-D-text", "Kyiv", None),  # "K" is not a key
    ("word-starting-with-D", "Dunno", "D"),
    ("article-A", "A teacher.", "A"),
    ("E-not-a-key", "E", None),
    ("E-colon-option-text", "E: Oslo", None),
    ("empty", "", None),
    ("blank", "   ", None),
    ("B-or-C", "B or C", "B"),
    ("C-then-echoed-B", "C\nB. something", "C"),
    ("Note-colon-B", "Note: B", None),  # "N"
    ("b-colon-text", "b: Lima", "B"),
    ("B-dot-text-colon", "B. Oslo: the capital", "B"),
    ("C-then-B-colon", "C\nB: something", "C"),
]


@pytest.mark.parametrize(("reply", "expected"), _cases(MLLMU_MCQ))
def test_mllmu_mcq(reply: str, expected: str | None) -> None:
    assert mllmu.mcq_choice(reply, KEYS) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        pytest.param("B", "B", id="B-is-a-key"),
        pytest.param("C", None, id="C-is-not-a-key"),
        pytest.param("c", None, id="c-is-not-a-key"),
        pytest.param("Answer: D", None, id="Answer-D-not-a-key"),
        pytest.param("Celia", None, id="C-word-not-a-key"),
    ],
)
def test_mllmu_mcq_two_options(reply: str, expected: str | None) -> None:
    assert mllmu.mcq_choice(reply, ("A", "B")) == expected


MLLMU_CLOZE = [
    ("word-other-case", "Her hobby is Stargazing.", "stargazing", True),
    ("split-word", "star gazing", "stargazing", False),
    ("upper-case", "STARGAZING", "stargazing", True),
    ("truth-upper-case", "stargazing", "Stargazing", True),
    ("inside-a-longer-word", "I love stargazingclubs", "stargazing", True),  # plain substring
    ("value-within-reply", "Oslo, Norway", "Oslo", True),
    ("reply-within-value", "Oslo", "Oslo, Norway", False),
    ("empty-reply", "", "Oslo", False),
    ("empty-truth", "anything", "", True),  # "" is a substring of every reply
    ("digits-prefix", "He was born in 1984", "198", True),
    ("hyphen-is-not-a-space", "Paris-based", "paris based", False),
    ("curly-apostrophe-differs", "It’s Celia's", "it's celia's", False),
    ("spaces-not-stripped", "stargazing ", " stargazing", False),
    ("non-ascii-case", "KRAKÓW", "kraków", True),
    ("number", "The answer is 42.", "42", True),
]


@pytest.mark.parametrize(
    ("reply", "truth", "expected"),
    [pytest.param(r, t, e, id=i) for i, r, t, e in MLLMU_CLOZE],
)
def test_mllmu_cloze(reply: str, truth: str, expected: bool) -> None:
    assert mllmu.cloze_correct(reply, truth) is expected


# --------------------------------------------------------------------------------------------
# asru_paper: mcq_choice(reply, keys) -> key or None; "KEY: ..." or, without ":", mllmu's rule.
# --------------------------------------------------------------------------------------------
ASRU_PAPER_MCQ = [
    # No ":" anywhere: the mllmu first-character rule on the whole reply.
    ("bare-B", "B", "B"),
    ("lower-b", "b", "B"),
    ("space-B", " B", "B"),
    ("tab-B-newline", "\tB\n", "B"),
    ("B-dot", "B.", "B"),
    ("B-paren", "B)", "B"),
    ("B-dot-text", "B. Oslo", "B"),
    ("parens-B", "(B)", None),
    ("brackets-B", "[B]", None),
    ("bold-B", "**B**", None),
    ("the-answer-is-B", "The answer is B.", None),
    ("I-think-its-B", "I think it's B", None),
    ("option-C-text", OPTION_C, "C"),
    ("option-A-text", "Lima", None),
    ("article-A", "A teacher.", "A"),
    ("E-not-a-key", "E", None),
    ("empty", "", None),
    ("blank", "   ", None),
    ("B-or-C", "B or C", "B"),
    ("C-then-echoed-B", "C\nB. something", "C"),
    # With ":": only the stripped text before the first ":" decides.
    ("B-colon-other-text", "B: Lima", "B"),
    ("spaced-B-colon", " B : Oslo", "B"),
    ("B-colon-nothing", "B:", "B"),
    ("D-colon-text", "D: Kyiv", "D"),
    ("Answer-colon-B", "Answer: B", None),
    ("answer-colon-b", "answer: b", None),
    ("ASSISTANT-colon-C", "ASSISTANT: C", None),
    ("ASSISTANT-Answer-B", "ASSISTANT: Answer: B", None),
    ("Note-colon-B", "Note: B", None),
    ("E-colon-option-text", "E: Oslo", None),
    ("colon-first", ": B", None),
    ("B-dot-text-colon", "B. Oslo: the capital", None),  # "B. Oslo" is not a key
    ("C-then-B-colon", "C\nB: something", None),  # "C\nB" is not a key
    ("bold-B-colon", "**B**: Oslo", None),
    # "exactly" a key (the module docstring): a lower-case "b" before the ":" is not "B".
    ("b-colon-text", "b: Lima", None),
]


@pytest.mark.parametrize(("reply", "expected"), _cases(ASRU_PAPER_MCQ))
def test_asru_paper_mcq(reply: str, expected: str | None) -> None:
    assert asru_paper.mcq_choice(reply, KEYS) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        pytest.param("B: Oslo", "B", id="B-colon-is-a-key"),
        pytest.param("C: Celia", None, id="C-colon-not-a-key"),
        pytest.param("C", None, id="C-not-a-key"),
        pytest.param("Celia", None, id="C-word-not-a-key"),
    ],
)
def test_asru_paper_mcq_two_options(reply: str, expected: str | None) -> None:
    assert asru_paper.mcq_choice(reply, ("A", "B")) == expected
