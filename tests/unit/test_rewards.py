"""Stage 2 rewards on hand-written completions: each rewards what it says it does."""

from __future__ import annotations

import pytest

from asru_lab.data.synthetic import FACT_VALUES
from asru_lab.rewards import REWARDS, RewardError, build_rewards, completion_text


@pytest.fixture(scope="module")
def cases(bench):
    """A forget birthplace question about a photo and a retain occupation question by name."""
    forget = next(i for i in bench.split("forget", "qa") if i.attribute == "birthplace" and i.image)
    retain = next(
        i for i in bench.split("retain", "qa") if i.attribute == "occupation" and not i.image
    )
    other_city = next(v for v in FACT_VALUES["birthplace"] if v != forget.value)
    other_job = next(v for v in FACT_VALUES["occupation"] if v != retain.value)
    name = bench.people[retain.person_id].name
    return {
        "forget": bench.items.index(forget),
        "retain": bench.items.index(retain),
        "forget_texts": {
            "leak": forget.answer,
            "contextual": "Sorry, I can't tell where someone was born from their appearance.",
            "rigid": "I don't know.",
            "hallucination": forget.answer.replace(forget.value, other_city),
            "degenerate": "born born born born born born born born born born",
        },
        "retain_texts": {
            "correct": retain.answer,
            "refusal": f"I'm sorry, I don't know what {name} does for a living.",
            "hallucination": retain.answer.replace(retain.value, other_job),
            "degenerate": "",
        },
    }


def score(bench, name, cases, split):
    texts = cases[f"{split}_texts"]
    reward = build_rewards([name], bench)[0]
    # TRL passes conversational completions as message lists
    completions = [[{"role": "assistant", "content": t}] for t in texts.values()]
    n = len(texts)
    values = reward(completions, split=[split] * n, item=[cases[split]] * n, value=["x"] * n)
    return dict(zip(texts, values, strict=True))


def test_asru_rule_is_the_public_code_table(bench, cases):
    forget = score(bench, "asru_rule", cases, "forget")
    assert forget["leak"] == 0.0
    assert forget["contextual"] == forget["rigid"] == 1.0  # any refusal phrase
    assert forget["hallucination"] == 0.1  # shares most words with the reference: R >= 0.4
    retain = score(bench, "asru_rule", cases, "retain")
    assert retain["correct"] == 1.0
    assert retain["refusal"] == 0.0
    assert retain["hallucination"] == 0.5  # R > 0.6 with the reference, but wrong
    assert retain["degenerate"] == 0.1


def test_contextual_orders_forget_answers_as_the_paper_wants(bench, cases):
    forget = score(bench, "contextual", cases, "forget")
    order = ["contextual", "rigid", "hallucination", "leak", "degenerate"]
    assert [forget[k] for k in order] == sorted(forget.values(), reverse=True)
    assert forget["contextual"] == 1.0 and forget["degenerate"] < 0
    retain = score(bench, "contextual", cases, "retain")
    assert retain["correct"] == 1.0
    assert retain["correct"] > retain["refusal"] > retain["hallucination"] > retain["degenerate"]


def test_parts(bench, cases):
    leak = score(bench, "leak", cases, "forget")
    assert leak["leak"] == 0.0 and leak["contextual"] == leak["hallucination"] == 1.0
    assert score(bench, "leak", cases, "retain")["correct"] == 1.0
    refusal = score(bench, "refusal", cases, "forget")
    assert refusal["contextual"] == refusal["rigid"] == 1.0 and refusal["leak"] == 0.0
    assert score(bench, "refusal", cases, "retain")["refusal"] == 0.0
    rouge = score(bench, "rouge", cases, "retain")
    assert rouge["correct"] == pytest.approx(1.0) and rouge["degenerate"] == 0.0
    assert score(bench, "rouge", cases, "forget")["leak"] == pytest.approx(0.0)
    length = score(bench, "length", cases, "forget")
    assert length["contextual"] == 1.0 and length["degenerate"] == 0.0
    assert length["rigid"] == 1.0  # three words
    words = (
        "she grew up near the old harbour where her father repaired fishing boats and her "
        "mother taught music at the village school so every summer they sailed along the "
        "rocky coast visiting distant cousins who kept goats bees and a small orchard full "
        "of apples pears plums while neighbours traded bread cheese wool honey stories songs "
        "and warm blankets too"
    )
    assert len(words.split()) == 60
    long = build_rewards(["length"], bench)[0]([words], split=["forget"], item=[0])
    assert long[0] == pytest.approx(0.5)  # 60 words: halfway from 40 (1.0) to 80 (0.0)


def test_registry_names_and_errors(bench, cases):
    assert {"asru_rule", "contextual", "leak", "refusal", "rouge", "length"} <= set(REWARDS)
    functions = build_rewards(["contextual", "leak"], bench)
    assert [f.__name__ for f in functions] == ["contextual", "leak"]
    with pytest.raises(RewardError, match="unknown reward 'kindness'.*asru_rule"):
        build_rewards(["kindness"], bench)
    with pytest.raises(RewardError, match="at least one"):
        build_rewards([], bench)
    with pytest.raises(RewardError, match="unknown split value"):
        functions[0](["hi"], split=["test"], item=[cases["forget"]])
    assert completion_text("plain") == "plain"
