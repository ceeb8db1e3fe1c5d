"""The report's figures of the refit: learning curves, and how the refit net did on the test
split.

Read from the refit's files (``hpo.results.refit``), by kind:

- ``history``: training and validation loss per epoch, for every study;
- ``confusion_matrix``: a classification's test split, true classes in rows;
- ``predictions``: a regression's test rows: predicted against true values (on the diagonal
  when perfect), and residuals (true − predicted) against the input ``x`` when there is one,
  else against the prediction, where a pattern shows what the net misses;
- ``curve``: a regression on one input: the training points, the net on a dense grid and the
  noise-free function where the dataset has one (``synthetic_regression``).

A refit made before ``predictions.csv`` existed gets a note asking for a new refit, not an
error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from hpo.results.report_section import Section

LEARNING_CURVES = "Learning curves (refit)"
CONFUSION = "Confusion matrix on the test split (refit)"
PREDICTED = "Predicted vs true on the test split (refit)"
RESIDUALS = "Residuals on the test split (refit)"
CURVE = "Fitted curve over the data (refit)"


def refit_sections(
    name: str, files: dict[str, Path], missing: str, metrics: dict[str, Any] | None
) -> list[Section]:
    """The refit's figures, or a note saying how to get them.

    Args:
        name: The study's name, for the hint ``hpo refit NAME``.
        files: The refit's files by kind (``history``, ``confusion_matrix``, ``predictions``,
            ``curve``); empty before any refit.
        missing: Why a recorded refit's files could not be read, or "".
        metrics: The refit's ``metrics.json``, or None.
    """
    history_path = files.get("history")
    if history_path is None:
        note = (
            f"The best configuration has not been refit yet; run hpo refit {name}, "
            "then write the report again to add its learning curves and test-split plots."
        )
        if missing:
            note = f"The study was refit, but its learning curves could not be read: {missing}."
        return [Section("Learning curves", note=note)]
    sections = [Section(LEARNING_CURVES, figure=_learning_curves(history_path))]
    if "confusion_matrix" in files:
        sections.append(Section(CONFUSION, figure=_confusion(files["confusion_matrix"])))
    regression = metrics is not None and "mse" in metrics.get("test", {})
    if regression and "predictions" not in files:
        sections.append(
            Section(
                PREDICTED,
                note="This refit kept no test predictions (it predates predictions.csv); "
                f"run hpo refit {name} again to add predicted-vs-true and residual plots.",
            )
        )
    elif regression:
        predictions = pd.read_csv(files["predictions"])
        sections.append(Section(PREDICTED, figure=_predicted_vs_true(predictions), height=520))
        sections.append(Section(RESIDUALS, figure=_residuals(predictions)))
    if "curve" in files:
        curve = json.loads(files["curve"].read_text(encoding="utf-8"))
        sections.append(Section(CURVE, figure=_fitted_curve(curve), caption=_curve_caption(curve)))
    return sections


def _learning_curves(path: Path) -> go.Figure:
    history = pd.DataFrame(json.loads(path.read_text(encoding="utf-8")))
    figure = go.Figure()
    for column, label in (("train_loss", "training loss"), ("valid_loss", "validation loss")):
        if column in history:
            figure.add_trace(
                go.Scatter(x=history["epoch"], y=history[column], mode="lines+markers", name=label)
            )
    figure.update_layout(xaxis_title="epoch", yaxis_title="loss", template="plotly_white")
    return figure


def _confusion(path: Path) -> go.Figure:
    matrix = pd.read_csv(path, index_col=0)
    figure = go.Figure(
        go.Heatmap(
            z=matrix.to_numpy(),
            x=[str(c) for c in matrix.columns],
            y=[str(i) for i in matrix.index],
            text=matrix.to_numpy(),
            texttemplate="%{text}",
            colorscale="Blues",
            hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>",
        )
    )
    figure.update_layout(template="plotly_white")
    figure.update_xaxes(title_text="predicted class", type="category")
    figure.update_yaxes(title_text="true class", type="category", autorange="reversed")
    return figure


def _predicted_vs_true(predictions: pd.DataFrame) -> go.Figure:
    low = float(min(predictions["y_true"].min(), predictions["y_pred"].min()))
    high = float(max(predictions["y_true"].max(), predictions["y_pred"].max()))
    pad = 0.05 * ((high - low) or 1.0)
    figure = go.Figure(
        [
            go.Scatter(
                x=[low - pad, high + pad],
                y=[low - pad, high + pad],
                mode="lines",
                name="perfect prediction",
                line={"dash": "dash", "color": "#999"},
                hoverinfo="skip",
            ),
            go.Scatter(
                x=predictions["y_true"],
                y=predictions["y_pred"],
                mode="markers",
                name=f"test rows ({len(predictions)})",
                marker={"size": 6, "opacity": 0.7},
                hovertemplate="true %{x:.4g}, predicted %{y:.4g}<extra></extra>",
            ),
        ]
    )
    figure.update_layout(template="plotly_white")
    figure.update_xaxes(title_text="true value", range=[low - pad, high + pad], constrain="domain")
    # Equal scales, so the distance from the diagonal reads the same on both axes.
    figure.update_yaxes(
        title_text="predicted value", range=[low - pad, high + pad], scaleanchor="x"
    )
    return figure


def _residuals(predictions: pd.DataFrame) -> go.Figure:
    by_input = "x" in predictions
    x = predictions["x"] if by_input else predictions["y_pred"]
    residual = predictions["y_true"] - predictions["y_pred"]
    figure = go.Figure(
        go.Scatter(
            x=x,
            y=residual,
            mode="markers",
            name="test rows",
            marker={"size": 6, "opacity": 0.7},
            hovertemplate="%{x:.4g}: residual %{y:.4g}<extra></extra>",
        )
    )
    figure.add_hline(y=0, line={"dash": "dash", "color": "#999"})
    figure.update_layout(template="plotly_white", showlegend=False)
    figure.update_xaxes(title_text="x (the input)" if by_input else "predicted value")
    figure.update_yaxes(title_text="residual (true − predicted)")
    return figure


def _fitted_curve(curve: dict[str, Any]) -> go.Figure:
    figure = go.Figure(
        go.Scatter(
            x=curve["train_x"],
            y=curve["train_y"],
            mode="markers",
            name="training points",
            marker={"size": 5, "color": "#9aa5b1", "opacity": 0.8},
            hovertemplate="x %{x:.4g}, y %{y:.4g}<extra>training point</extra>",
        )
    )
    if curve.get("y_function") is not None:
        figure.add_trace(
            go.Scatter(
                x=curve["x"],
                y=curve["y_function"],
                mode="lines",
                name=f"true function {curve.get('function') or ''}".strip(),
                line={"dash": "dash", "color": "#e45756", "width": 2},
            )
        )
    figure.add_trace(
        go.Scatter(
            x=curve["x"],
            y=curve["y_pred"],
            mode="lines",
            name="refit net's prediction",
            line={"color": "#1f77b4", "width": 3},
        )
    )
    figure.update_layout(template="plotly_white", legend={"orientation": "h", "y": -0.18})
    figure.update_xaxes(title_text="x")
    figure.update_yaxes(title_text="y")
    return figure


def _curve_caption(curve: dict[str, Any]) -> str:
    shown, total = len(curve["train_x"]), curve.get("n_train", len(curve["train_x"]))
    points = (
        f"{shown} training points" if shown == total else f"{shown} of {total} training points"
    )
    truth = " and the noise-free function" if curve.get("y_function") is not None else ""
    return (
        f"The refit net's prediction on {len(curve['x'])} evenly spaced x, over the {points}"
        f"{truth}; where there are no training points, the net interpolates."
    )
