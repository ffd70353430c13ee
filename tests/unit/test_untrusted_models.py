"""A model folder is untrusted data (#29): its code never runs, only files inside it are read,
its metadata is type-checked, its chat template is rendered once under a time limit and in the
sandbox, and `make-model` refuses a size that cannot fit in memory before allocating it."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import asru_lab
from asru_lab.cli import main
from asru_lab.models import folder as model_folder
from asru_lab.models import sizes
from asru_lab.models.embedded import embedded_dir
from asru_lab.models.loading import ModelLoadError, load_model
from asru_lab.models.sizes import SizeError, build_random_model, get_size


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A private copy of the embedded model, free to tamper with."""
    return Path(shutil.copytree(embedded_dir(), tmp_path / "model"))


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """The embedded model saved as several safetensors shards with an index."""
    out = tmp_path_factory.mktemp("sharded") / "model"
    lm = load_model()
    lm.model.save_pretrained(out, max_shard_size="3MB")
    lm.processor.save_pretrained(out)
    return out


@pytest.fixture
def sharded_dir(sharded, tmp_path) -> Path:
    return Path(shutil.copytree(sharded, tmp_path / "sharded"))


def _edit_json(file: Path, **entries) -> None:
    data = json.loads(file.read_text())
    data.update(entries)
    file.write_text(json.dumps(data))


def _plant_code(folder: Path, marker: Path, json_name: str, auto_map: dict, **entries) -> None:
    """Give `folder` a Python file that creates `marker` when imported, and name it in
    `json_name`'s `auto_map` (nested under `image_processor` when json_name has a '/')."""
    body = f"open({str(marker)!r}, 'w').write('the model folder ran code')\n"
    (folder / "custom_code.py").write_text(body + "class Custom:\n    pass\n")
    file_name, _, nested = json_name.partition("/")
    file = folder / file_name
    data = json.loads(file.read_text()) if file.is_file() else {}
    target = data.setdefault(nested, {}) if nested else data
    target.update(auto_map=auto_map, **entries)
    file.write_text(json.dumps(data))


# -- 1. no code from a model folder ever runs ----------------------------------------------


@pytest.mark.parametrize(
    ("json_name", "auto_map", "entries"),
    [
        (
            "config.json",
            {
                "AutoConfig": "custom_code.Custom",
                "AutoModelForImageTextToText": "custom_code.Custom",
            },
            {"model_type": "custom_vl"},
        ),
        (
            "processor_config.json",
            {"AutoProcessor": "custom_code.Custom"},
            {"processor_class": "Custom"},
        ),
    ],
    ids=["config", "processor"],
)
def test_auto_map_never_runs_code_even_when_yes_is_typed(
    model_dir, tmp_path, json_name, auto_map, entries
):
    marker = tmp_path / "marker"
    _plant_code(model_dir, marker, json_name, auto_map, **entries)
    result = subprocess.run(
        [sys.executable, "-m", "asru_lab.cli", "evaluate", "--model", str(model_dir)]
        + ["--out", str(tmp_path / "r.json"), "--max-items", "1"],
        input="y\n" * 10,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert not marker.exists(), "the model folder's Python was imported"
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr
    assert result.returncode == 2, result.stderr
    assert f"{json_name}: 'auto_map' names custom model code" in result.stderr
    assert "never runs a model folder's code" in result.stderr


@pytest.mark.parametrize(
    ("json_name", "key"),
    [
        ("tokenizer_config.json", "auto_map"),
        ("processor_config.json/image_processor", "image_processor.auto_map"),
        ("preprocessor_config.json", "auto_map"),
        ("generation_config.json", "auto_map"),
    ],
)
def test_auto_map_in_any_settings_file_is_refused_before_loading(
    model_dir, tmp_path, json_name, key
):
    marker = tmp_path / "marker"
    _plant_code(model_dir, marker, json_name, {"AutoTokenizer": ["custom_code.Custom", None]})
    with pytest.raises(ModelLoadError, match=rf"{json_name.split('/')[0]}: '{key}' names custom"):
        load_model(model_dir)
    assert not marker.exists()


def test_every_transformers_load_in_the_package_refuses_remote_code():
    """Each `from_pretrained` / `boot_transformers` call says trust_remote_code=False, so
    transformers never asks on stdin whether to run a folder's code."""
    loose = []
    for path in Path(asru_lab.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            if node.func.attr not in ("from_pretrained", "boot_transformers"):
                continue
            kwargs = {k.arg: k.value for k in node.keywords}
            flag = kwargs.get("trust_remote_code")
            if not (isinstance(flag, ast.Constant) and flag.value is False):
                loose.append(f"{path.name}:{node.lineno}")
    assert not loose


# -- 2. every file a model folder names lies inside it ------------------------------------


def _first_shard(folder: Path) -> str:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return sorted(set(index["weight_map"].values()))[0]


def _rename_shard(folder: Path, old: str, new: str) -> None:
    file = folder / "model.safetensors.index.json"
    index = json.loads(file.read_text())
    index["weight_map"] = {k: new if v == old else v for k, v in index["weight_map"].items()}
    file.write_text(json.dumps(index))


@pytest.mark.parametrize("how", ["absolute", "dotdot", "backslash"])
def test_a_shard_named_outside_the_folder_is_refused(sharded_dir, tmp_path, how):
    outside = tmp_path / "outside"
    outside.mkdir()
    shard = _first_shard(sharded_dir)
    shutil.move(sharded_dir / shard, outside / shard)  # a valid shard, but outside
    name = {
        "absolute": str(outside / shard),
        "dotdot": f"../outside/{shard}",
        "backslash": f"..\\outside\\{shard}",
    }[how]
    _rename_shard(sharded_dir, shard, name)
    with pytest.raises(ModelLoadError, match=r"names the shard .* not a file inside the model"):
        load_model(sharded_dir)


@pytest.mark.parametrize(
    "file",
    [
        "shard",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "processor_config.json",
        "config.json",
    ],
)
def test_a_file_linked_from_outside_the_folder_is_refused(sharded_dir, tmp_path, file):
    name = _first_shard(sharded_dir) if file == "shard" else file
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir()
    shutil.move(sharded_dir / name, outside)
    (sharded_dir / name).symlink_to(outside)
    with pytest.raises(ModelLoadError, match=rf"{name} is a link to .*outside the model folder"):
        load_model(sharded_dir)


def test_a_linked_template_folder_from_outside_is_refused(model_dir, tmp_path):
    elsewhere = tmp_path / "templates"
    elsewhere.mkdir()
    (elsewhere / "tool_use.jinja").write_text("{{ messages }}")
    (model_dir / "additional_chat_templates").symlink_to(elsewhere)
    with pytest.raises(ModelLoadError, match=r"additional_chat_templates is a link"):
        load_model(model_dir)


def test_a_link_that_stays_inside_the_folder_loads(model_dir):
    (model_dir / "weights").mkdir()
    shutil.move(model_dir / "model.safetensors", model_dir / "weights" / "model.safetensors")
    (model_dir / "model.safetensors").symlink_to(Path("weights") / "model.safetensors")
    assert load_model(model_dir).num_layers == 6


def test_a_hub_cache_snapshot_loads_through_its_blob_links(tmp_path, monkeypatch):
    """A hub id is read from the HF cache, whose snapshot files link into the repo's blobs."""
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--someone--tiny-vl"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for file in embedded_dir().iterdir():
        shutil.copy(file, repo / "blobs" / file.name)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", file.name))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    lm = load_model("someone/tiny-vl")
    assert lm.num_layers == 6
    (snapshot / "tokenizer.json").unlink()  # now a link to a file outside the cache repo
    (snapshot / "tokenizer.json").symlink_to(embedded_dir() / "tokenizer.json")
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json is a link to"):
        load_model("someone/tiny-vl")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"name": {"html": "<script>"}}, r"'name' must be a printable string.*\(dict\)"),
        ({"name": 42}, r"'name' must be a printable string.*\(int\)"),
        ({"name": "line one\nline two"}, r"'name' must be a printable string"),
        ({"name": "x" * 500}, r"'name' must be a printable string of 1 to 200"),
        ({"name": "ok", "revision": ["main"]}, r"'revision' must be a string or null"),
        (["not", "an", "object"], r"expected a JSON object, got list"),
        ("{not json", r"not readable JSON"),
    ],
    ids=["dict", "int", "newline", "long", "revision", "list", "broken"],
)
def test_model_metadata_of_the_wrong_type_is_refused(model_dir, content, message):
    file = model_dir / "asru_lab_model.json"
    file.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ModelLoadError, match=rf"asru_lab_model\.json: {message}"):
        load_model(model_dir)


# -- 3. the chat template: rendered once at load, in the sandbox, under a time limit ------

NESTED_LOOPS = (
    "{% for a in range(100000) %}{% for b in range(100000) %}{{ '' }}{% endfor %}{% endfor %}"
)


def test_a_template_that_never_finishes_is_refused_not_a_hang(model_dir, monkeypatch):
    monkeypatch.setattr(model_folder, "TEMPLATE_SECONDS", 1.0)
    (model_dir / "chat_template.jinja").write_text(NESTED_LOOPS)
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"chat_template\.jinja\) was refused: .* over 1 s"):
        load_model(model_dir)
    assert time.perf_counter() - started < 15
    time.sleep(0.2)  # the render thread was stopped, not left looping at full CPU
    assert not any(t.name == "asru_lab chat template check" for t in threading.enumerate())


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("{{ ''.__class__.__mro__ }}", "reach outside the sandbox"),
        ("{{ cycler.__init__.__globals__ }}", "reach outside the sandbox"),
        ("{{ messages.append(messages) }}", "reach outside the sandbox"),
        ("{% include '/etc/passwd' %}", "include or import another file"),
        ("{% import 'macros.jinja' as m %}", "include or import another file"),
        ("{% for m in messages %}", "not valid Jinja"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "RecursionError"),
        ("{{ raise_exception('no images here') }}", "no images here"),
    ],
)
def test_a_hostile_or_broken_template_is_refused_naming_it(model_dir, template, why):
    (model_dir / "chat_template.jinja").write_text(template)
    with pytest.raises(ModelLoadError, match=r"chat template \(.*chat_template\.jinja\)") as err:
        load_model(model_dir)
    assert why in str(err.value)


def _without_template_files(folder: Path) -> None:
    (folder / "chat_template.jinja").unlink()


@pytest.mark.parametrize("where", ["tokenizer_config.json", "chat_template.json", "named"])
def test_a_template_is_checked_wherever_transformers_reads_it(model_dir, where):
    hostile = "{{ ''.__class__.__mro__ }}"
    if where == "tokenizer_config.json":
        _without_template_files(model_dir)
        _edit_json(model_dir / where, chat_template=hostile)
    elif where == "chat_template.json":
        _without_template_files(model_dir)
        (model_dir / where).write_text(json.dumps({"chat_template": hostile}))
    else:  # a named template beside a harmless default
        (model_dir / "additional_chat_templates").mkdir()
        (model_dir / "additional_chat_templates" / "tool_use.jinja").write_text(hostile)
        where = "additional_chat_templates/tool_use.jinja"
    with pytest.raises(ModelLoadError, match=rf"chat template.*\(.*{where}\) was refused"):
        load_model(model_dir)


def test_a_model_without_a_chat_template_is_refused_at_load(model_dir):
    _without_template_files(model_dir)
    with pytest.raises(ModelLoadError, match=r"has no chat template"):
        load_model(model_dir)


def test_cli_reports_a_hostile_template_as_the_models_fault(model_dir, tmp_path, capsys):
    (model_dir / "chat_template.jinja").write_text("{% include 'secrets.txt' %}")
    code = main(["evaluate", "--model", str(model_dir), "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert "chat template" in err and "refused" in err
    assert "internal error" not in err and "bug" not in err
    assert not (tmp_path / "r.json").exists()


# -- 4. make-model: an absurd size is refused before allocating ---------------------------


def test_a_size_needing_terabytes_is_refused_before_allocating(tmp_path, capsys):
    started = time.perf_counter()
    code = main(
        ["make-model", "--size", "tiny", "--set", "hidden=1000000", "--set", "layers=10000"]
        + ["--out", str(tmp_path / "huge")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert time.perf_counter() - started < 10
    assert "GiB" in err and "available" in err and "smaller size" in err
    assert "internal error" not in err
    assert not (tmp_path / "huge").exists()


@pytest.mark.parametrize(
    ("size", "dtype", "hint"),
    [
        ("qwen3-vl-8b", torch.float32, "bfloat16"),
        ("qwen3-vl-8b", torch.bfloat16, "shrink it"),
        (get_size("tiny", vocab=10**10), torch.float32, "GiB in float32"),
    ],
    ids=["8b-float32", "8b-bfloat16", "huge-vocab"],
)
def test_a_size_beyond_the_memory_available_is_refused_with_both_numbers(
    monkeypatch, size, dtype, hint
):
    monkeypatch.setattr(sizes, "available_memory", lambda device: 8 * 1024**3)
    with pytest.raises(SizeError, match=r"but 8\.0 GiB of memory is available on cpu") as err:
        build_random_model(size, dtype=dtype)
    assert hint in str(err.value)


def test_available_memory_is_read_from_the_machine():
    free = sizes.available_memory(torch.device("cpu"))
    assert free is not None and free > 0
