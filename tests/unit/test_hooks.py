"""Activation sites on a tiny torch model: what editing and reading a layer's output or input
does to the forward pass, with no language model loaded."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from nnsight import NNsight
from torch import nn

from asru_lab.hooks import (
    deepstack_relation,
    editing,
    envoy_site,
    read_site,
    reading,
    residual_site,
    set_envoy_site,
)


class Layer(nn.Module):
    """h -> 2h + 1, returned alone or as (h, marker) like a decoder layer; records that it ran."""

    def __init__(self, as_tuple: bool) -> None:
        super().__init__()
        self.as_tuple = as_tuple
        self.ran = 0

    def forward(self, hidden_states: torch.Tensor, scale: float = 1.0):
        self.ran += 1
        out = 2 * hidden_states * scale + 1
        return (out, "marker") if self.as_tuple else out


class Stack(nn.Module):
    """Layer 0 gets its input positionally, layer 1 as the `hidden_states` keyword."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Layer(as_tuple=True), Layer(as_tuple=False)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, marker = self.layers[0](x)
        assert marker == "marker"
        return self.layers[1](hidden_states=h)


@pytest.fixture
def model() -> Stack:
    return Stack()


X = torch.tensor([[1.0, -2.0]])


def test_editing_a_tuple_output_changes_what_the_next_layer_sees_and_keeps_the_rest(model):
    with editing(model.layers[0], "output", lambda h: h * 0):
        assert torch.equal(model(X), torch.ones_like(X))  # 2 * 0 + 1
    assert torch.equal(model(X), 2 * (2 * X + 1) + 1)  # the hook is gone after the block


def test_editing_a_tensor_output(model):
    with editing(model.layers[1], "output", lambda h: -h):
        assert torch.equal(model(X), -(2 * (2 * X + 1) + 1))


@pytest.mark.parametrize(
    ("layer", "expected"),
    [(0, 2 * (2 * (X + 10) + 1) + 1), (1, 2 * (2 * X + 1 + 10) + 1)],
    ids=["positional", "hidden_states keyword"],
)
def test_editing_an_input_given_positionally_or_by_keyword(model, layer, expected):
    with editing(model.layers[layer], "input", lambda h: h + 10):
        assert torch.equal(model(X), expected)


def test_read_site_stops_the_pass_without_an_error_and_later_layers_do_not_run(model):
    value = read_site(model, {"x": X}, model.layers[0], "output")
    assert torch.equal(value, 2 * X + 1)
    assert model.layers[1].ran == 0
    value = read_site(model, {"x": X}, model.layers[1], "input")
    assert torch.equal(value, 2 * X + 1)  # the keyword argument
    assert model.layers[1].ran == 0


def test_read_site_without_stop_runs_the_whole_model(model):
    value = read_site(model, {"x": X}, model.layers[0], "output", stop=False)
    assert torch.equal(value, 2 * X + 1)
    assert model.layers[1].ran == 1


def test_read_site_is_none_when_the_pass_never_reaches_the_module(model):
    assert read_site(model, {"x": X}, Layer(as_tuple=False), "output") is None


def test_reading_keeps_the_last_pass_and_removes_its_hook(model):
    with reading(model.layers[1], "output") as box:
        model(X)
        model(2 * X)
    assert torch.equal(box["value"], 2 * (2 * (2 * X) + 1) + 1)
    model(X)
    assert torch.equal(box["value"], 2 * (2 * (2 * X) + 1) + 1)


@pytest.mark.parametrize("site", ["output", "input"])
def test_an_nnsight_edit_of_a_site_matches_the_hook_edit(model, site):
    with editing(model.layers[0], site, lambda h: h * 3):
        hooked = model(X)
    wrapped = NNsight(model)
    with torch.no_grad(), wrapped.trace(X):
        envoy = wrapped.layers[0]
        if site == "input":
            set_envoy_site(envoy, site, envoy_site(envoy, site) * 3)
        else:
            h, marker = envoy_site(envoy, site)
            set_envoy_site(envoy, site, (h * 3, marker))
        traced = wrapped.output.save()
    assert torch.equal(traced, hooked)


def fake_lm(deepstack: tuple[int, ...], num_layers: int = 6) -> SimpleNamespace:
    adapter = SimpleNamespace(deepstack_layers=lambda _model: deepstack)
    return SimpleNamespace(adapter=adapter, model=None, num_layers=num_layers)


def test_the_residual_stream_is_read_after_deepstack_injection():
    lm = fake_lm(deepstack=(0, 1, 2))
    assert residual_site(lm, 1) == (2, "input")
    assert residual_site(lm, 3) == (3, "output")
    assert residual_site(fake_lm(deepstack=(5,)), 5) == (5, "output")  # no layer after it
    assert deepstack_relation(lm, 0, "output").startswith("before injection")
    assert deepstack_relation(lm, 1, "input").startswith("after injection")
    assert deepstack_relation(lm, 4, "output").startswith("none")
