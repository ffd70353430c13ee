"""The trade-off figure reads at a glance: coinciding methods share a label, no label covers
another or a marker, and both axes span what the methods do."""

from __future__ import annotations

from asru_lab.viz.reproduce import _placed_labels, retain_accuracy, tradeoff_scatter


def row(method, ratio, ue, recall, mcq=1.0):
    return {"method": method, "forget_ratio": ratio, "ue": ue, "gq": 1.0,
            "retain.leak_rate": recall, "retain.mcq_acc": mcq}  # fmt: skip


ROWS = [
    row("vanilla", 0.1, 0.0, 1.0),
    row("ga", 0.1, 0.0, 1.0),  # on top of vanilla: one shared label
    row("npo", 0.1, 0.01, 0.99),
    row("steer_only", 0.1, 0.9, 0.98),
    row("asru", 0.1, 0.92, 0.98),  # next to steer_only: its label must not cover it
    row("ga_collapsed", 0.1, 0.88, 0.05, 0.7),
]


def test_labels_are_shared_when_markers_coincide_and_never_overlap():
    fig = tradeoff_scatter(ROWS)
    texts = [a.text for a in fig.layout.annotations]
    assert any("vanilla" in t and "GA" in t for t in texts)
    assert sum("GA" in t.split("<br>")[0] for t in texts) == 1  # GA labelled once
    x_range, y_range = list(fig.layout.xaxis.range), list(fig.layout.yaxis.range)
    assert x_range[0] < 0 and x_range[1] > 1
    assert y_range[0] < min(retain_accuracy(r) for r in ROWS) and y_range[1] > 1.0
    boxes = []
    for text, x, y, shift, side in _placed_labels(ROWS, x_range, y_range, several=False):
        lines = text.split("<br>")
        px = 650 / (x_range[1] - x_range[0])
        py = 380 / (y_range[1] - y_range[0])
        width = 6.5 * max(map(len, lines))
        left = (x - x_range[0]) * px + (9 if side == "left" else -9 - width)
        top = (y_range[1] - y) * py - 7 + shift
        boxes.append((left, left + width, top, top + 15 * len(lines)))
        assert 0 <= left and left + width <= 650  # inside the plot, clear of the legend
    for k, a in enumerate(boxes):
        for b in boxes[k + 1 :]:
            assert not (a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]), (a, b)
