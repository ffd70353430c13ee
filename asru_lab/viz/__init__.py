"""Figures. Visualisation only: everything shown here was computed elsewhere.

One module per part of the method: `locate` (stage 1.1), `training` (stage 1.2's losses and
stage 2's reward dashboard), `explorer` (the notebook's steering explorer), `reproduce` (the
paper's comparison), `causal` (causal tracing's heatmaps); `pages` writes figures to HTML/PNG;
`tables` gives every HTML table its one style.
Every figure function is importable from `asru_lab.viz` directly.
"""

from asru_lab.viz.causal import COMPONENT_TITLES, GROUP_LABELS, causal_heatmap
from asru_lab.viz.explorer import next_token_figure, steering_explorer
from asru_lab.viz.locate import (
    layer_cosine_heatmap,
    separability_heatmap,
    sweep_chart,
    write_locate_page,
)
from asru_lab.viz.pages import figures_html, save_figure
from asru_lab.viz.reproduce import (
    CATEGORY_COLORS,
    METHOD_LABELS,
    quality_bars,
    tradeoff_scatter,
    write_reproduce_figures,
)
from asru_lab.viz.tables import answer_changes_table, html_table
from asru_lab.viz.training import (
    REWARD_PANELS,
    LiveRewardDashboard,
    latest_samples,
    projection_histograms,
    read_metrics,
    redirect_loss_chart,
    reward_figure,
    samples_table_html,
    step_axis,
    write_reward_dashboard,
)

__all__ = [
    "CATEGORY_COLORS",
    "COMPONENT_TITLES",
    "GROUP_LABELS",
    "LiveRewardDashboard",
    "METHOD_LABELS",
    "REWARD_PANELS",
    "answer_changes_table",
    "causal_heatmap",
    "figures_html",
    "html_table",
    "latest_samples",
    "layer_cosine_heatmap",
    "next_token_figure",
    "projection_histograms",
    "quality_bars",
    "read_metrics",
    "redirect_loss_chart",
    "reward_figure",
    "samples_table_html",
    "save_figure",
    "separability_heatmap",
    "steering_explorer",
    "step_axis",
    "sweep_chart",
    "tradeoff_scatter",
    "write_locate_page",
    "write_reproduce_figures",
    "write_reward_dashboard",
]
