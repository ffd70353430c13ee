"""What a notebook keeps when it is saved: a finished progress bar leaves its last line, not the
"0%" it was displayed with, and the stage 2 dashboard leaves a static figure and table, not the
name of a widget (issue #33, item 5). Each runs in a real kernel (nbclient applies the display
updates to the saved outputs as JupyterLab does)."""

from __future__ import annotations

import json

import nbformat
from nbclient import NotebookClient


def _run(*cells: str) -> list:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    return notebook.cells


def _mimes(outputs: list) -> list[set]:
    return [set(o.get("data", {})) for o in outputs if o.output_type == "display_data"]


def test_a_finished_bar_leaves_its_last_line_and_a_hidden_one_nothing():
    cells = _run(
        "from asru_lab.progress import tqdm\nfor _ in tqdm(range(5), desc='counting'):\n    pass",
        "bar = tqdm(total=10, desc='stopped early')\nbar.update(3)\nbar.close()",
        "for _ in tqdm(range(3), desc='gone', leave=False):\n    pass",
    )
    done, early, gone = (c.outputs for c in cells)
    assert _mimes(done) == [{"text/plain"}]  # no widget left to lose
    assert "counting: 100%" in done[0].data["text/plain"] and "5/5" in done[0].data["text/plain"]
    assert "stopped early:  30%" in early[0].data["text/plain"]
    assert all(not o.data.get("text/plain") for o in gone if o.output_type == "display_data")


def test_the_reward_dashboard_leaves_a_static_figure_and_its_samples(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    sample = {"split": "forget", "step": 2, "question": "Who?", "completion": "No idea.",
              "reward": 0.8}  # fmt: skip
    rows = [
        {"step": 1, "reward": 0.2, "rewards/contextual/mean": 0.2},
        {"step": 2, "reward": 0.5, "rewards/contextual/mean": 0.5, "samples": [sample]},
    ]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (cell,) = _run(
        "from types import SimpleNamespace\nfrom asru_lab import viz\n"
        f"d = viz.LiveRewardDashboard(['contextual'], {str(metrics)!r}, steps=2)\n"
        "d.show()\n"
        "d.on_train_end(None, SimpleNamespace(is_world_process_zero=True, global_step=2), None)"
    )
    shown = [o for o in cell.outputs if o.output_type == "display_data"]
    assert len(shown) == 3  # the status line, the figure, the samples
    assert "steps trained" in shown[0].data["text/html"]
    assert not any("application/vnd.jupyter.widget-view+json" in o.data for o in shown)
    figure = next(o.data for o in shown if "application/vnd.plotly.v1+json" in o.data)
    traces = figure["application/vnd.plotly.v1+json"]["data"]
    contextual = next(t for t in traces if t.get("name") == "contextual")
    assert list(contextual["y"]) == [0.2, 0.5]
    table = next(o.data["text/html"] for o in shown if "text/html" in o.data and "No idea" in
                 o.data["text/html"])  # fmt: skip
    assert "Who?" in table
