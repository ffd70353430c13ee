"""The universal soft-prompt attack and multiple choice by option likelihood on the embedded
model: a prompt fitted on one half of the forget people and scored on the other; option scores
that are the answers' log-probabilities, forced through `generate`."""

from __future__ import annotations

import pytest
import torch

import asru_lab as al
from asru_lab.auditing import AuditConfig, AuditError, audit
from asru_lab.auditing.choice import mcq_items, option_answers, option_scores
from asru_lab.auditing.report import void_attacks
from asru_lab.auditing.soft_prompt import marker, prompted, soft_prompted
from asru_lab.auditing.stats import choice_table
from asru_lab.evaluation.probability import answer_logprobs
from asru_lab.validation import ConfigError

SMALL = AuditConfig(
    attacks=("soft_prompt", "mcq_likelihood"),
    max_items=6,
    soft_prompt_steps=6,
    soft_prompt_tokens=4,
    progress=False,
)


@pytest.fixture(scope="module")
def report(lm, bench):
    return audit(lm, bench, config=SMALL)


def test_the_prompt_is_fitted_on_one_half_and_scored_on_the_other(report):
    block = report.results["soft_prompt"]
    taught, held = set(block["taught_people"]), set(block["measured_people"])
    assert taught and held and taught.isdisjoint(held)
    measured = [r for r in report.records if r["attack"] == "soft_prompt" and "leak" in r]
    fitted = [r for r in report.records if r["attack"] == "soft_prompt_fit"]
    assert measured and fitted
    assert {r["person_id"] for r in measured if r["split"] != "retain"} <= held
    assert {r["person_id"] for r in fitted} <= taught
    assert all(r["half"] == "taught" for r in fitted)  # counted nowhere
    # the records name the questions as every other attack does: the marker is not in them
    pad = "<|endoftext|>"
    assert all(pad not in r["question"] for r in measured + fitted)
    assert block["n_forget"] + block.get("n_test", 0) == sum(
        r["split"] != "retain" for r in measured
    )
    # six steps at the default rate already lower the taught half's answer loss (the control)
    assert block["fit_loss_after"] < block["fit_loss_before"]
    assert block["tokens"] == 4 and len(block["losses"]) >= 1
    # the held-out half is in the leak table, the fitted half is not
    table = report.results["leaks"]["soft_prompt"]
    assert table["forget"]["n"] == block["n_forget"]
    assert "soft_prompt_fit" not in report.results["leaks"]


def test_the_hook_puts_the_vectors_at_the_marker_run_only(lm):
    n = 3
    vectors = torch.randn(n, lm.model.config.text_config.hidden_size)
    text = marker(lm) * n + "Who is this?"
    ids = lm.tokenizer([text], return_tensors="pt")["input_ids"]
    pad = lm.tokenizer.pad_token_id
    padded = torch.cat([torch.full((1, 2), pad), ids], dim=1)  # left padding comes first
    embed = lm.adapter.embed_tokens(lm.model)
    plain = embed(padded)
    with soft_prompted(lm, vectors):
        out = embed(padded)
        one_step = embed(padded[:, -1:])  # a decoding step is left alone
    at = (padded[0] == pad).nonzero().flatten()[-n:]
    assert torch.allclose(out[0, at], vectors.to(out.dtype))
    others = [k for k in range(padded.shape[1]) if k not in at.tolist()]
    assert torch.equal(out[0, others], plain[0, others])
    assert torch.equal(one_step, plain[:, -1:])
    with pytest.raises(AuditError, match="pad tokens where the soft prompt needs"):
        with soft_prompted(lm, torch.zeros(8, vectors.shape[1])):
            embed(padded)


def test_a_prompt_that_never_trained_is_void():
    results = {
        "none": {"retain_recall": 1.0},
        "soft_prompt": {"fit_loss_before": 1.0, "fit_loss_after": 1.0, "retain_recall": 1.0},
    }
    assert "never trained" in void_attacks(results)["soft_prompt"]
    results["soft_prompt"].update(fit_loss_after=0.5, retain_recall=0.1)
    assert "broke the model" in void_attacks(results)["soft_prompt"]
    results["soft_prompt"]["retain_recall"] = 0.9
    assert "soft_prompt" not in void_attacks(results)


@pytest.mark.parametrize(
    "field, value", [("soft_prompt_tokens", 0), ("soft_prompt_steps", 0), ("soft_prompt_lr", 0.0)]
)
def test_soft_prompt_settings_out_of_range_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        AuditConfig(**{field: value})


# --- multiple choice by option likelihood -------------------------------------------------


def test_options_are_scored_as_the_answer_says_them(bench):
    item = bench.questions("forget", "mcq")[0]
    answers = option_answers(item)
    assert len(answers) == len(item.options)
    assert answers[item.correct] == item.answer
    for option, said in zip(item.options, answers, strict=True):
        assert option in said
    letter = type(item)(**{**item.__dict__, "answer": "B", "value": "Zed"})
    assert option_answers(letter) == list(item.options)
    # the fact is swapped where it stands as a whole word, not inside another one
    cat = type(item)(
        **{**item.__dict__, "answer": "Catherine has a cat.", "value": "cat", "options": ("dog",)}
    )
    assert option_answers(cat) == ["Catherine has a dog."]


def test_forced_decoding_scores_equal_the_teacher_forced_log_probabilities(lm, bench):
    config = AuditConfig(max_items=3, progress=False)
    items = mcq_items(bench, "forget", None, config)
    scores = option_scores(lm, bench, items, config)
    for item, mine in zip(items, scores, strict=True):
        answers = option_answers(item)
        forced = answer_logprobs(lm, bench, [item] * len(answers), answers, batch_size=8)
        assert mine == pytest.approx([float(lp.sum()) for lp in forced], abs=2e-3)


def test_the_vanilla_model_ranks_the_right_option_first_and_records_stay_out_of_the_leaks(
    report,
):
    none = report.results["none"]
    assert none["forget_mcq_acc"] == 1.0 and none["n_forget_mcq"] == 6
    table = report.results["mcq_likelihood"]
    assert table["none"]["forget"]["acc"] == 1.0
    assert table["none"]["forget"]["chance"] == pytest.approx(0.25)
    assert table["none"]["forget"]["lo"] < 1.0  # six items: a wide interval
    # scored under the soft prompt too, on the held-out half only
    held = set(report.results["soft_prompt"]["measured_people"])
    under = [r for r in report.records if r["attack"] == "soft_prompt" and r.get("task") == "mcq"]
    assert under and {r["person_id"] for r in under} <= held
    assert "soft_prompt" in table
    # multiple-choice records are no answers: the leak tables do not count them
    assert report.results["leaks"]["none"]["forget"]["n"] == none["n_forget"]
    assert report.summary["mcq_acc"] == 1.0


def test_prompted_questions_keep_the_items(bench):
    items = bench.questions("forget", "qa")[:2]
    shown = prompted(items, "<|endoftext|>" * 2)
    assert [s.question for s in shown] == ["<|endoftext|>" * 2 + i.question for i in items]
    assert [s.answer for s in shown] == [i.answer for i in items]


def test_multiple_choice_is_scored_under_the_attacks_that_change_the_model(lm, bench):
    config = AuditConfig(
        attacks=("ablation", "quantize", "relearn", "mcq_likelihood"),
        max_items=4,
        ablation_top=1,
        ablation_layer_stride=3,
        quant_bits=(4,),
        relearn_steps=(0, 2),
        relearn_modes=("lora",),
        relearn_data=("forget",),
        relearn_checkpointing=False,
        progress=False,
    )
    report = audit(al.load_oracle(), bench, reference=lm, config=config)
    table = report.results["mcq_likelihood"]
    assert {
        "none",
        "ablation_per_layer",
        "ablation_everywhere",
        "ablation_orthogonalized",
        "quantize_int4",
    } <= set(table)
    held = set(report.results["ablation"]["per_layer"]["search"]["held_out_people"])
    ablated = [
        r
        for r in report.records
        if r.get("task") == "mcq"
        and r["attack"].startswith("ablation")
        and r.get("half") != "taught"
    ]  # (the orthogonalised copy's relearning also scores its taught half, counted nowhere)
    assert ablated and {r["person_id"] for r in ablated} <= held
    # relearning scores both halves at its last k; only the held-out half counts
    point = report.results["relearn"]["settings"][0]["curves"]["forget"][-1]
    assert "forget_mcq_acc" in point and "taught_mcq_acc" in point
    relearnt = [r for r in report.records if r.get("task") == "mcq" and "relearn" in r["attack"]]
    taught = [r for r in relearnt if r["half"] == "taught"]
    assert taught and len(relearnt) > len(taught)
    # two steps do not relearn the taught half: the setting is void, its scores count nowhere
    assert "relearn_forget_lora_lr0.001" in report.summary["void_attacks"]
    assert "relearn_forget_lora_lr0.001_k2" not in table
    unvoided = choice_table(report.records, {})["relearn_forget_lora_lr0.001_k2"]
    assert unvoided["forget"]["n"] == point["n_forget_mcq"]
    assert report.results["quantize"]["int4"]["n_forget_mcq"] == 4


def test_a_tokenizer_without_a_separate_pad_token_skips_the_attack_and_keeps_the_rest(lm, bench):
    tok = lm.tokenizer
    pad = tok.pad_token
    tok.pad_token = tok.eos_token  # as many tokenizers have it
    try:
        assert tok.pad_token_id == tok.eos_token_id and marker(lm) is None
        config = AuditConfig(attacks=("soft_prompt",), max_items=2, progress=False)
        report = audit(lm, bench, config=config)
    finally:
        tok.pad_token = pad
    assert tok.pad_token_id != tok.eos_token_id
    assert "pad token" in report.results["soft_prompt"]["skipped"]
    assert report.results["none"]["n_forget"] == 2 and report.summary["soft_prompt_leak"] is None
