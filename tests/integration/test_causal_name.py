"""Causal tracing of the name -> fact hop (issue #32, item 1): a question by name, the name's
token embeddings noised (in the question and in the teacher-forced answer prefix), every site
restored at each position group; the numbers mean what they say and bad input is refused."""

from __future__ import annotations

from dataclasses import replace

import pytest

from asru_lab.causal import CausalTrace, CausalTraceConfig, CausalTraceError, trace_causal
from asru_lab.causal.config import NAME_GROUPS

NAME = CausalTraceConfig(
    corruption="name",
    backend="nnsight",
    attribute="birthplace",
    components=("residual",),
    max_people=4,
    progress=False,
)


@pytest.fixture(scope="module")
def traced(lm, bench) -> CausalTrace:
    return trace_causal(lm, bench, NAME)


def test_questions_by_name_are_traced_with_the_name_as_a_group(bench, traced):
    assert traced.groups == list(NAME_GROUPS)
    for p in traced.people:
        person = bench.people[p.person_id]
        assert p.image is None and person.name in p.question
        assert person.name in p.answer_prefix  # "Alma Aldous was born in"
        # the name's tokens, in the question and again in the answer prefix
        assert p.group_sizes["name"] >= 2 and "image" not in p.group_sizes


def test_noising_the_name_hides_the_fact_and_restoring_the_last_token_late_brings_it_back(
    traced,
):
    effective = [p for p in traced.people if p.p_clean - p.p_corrupt >= NAME.min_drop]
    assert effective, "noise on the name changed nothing"
    last = traced.groups.index("last")
    name = traced.groups.index("name")
    matrix = traced.matrix("residual")
    # after the last layer the last token's residual stream is the prediction itself
    assert matrix[-1][last] == pytest.approx(1.0, abs=1e-6)
    # restoring the name's own tokens recovers something at the first layer, less at the last
    assert matrix[0][name] > matrix[-1][name]


def test_the_same_seed_gives_the_same_trace(lm, bench, traced):
    again = trace_causal(lm, bench, NAME)
    assert [p.p_corrupt for p in again.people] == [p.p_corrupt for p in traced.people]


def test_bad_input_for_the_name_corruption_is_refused(lm, bench):
    with pytest.raises(CausalTraceError, match="only the nnsight backend reaches"):
        CausalTraceConfig(corruption="name")
    with pytest.raises(CausalTraceError, match="no question by name about 'name'"):
        trace_causal(lm, bench, replace(NAME, attribute="name"))
    pictured = next(i for i in bench.questions("forget", "qa") if i.image is not None)
    with pytest.raises(CausalTraceError, match="traces questions by name"):
        trace_causal(lm, bench, NAME, items=[pictured])
    with pytest.raises(CausalTraceError, match="groups must be a non-empty subset"):
        CausalTraceConfig(corruption="name", backend="nnsight", groups=("face",))


def test_the_cli_traces_the_name_hop(tmp_path):
    from asru_lab.cli import main

    out = tmp_path / "name"
    args = ["trace-causal", "--corruption", "name", "--backend", "nnsight", "--attribute",
            "birthplace", "--max-people", "2", "--components", "residual", "--no-compare",
            "--no-png", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    trace = CausalTrace.load(out)
    assert trace.groups[0] == "name" and trace.config["corruption"] == "name"
    assert (out / "causal_heatmap.html").is_file()
