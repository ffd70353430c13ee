"""The audit's readouts: where a prompt is read (the image's tokens, the last token of the name
in a question by name, the prompt's last token, the fact's position) on a tiny model's
left-padded prompts, and the pool logit lens and the linear probes in an audit of the embedded
model, beside the reference's and the oracle's."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from PIL import Image

import asru_lab as al
from asru_lab.auditing import AuditConfig, AuditError, AuditReport, audit
from asru_lab.auditing.measure import READ_POSITIONS, position_states, read_offsets
from asru_lab.auditing.readout import ENTITY_POSITIONS
from asru_lab.data.schema import Benchmark, Person, QAItem
from asru_lab.generation import build_prompt, encode_prefilled, fact_prefix
from tests.tiny_models import make_tiny_qwen3_vl

NAME = "Alma Aldous"
FACTS = ("birthplace", "occupation", "birth_year", "hobby", "pet")
SMALL = AuditConfig(max_items=4, attacks=("linear_probe", "logit_lens"), progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> al.LoadedModel:
    return al.load_model(make_tiny_qwen3_vl(tmp_path_factory.mktemp("tiny") / "model"))


def _tiny_bench() -> Benchmark:
    person = Person("p0", NAME, "forget", {"birthplace": "Lisbon"})
    items = [
        QAItem("forget", "qa", "p0", "p0.png", "Who is this?", f"This is {NAME}.", "name", NAME),
        QAItem(
            "forget",
            "qa",
            "p0",
            None,
            f"Where was {NAME} born?",
            f"{NAME} was born in Lisbon.",
            "birthplace",
            "Lisbon",
        ),
    ]
    white = Image.new("RGB", (32, 32), "white")
    return Benchmark([person], items, name="tiny", image_loader=lambda _: white)


def test_each_position_is_read_where_it_says_on_left_padded_prompts(tiny):
    bench = _tiny_bench()
    items = bench.items
    prefixes = [fact_prefix(i.answer, i.value)[0] for i in items]
    inputs = encode_prefilled(tiny, bench.images(items), [i.question for i in items], prefixes)
    ids, width, tok = inputs["input_ids"], inputs["input_ids"].shape[1], tiny.tokenizer
    assert (inputs["attention_mask"][0] == 0).sum() > 0  # the image question is padded

    def text_through(row: int, offset: int) -> str:
        start = int((inputs["attention_mask"][row] == 0).sum())
        return tok.decode(ids[row, start : width + offset + 1])

    shown, named = (
        read_offsets(tiny, build_prompt(tiny, i.question, i.has_image), p, NAME)
        for i, p in zip(items, prefixes, strict=True)
    )
    assert "name" not in shown  # an image question does not name the person
    assert len(tok(" Aldous", add_special_tokens=False)["input_ids"]) > 1  # several pieces
    assert text_through(1, named["name"]).endswith(f"Where was {NAME}")
    for row, at in enumerate((shown, named)):
        assert text_through(row, at["last_prompt"]).endswith("<|im_start|>assistant\n")
        assert text_through(row, at["fact"]).endswith(f"assistant\n{prefixes[row]}")
    image = (ids[0] == tiny.adapter.image_token_id(tiny.model)).nonzero().flatten()
    span = tok.convert_ids_to_tokens(ids[0, image[0] - 1 : image[-1] + 2].tolist())
    assert (span[0], span[-1]) == ("<|vision_start|>", "<|vision_end|>")
    assert set(span[1:-1]) == {"<|image_pad|>"} and len(span) == len(image) + 2

    together = position_states(tiny, bench, items, prefixes=prefixes, batch_size=2)
    rows = {where: together[where][0].tolist() for where in READ_POSITIONS}
    assert rows == {"fact": [0, 1], "image": [0], "name": [1], "last_prompt": [0, 1]}
    for where, (_, states) in together.items():
        assert states.shape == (len(rows[where]), tiny.num_layers, tiny.hidden_size)
    # each prompt read alone, unpadded, gives the same states
    for k in range(2):
        alone = position_states(
            tiny, bench, items[k : k + 1], prefixes=prefixes[k : k + 1], batch_size=1
        )
        for where, (found, states) in alone.items():
            if len(found):
                batched = together[where][1][rows[where].index(k)]
                assert torch.allclose(states[0], batched, atol=1e-4), where
    # the prompt's last token is where the answer starts: as if nothing were prefilled
    plain = position_states(tiny, bench, items, batch_size=2)
    assert not len(plain["fact"][0])
    assert torch.allclose(plain["last_prompt"][1], together["last_prompt"][1], atol=1e-4)


@pytest.fixture(scope="module")
def report(lm, bench) -> AuditReport:
    return audit(lm, bench, reference=lm, oracle=al.load_oracle(), config=SMALL)


def test_the_readouts_report_every_position_beside_the_floor_and_the_ceiling(report):
    lens, probe = report.results["logit_lens"], report.results["linear_probe"]
    assert set(lens["pools"]) == set(FACTS)
    # every value of the synthetic world is its own first token: the pool lens is exact
    assert all(p["candidates"] == p["values"] >= 16 for p in lens["pools"].values())
    for split in ("forget", "test"):
        assert set(lens[split]["pool"]) == set(READ_POSITIONS)
        fact = lens[split]["pool"]["fact"]
        assert fact["n"] == lens[split]["n"] > 0
        assert len(fact["top1_per_layer"]) == len(fact["mrr_per_layer"]) == 6
        assert 0 < fact["chance_top1"] < fact["chance_mrr"] < 1
        # the reference is the audited model itself here: the same numbers
        assert lens["reference"][split] == lens[split]
        assert set(lens["oracle"][split]["pool"]) == set(READ_POSITIONS)
    assert set(probe["positions"]) == set(ENTITY_POSITIONS)
    for block in probe["positions"].values():
        assert set(block["accuracy_by_attribute"]) == set(FACTS)
        assert len(block["accuracy"]) == len(block["oracle_accuracy"]) == 6
        assert block["reference_accuracy"] == block["accuracy"]
    assert probe["best"] == max(b["best"] for b in probe["positions"].values())
    s = report.summary
    assert s["lens_top1_fact"] >= 0.75  # the vanilla model says its facts
    for key in ("lens_mrr_fact", "lens_top1_chance", "probe_acc_best", "probe_acc_chance"):
        assert s[key] is not None
    for where in ENTITY_POSITIONS:
        assert s[f"probe_acc_{where}"] is not None and s[f"lens_top1_{where}"] is not None
    records = [r for r in report.records if r["attack"] == "logit_lens"]
    assert len(records) == lens["forget"]["n"] + lens["test"]["n"]
    assert all(len(r["pool_ranks"]) == len(r["ranks"]) == 6 for r in records)


def test_one_attribute_can_be_probed_alone_and_an_unknown_one_is_refused_first(lm, bench):
    config = replace(SMALL, attacks=("linear_probe",), probe_attribute="pet")
    alone = audit(lm, bench, config=config)
    assert alone.results["linear_probe"]["attributes"] == ["pet"]
    assert set(alone.results["linear_probe"]["positions"]["image"]["accuracy_by_attribute"]) == {
        "pet"
    }
    with pytest.raises(AuditError, match="'shoe'.*birthplace"):
        audit(lm, bench, config=replace(config, probe_attribute="shoe"))
