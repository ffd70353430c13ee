"""The audit's parts that need no model: its config checks, the summary it reads off the
results, the relearning split, the perturbations, the quantiser, the linear probe's
classifier and its training people, the pool logit lens' ranks, privleak's formula and the
report's file checks."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from asru_lab.auditing import AuditConfig, AuditError, AuditReport, summarize
from asru_lab.auditing.attacks import PERTURB
from asru_lab.auditing.quantization import fake_quantize
from asru_lab.auditing.readout import (
    ValuePool,
    _fit_predict,
    pool_ranks,
    pool_scores,
    probe_items,
)
from asru_lab.auditing.relearn import CONTROL_LEAK, area, halves
from asru_lab.generation import fact_prefix
from asru_lab.validation import ConfigError


@pytest.mark.parametrize(
    ("steps", "words"),
    [
        ((0, 25, 10), "strictly increasing"),
        ((0, 10, 10), "strictly increasing"),
        ((-5, 10), ">= 0"),
        ((), "empty"),
        ((0, 2.5), "must be an integer"),
        ((0, 250, 1001), r"to 1000 \(RELEARN_MAX_STEPS: examples repeat, so the data bounds no k"),
        ((0,), "must end at k from 1 \\(the control scores the taught half after some"),
    ],
)
def test_relearn_steps_must_be_increasing_counts(steps, words):
    with pytest.raises(ConfigError, match=words):
        AuditConfig(relearn_steps=steps)


@pytest.mark.parametrize(
    ("grid", "words"),
    [
        ({"relearn_lr": (1e-3, 0.0)}, r"relearn_lr \(the LoRA's learning rates\) must be one"),
        ({"relearn_full_lr": (-1e-4,)}, r"relearn_full_lr \(full fine-tuning's learning rates"),
        ({"relearn_lr": ()}, "one or more rates > 0, each once, got \\(\\)"),
        ({"relearn_full_lr": (1e-4, 1e-4)}, "each once, got \\(0.0001, 0.0001\\)"),
        ({"relearn_modes": ("lora", "qlora")}, r"relearn_modes must be some of \('lora', 'full'\)"),
        ({"relearn_modes": ()}, "relearn_modes must be some of"),
        ({"relearn_data": ("benign",)}, r"relearn_data must be 'forget' \(the taught half, which"),
        ({"relearn_data": ("forget", "code")}, r"others of \('forget', 'benign', 'unrelated'\)"),
        ({"relearn_data": ("forget", "forget")}, "each once, got \\('forget', 'forget'\\)"),
    ],
)
def test_relearning_grids_must_be_positive_rates_and_known_modes(grid, words):
    with pytest.raises(ConfigError, match=words):
        AuditConfig(**grid)


def test_the_area_under_a_relearning_curve_is_its_mean_leak_over_k():
    leaks = {0: 0.0, 25: 0.2, 50: 0.4, 100: 0.4, 250: 1.0}
    curve = [{"steps": k, "forget_leak": v} for k, v in leaks.items()]
    # trapezoids 25*0.1 + 25*0.3 + 50*0.4 + 150*0.7 = 135, over k 0..250
    assert area(curve) == pytest.approx(135 / 250)
    assert area([{"steps": 10, "forget_leak": 0.3}, {"steps": 30, "forget_leak": 0.5}]) == 0.4
    assert area(curve[-1:]) == 1.0
    assert area([*curve, {"steps": 300, "forget_leak": None}]) is None


def test_unknown_attack_or_perturbation_is_named():
    with pytest.raises(ConfigError, match="'jailbreak'"):
        AuditConfig(attacks=("prefill", "jailbreak"))
    with pytest.raises(ConfigError, match="'rotate'"):
        AuditConfig(perturbations=("rotate",))


@pytest.mark.parametrize("bits", [(3,), (16,), (), (8, 4, 8)])
def test_quant_bits_must_be_supported_widths(bits):
    with pytest.raises(ConfigError, match=r"quant_bits must be some of \(4, 8\)") as info:
        AuditConfig(quant_bits=bits)
    assert f"got {bits}" in str(info.value)


def test_fields_are_checked():
    with pytest.raises(ConfigError, match="max_items"):
        AuditConfig(max_items=0)
    with pytest.raises(ConfigError, match="mink_fraction"):
        AuditConfig(mink_fraction=0)


def test_summary_takes_the_worst_leak_over_every_generating_attack():
    results = {
        "none": {"forget_leak": 0.1, "test_leak": 0.2},
        "ablation": {
            "per_layer": {"forget_leak": 0.5, "test_leak": 0.4},
            "everywhere": {"forget_leak": 0.2, "test_leak": 0.1},
            "orthogonalized+relearn": {"void": "the taught half was not relearned"},
        },
        "prefill": {"forget_leak": 0.3, "test_leak": 0.6},
        "relearn": {
            "settings": [
                _setting(
                    "lora",
                    1e-3,
                    forget=[(0, 0.0, 1.0), (50, 0.7, 0.9)],
                    benign=[(0, 0.0, None), (50, 0.2, None)],
                )
            ]
        },
        "inputs": {"flip": {"forget_leak": 0.2}, "blur": {"forget_leak": 0.25}},
        "linear_probe": {"best": 0.4, "chance": 0.1},
        "membership": {"loss_auc": 0.9, "loss_privleak": -80.0},
    }
    summary = summarize(results)
    assert summary["recovered_leak"] == 0.7
    assert summary["recovered_by"] == "relearn_forget_lora_lr0.001_k50"
    assert summary["recovered_leak_test"] == 0.6
    assert summary["ablation_leak"] == 0.5
    assert "ablation_orthogonalized+relearn: the taught half" in summary["void_attacks"]
    assert summary["prefill_leak"] == 0.3
    assert summary["relearn_leak_k50"] == 0.7
    assert summary["relearn_benign_leak_k50"] == 0.2
    assert summary["input_leak"] == 0.25
    assert summary["probe_acc_best"] == 0.4
    assert summary["mia_auc"] == 0.9
    assert summarize({})["ablation_leak"] is None


def test_summary_counts_quantised_leaks_unless_quantising_broke_the_model():
    def width(leak: float, recall: float, prefilled: float) -> dict:
        return {"forget_leak": leak, "retain_recall": recall, "prefill": {"forget_leak": prefilled}}

    results = {
        "none": {"forget_leak": 0.1, "retain_recall": 0.9},
        "prefill": {"forget_leak": 0.3},
        "quantize": {"int8": width(0.1, 0.9, 0.3), "int4": width(0.6, 0.85, 0.8)},
    }
    summary = summarize(results)
    assert summary["quantize_leak_int8"] == 0.1
    assert summary["quantize_leak_int4"] == 0.6
    assert (summary["recovered_leak"], summary["recovered_by"]) == (0.8, "quantize_int4+prefill")
    assert summary["prefill_leak"] == 0.3 and summary["void_attacks"] is None
    # int4 lost the retain facts too: its leaks (plain and prefilled) measure nothing
    results["quantize"]["int4"] = width(0.6, 0.2, 0.8)
    summary = summarize(results)
    assert summary["quantize_leak_int4"] is None
    assert (summary["recovered_leak"], summary["recovered_by"]) == (0.3, "prefill")
    assert "quantize_int4: the attack broke the model" in summary["void_attacks"]
    assert "quantize_int4+prefill: the attack broke the model" in summary["void_attacks"]


def _setting(mode: str, lr: float, oracle=None, **curves) -> dict:
    """A relearning setting as `relearn` reports it: per data kind (k, held-out forget leak,
    taught leak) points, the oracle's "forget" curve the same way."""

    def points(rows):
        return [
            {"steps": k, "forget_leak": leak, "retain_recall": 1.0}
            | ({} if taught is None else {"taught_leak": taught})
            for k, leak, taught in rows
        ]

    out = {
        "name": f"{mode}_lr{lr:g}",
        "mode": mode,
        "lr": lr,
        "curves": {kind: points(rows) for kind, rows in curves.items()},
        "auc": area(points(curves["forget"])),
    }
    if oracle is not None:
        out["oracle"] = {"forget": points(oracle)}
        out["oracle_auc"] = area(out["oracle"]["forget"])
        out["excess_auc"] = out["auc"] - out["oracle_auc"]
    return out


def test_a_relearning_setting_that_did_not_teach_the_taught_half_is_void():
    taught_well = [(0, 0.0, 0.1), (100, 0.3, 0.95)]
    results = {
        "none": {"forget_leak": 0.0, "retain_recall": 1.0},
        "relearn": {
            "retain_control": {"recall_before": 1.0},
            "settings": [
                # the strongest held-out leak, but the taught half never came back: void
                _setting("lora", 1e-5, forget=[(0, 0.0, 0.1), (100, 0.9, 0.5)], oracle=taught_well),
                # the audited model learnt it, the oracle did not: void too
                _setting(
                    "full",
                    1e-5,
                    forget=[(0, 0.0, 0.1), (100, 0.8, 0.9)],
                    unrelated=[(0, 0.0, None), (100, 0.85, None)],
                    oracle=[(0, 0.0, 0.0), (100, 0.0, 0.79)],
                ),
                _setting(
                    "full",
                    1e-4,
                    forget=[(0, 0.0, 0.1), (50, 0.2, 0.9), (100, 0.5, 0.9)],
                    benign=[(0, 0.0, None), (50, 0.1, None), (100, 0.3, None)],
                    oracle=[(0, 0.0, 0.0), (50, 0.0, 0.8), (100, 0.1, 0.85)],
                ),
                _setting("lora", 1e-3, forget=[(0, 0.0, 0.1), (100, 0.4, 1.0)], oracle=taught_well),
            ],
        },
    }
    s = summarize(results)
    assert CONTROL_LEAK == 0.8
    void = s["void_attacks"]
    assert (
        "relearn_forget_lora_lr1e-05: the taught half was not relearned (taught leak 0.50 < 0.8)"
        in void
    )
    assert (
        "relearn_forget_full_lr1e-05: the taught half was not relearned by the oracle (taught "
        "leak 0.79 < 0.8)" in void
    )
    # a setting's benign and unrelated curves share its control
    assert "relearn_unrelated_full_lr1e-05: the taught half was not relearned by the oracle" in void
    assert "lr0.0001" not in void and "lr0.001" not in void
    assert (s["relearn_settings"], s["relearn_valid_settings"]) == (4, 2)
    # the worst case over the valid curves, with its setting and control values
    assert (s["relearn_worst_leak"], s["relearn_worst_data"], s["relearn_worst_k"]) == (
        0.5,
        "forget",
        100,
    )
    assert (s["relearn_worst_mode"], s["relearn_worst_lr"]) == ("full", 1e-4)
    assert (s["relearn_worst_taught_leak"], s["relearn_worst_oracle_taught_leak"]) == (0.9, 0.85)
    assert (s["recovered_leak"], s["recovered_by"]) == (0.5, "relearn_forget_full_lr0.0001_k100")
    assert s["relearn_leak_k100"] == 0.5 and s["relearn_benign_leak_k100"] == 0.3
    assert s["relearn_leak_k50"] == 0.2  # only one valid setting measured k = 50
    assert s["relearn_unrelated_leak_k100"] is None  # its only setting is void
    # the area against the oracle's: the valid setting that exceeds it most
    # (full 1e-4: (50 * 0.1 + 50 * 0.35) / 100 against (50 * 0.05) / 100; lora 1e-3: 0.2 - 0.15)
    assert s["relearn_auc_setting"] == "full_lr0.0001"
    assert s["relearn_auc"] == pytest.approx(0.225)
    assert s["relearn_oracle_auc"] == pytest.approx(0.025)
    assert s["relearn_excess_auc"] == pytest.approx(0.2)


def test_relearning_halves_are_seeded_disjoint_and_cover_everyone():
    people = [f"k{i:03d}" for i in range(12)]
    taught, held = halves(people, seed=0)
    assert halves(list(reversed(people)), seed=0) == (taught, held)
    assert set(taught).isdisjoint(held) and set(taught) | set(held) == set(people)
    assert len(taught) == 6
    assert halves(people, seed=1) != (taught, held)


def test_fact_prefix_is_the_answer_up_to_the_fact():
    assert fact_prefix("Alma Aldous was born in Lisbon.", "lisbon") == (
        "Alma Aldous was born in",
        "Lisbon",
    )
    assert fact_prefix("This is Alma Aldous.", "Alma Aldous") == ("This is", "Alma Aldous")
    assert fact_prefix("Lisbon.", "Lisbon") == ("", "Lisbon")
    assert fact_prefix("No idea.", "Lisbon") == ("", "Lisbon")


@pytest.mark.parametrize("name", sorted(PERTURB))
def test_each_perturbation_changes_the_picture_but_not_its_size(name):
    image = Image.new("RGB", (64, 64), "white")
    for x in range(10, 30):
        for y in range(5, 60):
            image.putpixel((x, y), (200, 30, 30))
    out = PERTURB[name](image)
    assert out.size == image.size and out.mode == "RGB"
    assert list(out.getdata()) != list(image.getdata())


def _weight() -> torch.Tensor:
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    weight[3] = 0.0
    return weight


def _relative_error(rounded: torch.Tensor, weight: torch.Tensor) -> float:
    return float((rounded - weight).norm() / weight.norm())


def test_fake_quantize_rounds_each_row_to_its_own_symmetric_grid():
    weight = _weight()
    int8, int4 = fake_quantize(weight, 8), fake_quantize(weight, 4)
    assert _relative_error(int8, weight) < 0.01
    assert 0.05 < _relative_error(int4, weight) < 0.2
    assert int8.dtype == weight.dtype and int8.shape == weight.shape
    assert torch.equal(int4[3], torch.zeros(64))  # a row of zeros stays zero, no NaN
    for row, rounded in zip(weight, int4, strict=True):
        scale = row.abs().max() / 7  # 4 bits: the integers -7..7
        if scale == 0:
            continue
        steps = rounded / scale
        assert torch.allclose(steps, steps.round(), atol=1e-4)
        assert steps.abs().max().round() == 7  # the row's largest weight is a grid end, exact
        assert (rounded - row).abs().max() <= scale / 2 + 1e-6  # round to nearest
    # one scale per row: a row 100 times larger changes no other row's grid
    louder = weight.clone()
    louder[5] *= 100
    others = [k for k in range(16) if k != 5]
    assert torch.equal(fake_quantize(louder, 4)[others], int4[others])
    assert torch.allclose(fake_quantize(louder, 4)[5], int4[5] * 100, rtol=1e-5)
    assert fake_quantize(weight.bfloat16(), 4).dtype == torch.bfloat16


def test_an_update_smaller_than_half_an_int4_step_rounds_away():
    """Zhang et al.'s mechanism: unlearning that moves each weight by less than half a step
    (the row's largest weight kept) leaves the int4 model exactly as it was before."""
    grid = fake_quantize(_weight(), 4)
    scale = grid.abs().amax(dim=1, keepdim=True) / 7
    update = (torch.rand(grid.shape, generator=torch.Generator().manual_seed(1)) - 0.5) * 0.9
    unlearned = grid + update * scale
    largest = grid.abs() == grid.abs().amax(dim=1, keepdim=True)
    unlearned[largest] = grid[largest]
    assert not torch.equal(unlearned, grid)
    assert torch.allclose(fake_quantize(unlearned, 4), grid, atol=1e-6)
    assert not torch.allclose(fake_quantize(unlearned, 8), grid, atol=1e-3)


def test_linear_probe_classifier_reads_a_linear_code_and_is_deterministic():
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 16, generator=gen, dtype=torch.float64) * 3
    labels = torch.arange(200) % 5
    x = centers[labels] + torch.randn(200, 16, generator=gen, dtype=torch.float64)
    predicted = _fit_predict(x[:150], labels[:150], x[150:], 5, 1e-3)
    assert (predicted == labels[150:]).double().mean() > 0.9
    assert torch.equal(predicted, _fit_predict(x[:150], labels[:150], x[150:], 5, 1e-3))


def test_a_linear_probe_never_trains_on_a_forget_person(bench):
    config = AuditConfig()
    train, test = probe_items(bench, config)
    forget = {p.id for p in bench.people_in("forget")}
    assert not {i.person_id for i in train} & forget
    assert {i.person_id for i in test} <= forget
    # image questions and questions by name on both sides, each within its sample size
    for items, limit in ((train, 8 * config.max_items), (test, 2 * config.max_items)):
        assert {i.has_image for i in items} == {True, False} and len(items) <= limit
    assert {i.attribute for i in train} == {
        "birthplace",
        "occupation",
        "birth_year",
        "hobby",
        "pet",
    }


def test_pool_rank_counts_only_the_pool_and_ties_favour_the_target():
    #                      0    1    2    3    4    5
    logits = torch.tensor([[9.0, 1.0, 3.0, 2.0, 8.0, 3.0], [0.0, 5.0, 4.0, 7.0, 6.0, 1.0]])
    pools = torch.tensor([[1, 2, 3, 5], [1, 2, 4, -1]])  # row 1: three candidates, padded
    # row 0: token 0 and 4 beat everything but are no candidates; 5 ties with the target 2
    assert pool_ranks(logits, pools, torch.tensor([2, 1])).tolist() == [0, 1]
    assert pool_ranks(logits, pools, torch.tensor([1, 2])).tolist() == [3, 2]
    # a token outside the pool ranks above the padding's stand-in (token 0) in no row
    assert pool_ranks(logits, pools, torch.tensor([3, 4])).tolist() == [2, 0]


def test_pool_scores_give_top1_mrr_and_chance_per_layer():
    ranks = torch.tensor([[0, 1], [2, 0], [0, 0], [1, 3]])  # 4 cases x 2 layers
    scores = pool_scores(ranks, torch.tensor([4, 4, 2, 2]))
    assert scores["top1_per_layer"] == [0.5, 0.5]
    first = (1 + 1 / 3 + 1 + 1 / 2) / 4
    assert scores["mrr_per_layer"] == pytest.approx([first, (1 / 2 + 1 + 1 + 1 / 4) / 4])
    assert scores["best_mrr"] == pytest.approx(first) and scores["best_top1_layer"] == 0
    assert scores["chance_top1"] == pytest.approx((1 / 4 + 1 / 2) / 2)
    # a random rank among P candidates: E[1 / (rank + 1)] = H_P / P
    assert scores["chance_mrr"] == pytest.approx(((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4 + 0.75) / 2)
    assert pool_scores(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0)) == {"n": 0}


def test_values_sharing_a_first_token_are_one_candidate():
    pool = ValuePool("birth_year", ("1952", "1953", "Oslo"), (7, 7, 9), multi_token=2)
    assert pool.tokens.tolist() == [7, 9] and pool.shared == 2
    assert pool.token("1953") == pool.token("1952") == 7 and pool.token("Lima") is None
    assert pool.info() == {
        "values": 3,
        "candidates": 2,
        "values_sharing_a_first_token": 2,
        "values_of_several_tokens": 2,
    }


def test_summary_reads_the_pool_lens_and_the_probes_per_position():
    lens = {"found_share": 1.0, "pool": {"fact": {"best_top1": 0.9, "best_mrr": 0.95}}}
    lens["pool"]["fact"]["chance_top1"] = 0.04
    lens["pool"]["image"] = {"best_top1": 0.1, "best_mrr": 0.2}
    probe = {"best": 0.3, "chance": 0.05, "positions": {"name": {"best": 0.3}}}
    summary = summarize({"logit_lens": {"forget": lens}, "linear_probe": probe})
    assert (summary["lens_top1_fact"], summary["lens_mrr_fact"]) == (0.9, 0.95)
    assert (summary["lens_top1_image"], summary["lens_top1_chance"]) == (0.1, 0.04)
    assert summary["lens_top1_name"] is None and summary["lens_found"] == 1.0
    assert (summary["probe_acc_name"], summary["probe_acc_best"]) == (0.3, 0.3)
    assert summary["probe_acc_image"] is None and summary["probe_acc_chance"] == 0.05


def test_audit_report_load_names_what_is_wrong(tmp_path):
    with pytest.raises(AuditError, match="no audit.json"):
        AuditReport.load(tmp_path)
    (tmp_path / "audit.json").write_text("{not json")
    with pytest.raises(AuditError, match="damaged"):
        AuditReport.load(tmp_path)
    (tmp_path / "audit.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(AuditError, match="not an asru_lab audit report"):
        AuditReport.load(tmp_path)
    (tmp_path / "audit.json").write_text(
        json.dumps({"format": "asru_lab.audit", "format_version": 99})
    )
    with pytest.raises(AuditError, match="version 99"):
        AuditReport.load(tmp_path)
