"""The stage 1.1 run that later stages build on, made once per test session through the CLI
exactly as a user would: `asru-lab locate --out P` and a vanilla `asru-lab evaluate`."""

from __future__ import annotations

import json

import pytest

from asru_lab.cli import main
from asru_lab.models.embedded import embedded_dir

BUILT = (embedded_dir() / "config.json").is_file()


@pytest.fixture(scope="session")
def located(tmp_path_factory) -> dict:
    """{"root": dir, "probe": probe dir, "vanilla": the vanilla evaluation JSON}."""
    if not BUILT:
        pytest.skip("embedded model not built")
    root = tmp_path_factory.mktemp("stage1")
    probe = root / "probe"
    assert main(["locate", "--out", str(probe), "--quiet"]) == 0
    vanilla = root / "vanilla.json"
    assert main(["evaluate", "--out", str(vanilla)]) == 0
    return {"root": root, "probe": probe, "vanilla": json.loads(vanilla.read_text())}
