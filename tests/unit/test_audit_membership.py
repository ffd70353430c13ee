"""Membership inference's scores: Min-K%++ and zlib by their definitions on made-up
distributions, the fact's token span inside an answer, privleak, the summary's fact-token AUC
and the attack's docstring."""

from __future__ import annotations

import math
import zlib
from dataclasses import replace

import pytest
import torch

from asru_lab.auditing import summarize
from asru_lab.auditing.readout import (
    SCORES,
    fact_spans,
    item_scores,
    membership,
    privleak,
    text_scores,
)
from asru_lab.data.schema import QAItem
from asru_lab.evaluation.probability import AnswerTokenStats, next_token_stats
from asru_lab.training import Example, answer_tokens

# two positions over a vocabulary of three; the answer's tokens are 0 then 2
PROBS = [[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]]
TARGETS = [0, 2]
TEXT_ITEM = QAItem("forget", "qa", "k000", None, "Where was Alma Aldous born?", "", "", "")


def _by_hand(probs: list[float], target: int) -> tuple[float, float, float]:
    """(log p(x), mu, sigma) as the Min-K%++ paper writes them: mu = sum p log p,
    sigma^2 = sum p (log p)^2 - mu^2."""
    mu = sum(p * math.log(p) for p in probs)
    sigma = math.sqrt(sum(p * math.log(p) ** 2 for p in probs) - mu**2)
    return math.log(probs[target]), mu, sigma


def test_token_stats_are_the_next_token_distributions_moments():
    logits = torch.tensor(PROBS).log() + 3.0  # any shift: the softmax is the same
    stats = next_token_stats(logits, torch.tensor(TARGETS))
    for t, (probs, target) in enumerate(zip(PROBS, TARGETS, strict=True)):
        logp, mu, sigma = _by_hand(probs, target)
        assert float(stats.logprob[t]) == pytest.approx(logp, abs=1e-6)
        assert float(stats.mean[t]) == pytest.approx(mu, abs=1e-6)
        assert float(stats.std[t]) == pytest.approx(sigma, abs=1e-6)


def test_minkpp_is_minus_the_mean_of_the_lowest_calibrated_token_scores():
    stats = next_token_stats(torch.tensor(PROBS).log(), torch.tensor(TARGETS))
    z = [(logp - mu) / sigma for logp, mu, sigma in map(_by_hand, PROBS, TARGETS)]
    # token 0 is likelier than average at its position (z > 0), token 2 too, by less
    assert z[0] > z[1] > 0
    assert text_scores(stats, "ab", 0.5)["minkpp"] == pytest.approx(-min(z), abs=1e-6)
    assert text_scores(stats, "ab", 1.0)["minkpp"] == pytest.approx(-sum(z) / 2, abs=1e-6)
    # min-k% ranks the raw log-probs: the lowest is log 0.5, not the 0.7 token
    assert text_scores(stats, "ab", 0.5)["mink"] == pytest.approx(-math.log(0.5), abs=1e-6)


def test_minkpp_of_a_certain_distribution_is_finite():
    logits = torch.tensor([[0.0, -1e4, -1e4]], dtype=torch.float64)
    stats = next_token_stats(logits, torch.tensor([0]))
    assert float(stats.std[0]) == 0.0
    assert math.isfinite(text_scores(stats, "a", 0.2)["minkpp"])


def test_zlib_divides_the_loss_by_the_compressed_length_of_the_text_scored():
    stats = AnswerTokenStats(
        torch.tensor([-0.5, -2.0, -0.1, -1.0], dtype=torch.float64),
        torch.full((4,), -1.0, dtype=torch.float64),
        torch.ones(4, dtype=torch.float64),
    )
    answer = "Alma Aldous was born in Lisbon."
    scores = text_scores(stats, answer, 0.2)
    assert scores["loss"] == pytest.approx(0.9)
    assert scores["zlib"] == pytest.approx(0.9 / len(zlib.compress(answer.encode("utf-8"))))
    # over the fact's tokens alone the text is the value as the answer spells it
    item = _item(answer, "lisbon")
    fact = item_scores(stats, item, (1, 3), 0.2)
    assert fact["fact_loss"] == pytest.approx(1.05)
    assert fact["fact_zlib"] == pytest.approx(1.05 / len(zlib.compress(b"Lisbon")))
    assert item_scores(stats, item, None, 0.2)["fact_zlib"] is None


@pytest.fixture(scope="module")
def forget_item(bench) -> QAItem:
    return bench.questions("forget", "qa", image_only=True)[0]


def _item(answer: str, value: str, base: QAItem = TEXT_ITEM) -> QAItem:
    return replace(base, answer=answer, value=value)


@pytest.mark.parametrize(
    ("answer", "value", "spelled"),
    [
        ("Alma Aldous was born in Lisbon.", "Lisbon", "Lisbon"),  # at the end, then a stop
        ("Alma Aldous was born in Lisbon", "lisbon", "Lisbon"),  # the very last tokens
        ("Lisbon is where Alma Aldous was born.", "Lisbon", "Lisbon"),  # the first tokens
        ("Alma Aldous was born in Lisbon in 1980.", "Lisbon", "Lisbon"),  # mid-sentence
        ("This is Alma Aldous.", "Alma Aldous", "Alma Aldous"),  # two words
        ("Alma Aldous was born in Zqxvarnholm.", "Zqxvarnholm", "Zqxvarnholm"),  # many tokens
    ],
)
def test_fact_span_is_exactly_the_values_tokens(lm, forget_item, answer, value, spelled):
    tok = lm.tokenizer
    for base in (forget_item, replace(forget_item, image=None)):  # with and without a portrait
        item = _item(answer, value, base)
        ((first, end),) = fact_spans(lm, [item])
        (tail,), _ = answer_tokens(lm, [Example(item.image, item.question, answer)])
        scored = tail[:-1]  # the answer's tokens as answer_logprobs scores them, no eos
        assert 0 <= first < end <= len(scored)
        assert tok.decode(scored[first:end]).strip() == spelled
        assert spelled not in tok.decode(scored[:first]) + tok.decode(scored[end:])
    if value == "Zqxvarnholm":
        assert end - first > 1


def test_an_answer_without_its_value_has_no_fact_span(lm, forget_item):
    assert fact_spans(lm, [_item("I do not know who this is.", "Lisbon", forget_item)]) == [None]


def test_privleak_is_zero_as_the_oracle_and_negative_when_more_recognisable():
    assert privleak(0.6, 0.6) == pytest.approx(0.0)
    assert privleak(1.0, 0.6) == pytest.approx(-100.0)
    assert privleak(0.8, 0.6) == pytest.approx(-50.0)
    assert privleak(0.9, 1.0) is None and privleak(None, 0.5) is None


def test_summary_reports_the_fact_token_auc_beside_the_whole_answers():
    summary = summarize({"membership": {"loss_auc": 1.0, "fact_loss_auc": 0.62}})
    assert summary["mia_auc"] == 1.0
    assert summary["mia_fact_auc"] == 0.62


def test_membership_docstring_describes_every_score():
    doc = membership.__doc__
    for kind in (*SCORES, "reference"):
        assert f"- `{kind}`:" in doc, kind
    for key in ("loss_auc", "fact_loss_auc", "oracle_loss_auc", "loss_privleak"):
        assert key in doc
    for words in ("Min-K%++", "mu_t", "sigma_t", "zlib-compressed", "reference_skipped"):
        assert words in doc
