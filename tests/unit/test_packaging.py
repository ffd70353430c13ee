"""The two dependency lists (pyproject.toml and environment.yml) must agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert conda_python == ["python=3.11"]
    ours = {_name(r): r.replace(" ", "") for r in project["dependencies"]}
    theirs = {_name(r): r.replace(" ", "") for r in pip_block if not r.startswith("-e")}
    assert ours == theirs


def test_torch_is_pinned_to_the_cpu_build():
    constraints = (ROOT / "constraints.txt").read_text()
    assert "torch==2.13.0" in constraints
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in makefile and "torch==2.13.0" in makefile


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text().splitlines()
    head = "\n".join(readme[:15])
    assert "make demo" in head and "make test" in head
