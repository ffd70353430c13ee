"""Scoring of single answers: multiple-choice parsing, cloze and ROUGE-L."""

import pytest

from asru_lab.evaluation.metrics import cloze_correct, parse_mcq, rouge_l

OPTIONS = ("Lisbon", "Oslo", "Krakow", "Nairobi")


@pytest.mark.parametrize(
    "answer",
    [
        "B",
        "B.",
        "(B)",
        "B)",
        "[B]",
        "b:",
        "b",
        "b.",
        "  B.  ",
        "B. Oslo",
        "B Oslo",
        "B) Oslo, I think.",
        "Answer: B",
        "answer: b",
        "The answer is B",
        "The answer is B.",
        "The correct answer is (B).",
        "The answer is: B",
        "My answer would be B.",
        "option B",
        "I'd pick option B.",
        "I choose option (b).",
        "I'd go with (B).",
        "I think it's B.",
        "It is B, Oslo.",
        "Letter B",
    ],
)
def test_letter_answers_choose_that_option(answer):
    assert parse_mcq(answer, OPTIONS) == 1


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("A", 0),
        ("a", 0),
        ("A.", 0),
        ("C: Krakow", 2),
        ("D", 3),
        ("(d)", 3),
        # "A <option A>" is the letter, while "A <something else>" is the article.
        ("A Lisbon", 0),
    ],
)
def test_each_letter_maps_to_its_index(answer, expected):
    assert parse_mcq(answer, OPTIONS) == expected


def test_the_letter_wins_over_an_option_text():
    assert parse_mcq("B. Lisbon", OPTIONS) == 1


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Oslo", 1),
        ("oslo", 1),
        ("This person was born in Oslo.", 1),
        ("Nairobi!", 3),
        ("I believe it's Krakow, Poland.", 2),
        ("Lisbon, definitely.", 0),
    ],
)
def test_a_single_option_text_chooses_that_option(answer, expected):
    assert parse_mcq(answer, OPTIONS) == expected


def test_option_text_must_match_whole_words():
    assert parse_mcq("Osloville", OPTIONS) is None
    assert parse_mcq("a teacher", ("teach", "teacher", "pilot", "baker")) == 1


def test_an_option_inside_a_longer_matching_option_does_not_count_twice():
    options = ("New York", "York", "Leeds", "Bath")
    assert parse_mcq("She was born in New York.", options) == 0
    assert parse_mcq("She was born in York.", options) == 1


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "   ",
        "I don't know.",
        "I cannot answer that.",
        "Answer with the letter of the correct option.",
        "A teacher.",  # the article, and no option text
        "The answer is a city in Europe.",
        "Hugo Lund",
    ],
)
def test_answers_that_choose_nothing_give_none(answer):
    assert parse_mcq(answer, OPTIONS) is None


@pytest.mark.parametrize(
    "answer",
    [
        "A or B",
        "The answer is A or B.",
        "Either (A) or (C).",
        "Option A, no wait, option C.",
        "A. Lisbon\nB. Oslo\nC. Krakow\nD. Nairobi",  # the options echoed back
        "Oslo or Lisbon",
        "Lisbon, Oslo, Krakow and Nairobi",
    ],
)
def test_ambiguous_answers_give_none(answer):
    assert parse_mcq(answer, OPTIONS) is None


@pytest.mark.parametrize("answer", ["E", "E.", "The answer is F", "(G)"])
def test_a_letter_without_an_option_gives_none(answer):
    assert parse_mcq(answer, OPTIONS) is None


def test_more_options_allow_later_letters():
    options = tuple("one two three four five six".split())
    assert parse_mcq("F.", options) == 5
    assert parse_mcq("The answer is E", options) == 4


def test_bad_option_lists_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="at least one option"):
        parse_mcq("A", ())
    with pytest.raises(ValueError, match="at most 8 options"):
        parse_mcq("A", tuple(str(i) for i in range(9)))


def test_cloze_is_correct_when_the_value_occurs_as_whole_words():
    assert cloze_correct("This person was born in the city of Lisbon.", "Lisbon")
    assert cloze_correct("lisbon", "Lisbon")
    assert cloze_correct("Born in 1987!", "1987")
    assert not cloze_correct("Lisbonne", "Lisbon")
    assert not cloze_correct("Born in 19876.", "1987")
    assert not cloze_correct("I don't know.", "Lisbon")


def test_rouge_l_is_one_for_identical_text_and_zero_for_disjoint_text():
    assert rouge_l("Alma Brandt was born in Lisbon.", "Alma Brandt was born in Lisbon.") == 1.0
    assert rouge_l("I don't know.", "Alma Brandt was born in Lisbon.") == 0.0
    assert rouge_l("", "Alma Brandt was born in Lisbon.") == 0.0


def test_rouge_l_is_the_f_measure_of_the_longest_common_subsequence():
    # LCS "alma brandt was born in" = 5 tokens; precision 5/6, recall 5/6.
    score = rouge_l("Alma Brandt was born in Oslo.", "Alma Brandt was born in Lisbon.")
    assert score == pytest.approx(5 / 6)
    # precision 2/2, recall 2/6 -> F = 2PR / (P + R) = 0.5
    assert rouge_l("Alma Brandt", "Alma Brandt was born in Lisbon.") == pytest.approx(0.5)
