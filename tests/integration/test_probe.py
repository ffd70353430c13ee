"""SteeringProbe: exact round trips, steering that does what it says, and clear refusals of bad
files and mismatched models."""

from __future__ import annotations

import json

import pytest
import torch

import asru_lab as al
from asru_lab.capture import TraceError, capture, nnsight_model
from asru_lab.cli import main
from asru_lab.data.schema import BenchmarkError
from asru_lab.generation import encode, generate_batch
from asru_lab.models.adapters import AdapterError
from asru_lab.probe import MemorisationGate, ProbeError, SteeringProbe
from tests.tiny_models import make_tiny_qwen3_vl

LAYER = 4


@pytest.fixture(scope="module")
def items(bench):
    forget = bench.split("forget", "qa")
    retain = bench.split("retain", "qa")
    # image and text-only questions, forget and retain people
    return [forget[0], forget[-1], retain[0], retain[-1], forget[7], retain[11]]


def make_probe(lm, *, gate_bias: float | None = None, seed: int = 0, **kw) -> SteeringProbe:
    g = torch.Generator().manual_seed(seed)
    hidden, n = lm.hidden_size, lm.num_layers
    direction = torch.randn(hidden, generator=g) * 20
    layer_directions = torch.randn(n, hidden, generator=g)
    gate = None
    if gate_bias is not None:
        gate = MemorisationGate(torch.randn(3, hidden, generator=g) * 0.01, gate_bias, 0.5)
    kw.setdefault("alpha", 3.0)
    return SteeringProbe(
        direction,
        kw.pop("layer", LAYER),
        lm.fingerprint(),
        gate=gate,
        layer_directions=layer_directions,
        module=lm.adapter.layer_path(LAYER),
        evidence={"sweep": [{"layer": LAYER, "alpha": 3.0}], "note": "hand-made"},
        **kw,
    )


def batch_logits(lm, bench, items) -> torch.Tensor:
    images = [bench.load_image(i.image) if i.image else None for i in items]
    with torch.no_grad():
        return lm.model(**encode(lm, images, [i.question for i in items])).logits


def answers(lm, bench, items) -> list[str]:
    images = [bench.load_image(i.image) if i.image else None for i in items]
    return generate_batch(lm, images, [i.question for i in items], max_new_tokens=16)


# --- artifact --------------------------------------------------------------------------------
def test_save_load_round_trip_is_exact(lm, tmp_path):
    probe = make_probe(lm, gate_bias=0.25)
    probe.save(tmp_path / "p")
    back = SteeringProbe.load(tmp_path / "p")
    assert torch.equal(back.direction, probe.direction)
    assert torch.equal(back.gate.weight, probe.gate.weight)
    assert torch.equal(back.layer_directions, probe.layer_directions)
    assert back.metadata() == probe.metadata()
    assert back.evidence == probe.evidence
    assert (back.gate.bias, back.gate.threshold) == (probe.gate.bias, probe.gate.threshold)


def test_probe_json_has_every_design_field(lm, tmp_path):
    make_probe(lm, gate_bias=0.0).save(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "probe.json").read_text())
    for key in ("format_version", "operation", "site", "layer", "layer_index_convention"):
        assert key in meta
    for key in ("positions", "alpha", "normalisation", "model", "extraction"):
        assert key in meta
    for key in ("dataset_fingerprint", "created", "asru_lab_version"):
        assert key in meta
    assert set(meta["site"]) == {"module", "io", "deepstack"}
    assert meta["site"]["module"] == "model.language_model.layers.4"
    assert {"hidden_size", "num_layers", "config_sha256", "name", "revision"} <= set(meta["model"])


def test_save_replaces_atomically_and_leaves_no_temp_files(lm, tmp_path):
    make_probe(lm, seed=1).save(tmp_path / "p")
    make_probe(lm, seed=2).save(tmp_path / "p")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]
    assert torch.equal(
        SteeringProbe.load(tmp_path / "p").direction, make_probe(lm, seed=2).direction
    )


# --- steering --------------------------------------------------------------------------------
def test_apply_changes_answers_and_removes_its_hook(lm, bench, items):
    plain = batch_logits(lm, bench, items)
    probe = make_probe(lm, positions="all")
    layer = lm.adapter.layer(lm.model, LAYER)
    before = dict(layer._forward_hooks)  # transformers may keep hooks of its own there
    with probe.apply(lm):
        assert len(layer._forward_hooks) == len(before) + 1
        steered = batch_logits(lm, bench, items)
    assert dict(layer._forward_hooks) == before
    assert not torch.allclose(plain, steered)
    assert torch.equal(batch_logits(lm, bench, items), plain)


def test_plain_hooks_and_nnsight_edit_give_the_same_logits(lm, bench, items):
    images = [bench.load_image(i.image) if i.image else None for i in items]
    batch = encode(lm, images, [i.question for i in items])
    wrapped = nnsight_model(lm)
    for probe, positions in (
        (make_probe(lm), "prompt"),
        (make_probe(lm), "last"),
        (make_probe(lm, operation="ablate", alpha=1.0), "prompt"),
        (make_probe(lm, gate_bias=0.0), "prompt"),
        (make_probe(lm, site="input"), "prompt"),
    ):
        with torch.no_grad(), probe.apply(lm, positions=positions):
            hooked = lm.model(**batch).logits
        with torch.no_grad(), wrapped.trace(**batch):
            probe.edit_trace(lm, wrapped, positions=positions)
            traced = wrapped.output.logits.save()
        assert torch.allclose(hooked, traced, atol=1e-5), (probe.operation, probe.site, positions)


def test_asking_for_the_gate_of_a_probe_without_one_is_refused_everywhere(lm):
    probe = make_probe(lm)  # no gate
    with pytest.raises(ProbeError, match="no memorisation gate"), probe.apply(lm, gated=True):
        pass
    with pytest.raises(ProbeError, match="no memorisation gate"):
        probe.edit_trace(lm, nnsight_model(lm), gated=True)  # refused before any trace runs


def test_gate_steers_exactly_the_rows_it_fires_on(lm, bench, items):
    plain = answers(lm, bench, items)
    with make_probe(lm).apply(lm):
        steered = answers(lm, bench, items)
    assert plain != steered
    with make_probe(lm, gate_bias=-50.0).apply(lm):
        assert answers(lm, bench, items) == plain  # never fires
    with make_probe(lm, gate_bias=50.0).apply(lm):
        assert answers(lm, bench, items) == steered  # always fires
    gated = make_probe(lm, gate_bias=0.0)
    gated.gate.threshold = 0.0  # the threshold alone decides: every row fires
    with gated.apply(lm):
        assert answers(lm, bench, items) == steered
    gated.gate.threshold = 1.01  # no row fires
    with gated.apply(lm):
        assert answers(lm, bench, items) == plain
    with gated.apply(lm, gated=False):
        assert answers(lm, bench, items) == steered


def test_mixed_batch_is_steered_row_by_row(lm, bench, items):
    """A gate that fires on some rows only: those rows get the steered answers, others the
    plain ones (rows of a batch do not interact)."""
    probe = make_probe(lm, gate_bias=0.0)
    tails = torch.stack(
        [
            capture(
                lm, bench, items, layers=[LAYER], position=p, keep_raw=True, progress=False
            ).raw[LAYER]
            for p in (-3, -2, -1)
        ],
        1,
    )
    probs = probe.gate.probability(tails)
    probe.gate.threshold = float(probs.median())
    fires = probe.gate.fires(tails).tolist()
    assert 0 < sum(fires) < len(fires)
    plain = answers(lm, bench, items)
    with make_probe(lm).apply(lm):
        steered = answers(lm, bench, items)
    with probe.apply(lm):
        mixed = answers(lm, bench, items)
    assert mixed == [s if f else p for f, s, p in zip(fires, steered, plain, strict=True)]


def test_generated_positions_leave_the_prompt_pass_alone(lm, bench, items):
    images = [bench.load_image(i.image) if i.image else None for i in items]
    batch = encode(lm, images, [i.question for i in items])
    kw = dict(max_new_tokens=6, do_sample=False, return_dict_in_generate=True, output_logits=True)
    kw["pad_token_id"] = lm.tokenizer.pad_token_id
    with torch.no_grad():
        plain = lm.model.generate(**batch, **kw)
        with make_probe(lm, positions="generated").apply(lm):
            steered = lm.model.generate(**batch, **kw)
    assert torch.equal(plain.logits[0], steered.logits[0])  # first token: prompt pass only
    assert not torch.equal(plain.logits[-1], steered.logits[-1])


def test_input_site_of_next_layer_equals_output_site(lm, bench, items):
    """Above the DeepStack range, layer L's output is what layer L+1 receives."""
    assert LAYER - 1 not in lm.adapter.deepstack_layers(lm.model)
    out_probe = make_probe(lm, layer=LAYER - 1, positions="all")
    in_probe = make_probe(lm, layer=LAYER, site="input", positions="all")
    in_probe.direction = out_probe.direction
    with out_probe.apply(lm):
        a = batch_logits(lm, bench, items)
    with in_probe.apply(lm):
        b = batch_logits(lm, bench, items)
    assert torch.allclose(a, b, atol=1e-5)


def test_export_gguf_control_vector(lm, tmp_path):
    gguf = pytest.importorskip("gguf")
    probe = make_probe(lm)
    path = probe.export_gguf(tmp_path / "v.gguf")
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    assert list(tensors) == [f"direction.{LAYER}"]
    data = torch.from_numpy(tensors[f"direction.{LAYER}"].data.copy()).flatten()
    assert torch.allclose(data, probe.alpha * probe.direction)
    with pytest.raises(ProbeError, match="after layer 0"):
        make_probe(lm, layer=0).export_gguf(tmp_path / "w.gguf")


# --- bad input -------------------------------------------------------------------------------
def test_probe_for_another_model_is_refused(lm, tmp_path):
    other = al.load_model(make_tiny_qwen3_vl(tmp_path / "tiny"))
    probe = make_probe(lm)
    with pytest.raises(ProbeError, match="hidden_size"):
        probe.validate(other)
    with pytest.raises(ProbeError, match="hidden_size"):
        with probe.apply(other):
            pass
    wrong_depth = make_probe(lm)
    wrong_depth.model = {**wrong_depth.model, "num_layers": 36}
    with pytest.raises(ProbeError, match="num_layers"):
        wrong_depth.validate(lm)


def test_layer_out_of_range_is_refused(lm, bench, items):
    with pytest.raises(AdapterError, match="layer 99 does not exist"):
        capture(lm, bench, items, layers=[99], progress=False)
    probe = make_probe(lm)
    probe.layer = 6
    with pytest.raises(ProbeError, match="'layer' is 6"):
        probe.validate(lm)
    with pytest.raises(ProbeError, match="layer 9 does not exist"):
        make_probe(lm).at_layer(lm, 9)


def test_a_probe_moved_to_another_layer_saves_and_reloads(lm, tmp_path):
    moved = make_probe(lm).at_layer(lm, 2)
    loaded = SteeringProbe.load(moved.save(tmp_path / "moved"))
    assert loaded.layer == 2
    assert torch.equal(loaded.direction, moved.layer_directions[2])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_safetensors_is_refused(lm, tmp_path, damage):
    path = make_probe(lm).save(tmp_path / "p") / "probe.safetensors"
    data = path.read_bytes()
    path.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": b"\x00\x01not a file" * 5, "empty": b""}[
            damage
        ]
    )
    with pytest.raises(ProbeError, match="damaged or truncated"):
        SteeringProbe.load(tmp_path / "p")


def test_json_missing_field_or_unknown_version_is_refused(lm, tmp_path):
    out = make_probe(lm).save(tmp_path / "p")
    meta = json.loads((out / "probe.json").read_text())
    for field, value, message in (
        ("alpha", None, "missing field.*alpha"),
        ("format_version", 99, "unknown format_version 99"),
        ("format", "something.else", "'format'"),
    ):
        broken = dict(meta)
        if value is None:
            del broken[field]
        else:
            broken[field] = value
        (out / "probe.json").write_text(json.dumps(broken))
        with pytest.raises(ProbeError, match=message):
            SteeringProbe.load(out)
    (out / "probe.json").write_text("{not json")
    with pytest.raises(ProbeError, match="not valid JSON"):
        SteeringProbe.load(out)
    meta["tensors"]["direction"] = [7]
    (out / "probe.json").write_text(json.dumps(meta))
    with pytest.raises(ProbeError, match="direction"):
        SteeringProbe.load(out)


def test_missing_probe_directory_is_refused(tmp_path):
    with pytest.raises(ProbeError, match="probe.json is missing"):
        SteeringProbe.load(tmp_path)


def test_unknown_site_position_or_operation_is_refused(lm, bench, items):
    with pytest.raises(TraceError, match="unknown site 'middle'"):
        capture(lm, bench, items, site="middle", progress=False)
    with pytest.raises(TraceError, match="unknown position 'first'"):
        capture(lm, bench, items, position="first", progress=False)
    with pytest.raises(TraceError, match="unknown position 3"):
        capture(lm, bench, items, position=3, progress=False)
    with pytest.raises(ProbeError, match="unknown positions 'everywhere'"):
        make_probe(lm, positions="everywhere")
    with pytest.raises(ProbeError, match="unknown operation"):
        make_probe(lm, operation="multiply")
    with pytest.raises(ProbeError, match="unknown positions"):
        with make_probe(lm).apply(lm, positions="sometimes"):
            pass


def test_empty_sets_are_refused(lm, bench):
    with pytest.raises(BenchmarkError, match="empty"):
        capture(lm, bench, [], progress=False)
    from asru_lab.stages.locate import LocateConfig, locate

    no_forget = bench.subset([i for i in bench.items if i.split != "forget"])
    with pytest.raises(BenchmarkError, match="no forget generation questions"):
        locate(lm, no_forget, LocateConfig(progress=False))


def test_cli_reports_a_damaged_probe_without_a_traceback(lm, tmp_path, capsys):
    out = make_probe(lm).save(tmp_path / "p")
    (out / "probe.safetensors").write_bytes(b"broken")
    code = main(["evaluate", "--probe", str(out), "--out", str(tmp_path / "r.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert "damaged or truncated" in err and "Traceback" not in err


def test_a_damaged_sweep_json_does_not_stop_a_probe_from_loading(lm, tmp_path):
    probe = make_probe(lm)
    out = probe.save(tmp_path / "p")
    (out / "sweep.json").write_text('{"sweep": [{"layer": 5, "al')  # cut short
    with pytest.warns(UserWarning, match=r"sweep\.json is damaged.*without locate's sweep"):
        loaded = SteeringProbe.load(out)
    assert loaded.evidence is None and torch.equal(loaded.direction, probe.direction)
