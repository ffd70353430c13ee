"""Bad model paths and bad images give clear errors, from the library and from the CLI."""

from __future__ import annotations

import pytest

from asru_lab.cli import main
from asru_lab.data.schema import BenchmarkError
from asru_lab.generation import as_image
from asru_lab.models.loading import ModelLoadError, load_model


def test_missing_model_dir_is_named(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelLoadError, match="model directory not found.*no_such_model"):
        load_model(missing)


def test_dir_without_config_is_not_a_model(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)


def test_cli_reports_a_missing_model_without_a_traceback(tmp_path, capsys):
    code = main(["evaluate", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert "model directory not found" in err and "Traceback" not in err


def test_image_path_that_does_not_exist(tmp_path):
    with pytest.raises(BenchmarkError, match="image not found"):
        as_image(tmp_path / "missing.png")


def test_file_that_is_not_an_image(tmp_path):
    bad = tmp_path / "fake.png"
    bad.write_text("not a png")
    with pytest.raises(BenchmarkError, match="not a readable image"):
        as_image(str(bad))


def test_wrong_image_type():
    with pytest.raises(TypeError, match="PIL image, a path or None"):
        as_image(42)
