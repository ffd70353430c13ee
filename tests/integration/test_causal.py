"""Causal tracing on the embedded model: two libraries give one answer, the numbers mean what
they say, the model is left as it was, and bad input is refused with a clear message."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from asru_lab import viz
from asru_lab.causal import (
    CausalTrace,
    CausalTraceConfig,
    CausalTraceError,
    _cases,
    compare_with_locate,
    select_items,
    trace_causal,
    transformer_bridge,
)
from asru_lab.cli import main
from asru_lab.models.adapters import AdapterError
from asru_lab.probe import ProbeError, SteeringProbe

SMALL = CausalTraceConfig(max_people=3, progress=False)


@pytest.fixture(scope="module")
def traced(lm, bench) -> CausalTrace:
    return trace_causal(lm, bench, SMALL)


def _values(trace: CausalTrace) -> torch.Tensor:
    rows = []
    for p in trace.people:
        rows += [p.p_clean, p.p_corrupt]
        rows += [
            v for c in trace.components for row in p.p_patched[c] for v in row if v is not None
        ]
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("corruption", ["noise", "swap"])
def test_transformer_lens_and_nnsight_agree(lm, bench, traced, corruption):
    config = replace(SMALL, corruption=corruption)
    lens = traced if corruption == "noise" else trace_causal(lm, bench, config)
    sight = trace_causal(lm, bench, replace(config, backend="nnsight"))
    assert len(lens.people) == 3
    assert (_values(lens) - _values(sight)).abs().max() <= 1e-4
    for p in lens.people:  # a real trace: the model knows the face, the corruption hides it
        assert p.p_clean > 0.9
        assert p.p_corrupt < p.p_clean - 0.5
    assert lens.hooks["transformer_lens"]["residual"][0] == "blocks.1.hook_in"  # DeepStack
    assert lens.hooks["transformer_lens"]["residual"][3] == "blocks.3.hook_out"
    assert lens.hooks["transformer_lens"]["mlp"][2] == "blocks.2.hook_mlp_out"


def test_the_numbers_mean_what_they_say(lm, bench, traced):
    last = lm.num_layers - 1
    groups = traced.groups
    for p in traced.people:
        # the fact's first token is the person's first name, after "This is"
        assert p.target_token.strip() == p.value.split()[0]
        assert p.answer_prefix == "This is"
        frac = p.fraction("residual")
        # the last layer's residual stream at the last token is the prediction itself
        assert frac[last][groups.index("last")] == pytest.approx(1.0, abs=1e-5)
        # only the image was corrupted: restoring its tokens early restores everything,
        # restoring the question's tokens restores nothing
        assert frac[0][groups.index("image")] > 0.99
        assert abs(frac[0][groups.index("question")]) < 0.1
        sizes = p.group_sizes
        assert sizes["image"] == 16 and sizes["last_prompt"] == sizes["last"] == 1
        assert sizes["answer_prefix"] == 1  # "This"; " is" is the last token


def test_p_clean_is_a_plain_forward_pass(lm, bench, traced):
    cases = _cases(lm, bench, select_items(bench, SMALL), SMALL)
    for case, p in zip(cases, traced.people, strict=True):
        with torch.no_grad():
            logits = lm.model(**case.inputs).logits[0, -1]
        assert float(torch.softmax(logits.double(), -1)[case.target_id]) == pytest.approx(
            p.p_clean, abs=1e-5
        )
        groups = torch.stack(list(case.groups.values())).int()
        assert torch.equal(groups.sum(0), torch.ones(groups.shape[1], dtype=torch.int))
        question = case.inputs["input_ids"][0][case.groups["question"]]
        assert lm.tokenizer.decode(question) == case.question


def test_batching_and_seed(lm, bench, traced):
    rebatched = trace_causal(lm, bench, replace(SMALL, batch_size=7))
    assert (_values(rebatched) - _values(traced)).abs().max() <= 1e-5
    assert rebatched.timing["forward_passes"] > traced.timing["forward_passes"]
    again = trace_causal(lm, bench, SMALL)
    assert torch.equal(_values(again), _values(traced))
    other = trace_causal(lm, bench, replace(SMALL, seed=1, layers=(5,), components=("mlp",)))
    assert [p.p_corrupt for p in other.people] != [p.p_corrupt for p in traced.people]


def test_bridge_shares_the_weights_and_leaves_the_model_as_it_was(lm, traced):
    before = {n: type(m).__name__ for n, m in lm.model.named_modules()}
    bridge = transformer_bridge(lm)
    assert {n: type(m).__name__ for n, m in lm.model.named_modules()} == before
    assert lm.model.config._attn_implementation == "sdpa"
    ours = {p.data_ptr() for p in lm.model.parameters()}
    theirs = [p.data_ptr() for p in bridge.parameters()]
    assert theirs and all(ptr in ours for ptr in theirs)  # no second copy of the weights
    assert traced.model == lm.fingerprint()


def test_another_wording_and_attribute(lm, bench):
    config = replace(SMALL, max_people=2, question="Who is in this picture?", layers=(4, 5))
    trace = trace_causal(lm, bench, config)
    assert [p.question for p in trace.people] == ["Who is in this picture?"] * 2
    assert trace.layers == [4, 5]
    # the answer names the person before the birthplace: teacher-forced, the name is in the
    # text and the image no longer matters, which the trace says instead of dividing by ~0
    with pytest.warns(UserWarning, match="the teacher-forced answer prefix may already name"):
        born = trace_causal(lm, bench, replace(config, attribute="birthplace", question=None))
    assert born.effective() == [] and born.peak("residual") is None
    p = born.people[0]
    assert p.attribute == "birthplace" and p.answer_prefix.endswith("was born in")
    assert p.target_token.strip() == p.value.split()[0]


def test_bad_input_is_refused_clearly(lm, bench):
    text_only = next(i for i in bench.split("forget", "qa") if i.image is None)
    with pytest.raises(CausalTraceError, match="has no image, but corruption 'noise'"):
        trace_causal(lm, bench, SMALL, items=[text_only])
    with pytest.raises(AdapterError, match="layer 9 does not exist.*6 decoder layers"):
        trace_causal(lm, bench, replace(SMALL, layers=(0, 9)))
    with pytest.raises(CausalTraceError, match="person id 'k999' does not exist"):
        trace_causal(lm, bench, replace(SMALL, people=("k005", "k999")))
    with pytest.raises(CausalTraceError, match="no question about 'shoe_size'"):
        trace_causal(lm, bench, replace(SMALL, attribute="shoe_size"))
    with pytest.raises(CausalTraceError, match="unknown corruption 'blur'"):
        CausalTraceConfig(corruption="blur")
    with pytest.raises(CausalTraceError, match="components must be a non-empty subset"):
        CausalTraceConfig(components=("residual", "heads"))
    with pytest.raises(CausalTraceError, match="people is empty"):
        CausalTraceConfig(people=())
    other = SteeringProbe(torch.ones(64), 1, {**lm.fingerprint(), "hidden_size": 64})
    with pytest.raises(ProbeError, match="model.hidden_size is 64 in the probe but 192"):
        trace_causal(lm, bench, SMALL, probe=other)


def test_save_load_and_damaged_file(traced, tmp_path):
    out = traced.save(tmp_path / "trace")
    loaded = CausalTrace.load(out)
    assert loaded.to_json() == traced.to_json()
    assert loaded.matrix("attention") == traced.matrix("attention")
    (out / "trace.json").write_text('{"format": "asru_lab.causal_trace", "peo')
    with pytest.raises(CausalTraceError, match="damaged: not valid JSON"):
        CausalTrace.load(out)
    with pytest.raises(CausalTraceError, match="no causal trace"):
        CausalTrace.load(tmp_path / "nowhere")


def test_comparison_with_locate(lm, traced):
    probe = SteeringProbe(torch.ones(lm.hidden_size), 4, lm.fingerprint(), site="output")
    cmp = compare_with_locate(traced, probe)
    assert cmp["causal"]["layer"] == traced.peak("residual", "last")["layer"]
    half = cmp["causal"]["half_recovery_layer"]
    assert traced.matrix("residual")[half][traced.groups.index("last")] >= 0.5
    assert cmp["locate"]["layer"] == 4
    assert cmp["same_layer_as_half_recovery"] == (half == 4)
    at_input = SteeringProbe(torch.ones(lm.hidden_size), 4, lm.fingerprint(), site="input")
    assert compare_with_locate(traced, at_input)["locate"]["layer"] == 3


def test_heatmap_has_a_panel_per_component_and_a_person_selector(traced):
    fig = viz.causal_heatmap(traced)
    assert [t.type for t in fig.data] == ["heatmap"] * 3
    buttons = fig.layout.updatemenus[0].buttons
    assert len(buttons) == 1 + len(traced.people)
    person = traced.people[1].person_id
    assert buttons[2].args[0]["z"][1] == traced.matrix("attention", person)
    one = viz.causal_heatmap(traced, person=person, value="probability")
    assert list(one.data[0].z[0]) == traced.matrix("residual", person, "probability")[0]


def test_cli_writes_trace_and_heatmap(lm, tmp_path, capsys):
    out = tmp_path / "causal"
    probe = SteeringProbe(torch.ones(lm.hidden_size), 5, lm.fingerprint())
    probe.save(out / "probe")  # inside --out: writing the trace must keep it
    args = ["trace-causal", "--out", str(out), "--max-people", "2", "--quiet", "--no-png"]
    assert main([*args, "--probe", str(out / "probe"), "--layers", "3", "4", "5"]) == 0
    printed = capsys.readouterr().out
    assert "locate's recommended probe: layer 5" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        ".asru_lab_output.json",  # the output-folder marker (asru_lab.artifacts)
        "causal_heatmap.html",
        "plotly.min.js",
        "probe",
        "trace.json",
    ]
    assert SteeringProbe.load(out / "probe").layer == 5
    data = json.loads((out / "trace.json").read_text())
    assert data["layers"] == [3, 4, 5] and len(data["people"]) == 2
    assert data["summary"]["last_token_residual_peak"]["layer"] == 5
    assert main([*args, "--no-compare", "--layers", "7"]) == 2
    assert "layer 7 does not exist" in capsys.readouterr().err
    assert main([*args, "--no-compare", "--people", "nobody"]) == 2
    assert "person id 'nobody' does not exist" in capsys.readouterr().err


def test_images_of_different_sizes_in_one_batch(lm, bench):
    """User data need not have one image size: the first person's portrait at 96x96 gives 36
    visual tokens instead of 16, in the same batches as everyone else's (the embedded
    processor resizes every image to 4096 pixels; this one allows up to 16384)."""
    import copy

    from PIL import Image

    from asru_lab.data.schema import Benchmark

    processor = copy.deepcopy(lm.processor)
    processor.image_processor.size = {"shortest_edge": 4096, "longest_edge": 16384}
    lm = replace(lm, processor=processor)
    first = select_items(bench, SMALL)[0]

    def load(path: str) -> Image.Image:
        image = bench.load_image(path)
        return image.resize((96, 96)) if path == first.image else image

    mixed = Benchmark(bench.people.values(), bench.items, name="mixed sizes", image_loader=load)
    lens = trace_causal(lm, mixed, SMALL)
    sight = trace_causal(lm, mixed, replace(SMALL, backend="nnsight"))
    assert [p.group_sizes["image"] for p in lens.people] == [36, 16, 16]
    assert (_values(lens) - _values(sight)).abs().max() <= 1e-4
    cases = _cases(lm, mixed, select_items(mixed, SMALL), SMALL)
    with torch.no_grad():
        logits = lm.model(**cases[0].inputs).logits[0, -1]
    p_clean = float(torch.softmax(logits.double(), -1)[cases[0].target_id])
    assert p_clean == pytest.approx(lens.people[0].p_clean, abs=1e-5)
    with pytest.raises(CausalTraceError, match="swapped images must have the same size"):
        trace_causal(lm, mixed, replace(SMALL, corruption="swap", max_people=1))


def test_an_answer_that_starts_with_the_fact_has_no_prefix_groups(lm, bench):
    """A user's reference answer may be the bare fact: nothing is teacher-forced, the last
    token is the last prompt token, and the groups that do not exist stay None (not 0)."""
    item = replace(select_items(bench, SMALL)[0], answer="Alma Aldous", value="Alma Aldous")
    with pytest.warns(UserWarning, match="does not say the fact right there"):
        trace = trace_causal(lm, bench, replace(SMALL, layers=(4, 5)), items=[item])
    p = trace.people[0]  # it answers "This is ...": " Alma" is unlikely as the first token
    assert p.answer_prefix == "" and p.target_token.strip() == "Alma"
    assert p.group_sizes["last_prompt"] == p.group_sizes["answer_prefix"] == 0
    empty = [trace.groups.index("last_prompt"), trace.groups.index("answer_prefix")]
    for component in trace.components:
        for row in p.p_patched[component]:
            assert [row[g] for g in empty] == [None, None]
            assert all(v is not None for g, v in enumerate(row) if g not in empty)
    assert trace.matrix("residual", value="probability")[0][empty[0]] is None
    assert viz.causal_heatmap(trace).data[0].text[0][empty[0]] == "–"
