"""The report's figures of the search: how the score moved, which parameters mattered, where
the trials sat in the space, and each trial's running mean over its folds.

Optuna draws the optimization history, the parameter importances and the parallel
coordinates. Two are drawn here from the trials, because Optuna's are hard to read for a
study's spec:

- **Slices**: one small plot per searched parameter in a grid of 2 or 3 columns (Optuna puts
  them all in one row), x on a log axis where the spec's space says ``log: true`` with one
  readable tick per decade (or 1-3 / 1-2-5 steps in a narrow range), categorical choices as
  plain text in the spec's order (Optuna quotes them: ``'relu'``), y the metric on one scale
  for all, colour the trial number.
- **Running mean score after each fold**: one line per trial, named in the legend
  (``trial 7``, ``(best)``, ``(pruned)``) and in the hover with its parameters in short;
  Optuna's lines are anonymous.

Every figure names the study's metric (``hpo.spec.objectives.metric_name``) on its axes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna import visualization
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

from hpo.results.report_section import Section
from hpo.spec.objectives import chosen_number
from hpo.spec.pruning import reports_epochs
from hpo.spec.spaces import CategoricalParam
from hpo.spec.study_spec import StudySpec

#: The Pareto front's figure, first for a study of several objectives.
PARETO_TITLE = "Pareto front"
#: The search's figures, in page order.
SEARCH_TITLES = (
    "Optimization history",
    "Parameter importances",
    "Parallel coordinates",
    "Slices",
    "Running mean score after each fold",
)
#: Height of one row of slices, in pixels.
SLICE_ROW_HEIGHT = 270
#: Most ticks on a log axis; more decades keep every other one.
MAX_LOG_TICKS = 6


def search_sections(study: optuna.Study, spec: StudySpec, metric: str) -> list[Section]:
    """The search's figures, each naming ``metric``; notes where a figure cannot be drawn."""
    history, importances, parallel, slices, folds = SEARCH_TITLES
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        note = (
            "No trial has completed yet: run the study first "
            f"(hpo worker --study {study.study_name})."
        )
        return [Section(title, note=note) for title in SEARCH_TITLES]

    varying = varying_params(complete, spec)
    no_params = "No searched parameter takes more than one value, so there is nothing to plot."
    named: dict[str, Any] = {"target_name": metric}
    sections = []
    if len(study.directions) > 1:
        # Optuna's figures of one objective are drawn for the first (the CV score).
        named["target"] = first_objective
        sections.append(pareto_section(study))
    sections.append(_plotted(history, visualization.plot_optimization_history, study, **named))
    if len(complete) < 2:
        sections.append(
            Section(
                importances,
                note="Parameter importances need at least 2 completed trials; "
                f"this study has {len(complete)}.",
            )
        )
    elif not varying:
        sections.append(Section(importances, note=no_params))
    else:
        sections.append(
            _plotted(
                importances, visualization.plot_param_importances, study, params=varying, **named
            )
        )
    if varying:
        sections.append(
            _plotted(
                parallel,
                visualization.plot_parallel_coordinate,
                study,
                params=varying,
                **named,
            )
        )
        rows = math.ceil(len(varying) / slice_columns(len(varying)))
        sections.append(
            Section(
                slices,
                figure=slice_figure(complete, spec, metric, varying),
                height=60 + rows * SLICE_ROW_HEIGHT,
            )
        )
    else:
        sections.extend([Section(parallel, note=no_params), Section(slices, note=no_params)])
    figure = fold_figure(
        study.get_trials(deepcopy=False),
        metric,
        best=chosen_number(study, spec),
        over_epochs=reports_epochs(spec),
    )
    if figure is None:
        note = "Nothing to draw: no trial reported a score after a fold."
        if len(study.directions) > 1:
            note = "A study of several objectives reports no score after each fold to Optuna."
        sections.append(Section(folds, note=note))
    else:
        sections.append(Section(folds, figure=figure))
    return sections


def first_objective(trial: FrozenTrial) -> float:
    """A trial's first objective: the CV score."""
    return float(trial.values[0])


def pareto_section(study: optuna.Study) -> Section:
    """Optuna's Pareto-front figure over the first two objectives (three when there are
    exactly three); infeasible trials apart, as Optuna draws them from their constraints."""
    names = list(study.metric_names or [f"objective {i}" for i in range(len(study.directions))])
    shown = 3 if len(names) == 3 else 2
    return _plotted(
        PARETO_TITLE,
        visualization.plot_pareto_front,
        study,
        target_names=names[:shown],
        targets=lambda trial: trial.values[:shown],
    )


def varying_params(trials: list[FrozenTrial], spec: StudySpec) -> list[str]:
    """The searched parameters that take more than one value among ``trials``, in the spec's
    order (then any the spec does not name, as the trials have them)."""
    values: dict[str, set[str]] = {}
    for trial in trials:
        for key, value in trial.params.items():
            values.setdefault(key, set()).add(repr(value))
    order = [*spec.space, *(key for key in values if key not in spec.space)]
    return [key for key in order if len(values.get(key, ())) > 1]


def slice_columns(n_params: int) -> int:
    """Columns of the slices' grid: 1 for one parameter, 2 up to four, else 3."""
    return 1 if n_params == 1 else 2 if n_params <= 4 else 3


def slice_figure(
    trials: list[FrozenTrial], spec: StudySpec, metric: str, params: list[str]
) -> go.Figure:
    """One scatter per parameter in a grid: x its value, y the trial's ``metric``, colour the
    trial number.

    Args:
        trials: Completed trials.
        spec: The study's spec; its space says which axes are logarithmic or categorical.
        metric: The y axes' title.
        params: The parameters to plot, one subplot each, in this order.
    """
    columns = slice_columns(len(params))
    rows = math.ceil(len(params) / columns)
    height = 60 + rows * SLICE_ROW_HEIGHT
    figure = make_subplots(
        rows=rows,
        cols=columns,
        subplot_titles=params,
        shared_yaxes="all",
        horizontal_spacing=0.06,
        vertical_spacing=min(0.3, 90 / height),
    )
    for index, name in enumerate(params):
        row, col = divmod(index, columns)
        plotted = [t for t in trials if name in t.params]
        scale = axis_scale(name, spec, plotted)
        values = [t.params[name] for t in plotted]
        x = [choice_label(v) for v in values] if scale == "category" else values
        figure.add_trace(
            go.Scatter(
                x=x,
                y=[first_objective(t) for t in plotted],
                mode="markers",
                name=name,
                showlegend=False,
                marker={
                    "color": [t.number for t in plotted],
                    "coloraxis": "coloraxis",
                    "size": 8,
                    "line": {"width": 0.5, "color": "white"},
                },
                customdata=[[t.number, in_short(t.params)] for t in plotted],
                hovertemplate=(
                    f"trial %{{customdata[0]}}<br>{name} = %{{x}}<br>{metric} = %{{y:.4g}}"
                    "<br>%{customdata[1]}<extra></extra>"
                ),
            ),
            row=row + 1,
            col=col + 1,
        )
        axis = _x_axis(scale, name, spec, values)
        if scale == "category":
            # Every choice on the axis, also those no trial drew: an invisible point each.
            figure.add_trace(
                go.Scatter(
                    x=axis["categoryarray"],
                    y=[None] * len(axis["categoryarray"]),
                    mode="markers",
                    showlegend=False,
                    hoverinfo="skip",
                ),
                row=row + 1,
                col=col + 1,
            )
        figure.update_xaxes(**axis, row=row + 1, col=col + 1, automargin=True)
    figure.update_yaxes(title_text=metric, col=1, nticks=6)
    figure.update_annotations(font_size=13)
    numbers = [t.number for t in trials]
    colorbar: dict[str, Any] = {"title": {"text": "trial"}, "tickformat": "d"}
    if max(numbers) - min(numbers) <= 10:
        colorbar["dtick"] = 1
    figure.update_layout(
        template="plotly_white",
        coloraxis={
            "colorscale": "Viridis",
            "cmin": min(numbers),
            "cmax": max(numbers),
            "colorbar": colorbar,
        },
        margin={"t": 40, "b": 40, "l": 60, "r": 20},
    )
    return figure


def axis_scale(name: str, spec: StudySpec, trials: list[FrozenTrial]) -> str:
    """``category``, ``log`` or ``linear``: what the spec's space declares for ``name``, else
    what its trials' Optuna distribution says."""
    param = spec.space.get(name)
    if param is not None:
        if isinstance(param, CategoricalParam):
            return "category"
        return "log" if param.log else "linear"
    distribution = next(t.distributions[name] for t in trials if name in t.distributions)
    if isinstance(distribution, CategoricalDistribution):
        return "category"
    return "log" if getattr(distribution, "log", False) else "linear"


def choice_label(value: Any) -> str:
    """A categorical value as plain text: ``relu``, ``128``, ``None`` (no quotes)."""
    return str(value)


def log_ticks(low: float, high: float) -> list[float]:
    """Tick values for a log axis over [low, high]: powers of ten, or 1-3 or 1-2-5 steps when
    fewer than 3 powers fall inside, or the two ends in a narrower range; at most
    ``MAX_LOG_TICKS`` (every other one beyond)."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    ticks: list[float] = []
    for mantissas in ((1,), (1, 3), (1, 2, 5)):
        ticks = [
            float(f"{m}e{e}")
            for e in range(first, last + 1)
            for m in mantissas
            if low <= float(f"{m}e{e}") <= high
        ]
        if len(ticks) >= 3:
            break
    if len(ticks) < 2:  # a range narrower than 1-2-5 steps: its ends, to 2 digits
        ticks = sorted({float(f"{low:.2g}"), float(f"{high:.2g}")})
    while len(ticks) > MAX_LOG_TICKS:
        ticks = ticks[::2]
    return ticks


def _x_axis(scale: str, name: str, spec: StudySpec, values: list[Any]) -> dict[str, Any]:
    """The plotly axis settings of one slice: its type, range and readable ticks."""
    param = spec.space.get(name)
    if scale == "category":
        choices = param.choices if isinstance(param, CategoricalParam) else values
        labels = list(dict.fromkeys(choice_label(c) for c in choices))
        return {
            "type": "category",
            "categoryorder": "array",
            "categoryarray": labels,
            "range": [-0.5, len(labels) - 0.5],
        }
    bounds = [getattr(param, "low", None), getattr(param, "high", None)]
    numbers = [float(v) for v in (*values, *bounds) if isinstance(v, int | float)]
    low, high = min(numbers), max(numbers)
    if scale == "log":
        ticks = log_ticks(low, high)
        span = math.log10(high) - math.log10(low) or 1.0
        return {
            "type": "log",
            "range": [math.log10(low) - 0.05 * span, math.log10(high) + 0.05 * span],
            "tickvals": ticks,
            "ticktext": [f"{tick:g}" for tick in ticks],
        }
    span = high - low or 1.0
    axis: dict[str, Any] = {
        "type": "linear",
        "range": [low - 0.05 * span, high + 0.05 * span],
        "nticks": 6,
    }
    if all(isinstance(v, int) for v in values) and high - low <= 10:
        axis["dtick"] = 1
    return axis


def fold_figure(
    trials: list[FrozenTrial],
    metric: str,
    *,
    best: int | None,
    over_epochs: bool = False,
) -> go.Figure | None:
    """Each trial's mean score after each fold, or after its epochs, one named line per trial;
    None when no trial reported one.

    Args:
        trials: The study's trials; those that reported are drawn.
        metric: Named on the y axis.
        best: The best trial's number: its line is drawn thicker and named ``(best)``; None
            when no trial is chosen (none feasible).
        over_epochs: the trials report epochs (``pruner.over``: epochs or both): the x axis
            counts epochs trained, a trial's fits one after another
            (``hpo.spec.pruning.EpochSteps``); else folds.
    """
    reported = sorted((t for t in trials if t.intermediate_values), key=lambda t: t.number)
    if not reported:
        return None
    figure = go.Figure()
    unit = "epoch" if over_epochs else "fold"
    for trial in reported:
        steps = sorted(trial.intermediate_values)
        state = "" if trial.state == TrialState.COMPLETE else f" ({trial.state.name.lower()})"
        label = f"trial {trial.number}{' (best)' if trial.number == best else state}"
        figure.add_trace(
            go.Scatter(
                x=[step + 1 for step in steps] if over_epochs else steps,
                y=[trial.intermediate_values[step] for step in steps],
                mode="lines+markers",
                name=label,
                # Many trials draw a thicket: the best one stands out of it.
                opacity=1.0 if trial.number == best else 0.6,
                line={
                    "width": 3.5 if trial.number == best else 1.5,
                    "dash": "dot" if trial.state == TrialState.PRUNED else "solid",
                },
                hovertemplate=(
                    f"<b>{label}</b><br>{in_short(trial.params)}<br>after {unit} %{{x}}: "
                    f"mean {metric} %{{y:.4g}}<extra></extra>"
                ),
            )
        )
    if over_epochs:
        figure.update_xaxes(title_text="epoch (a trial's fits one after another)")
        figure.update_yaxes(title_text=f"mean held-out {metric} of the folds")
    else:
        figure.update_xaxes(title_text="fold (0 = first)", dtick=1)
        figure.update_yaxes(title_text=f"mean {metric} of the folds so far")
    figure.update_layout(
        template="plotly_white",
        showlegend=True,
        margin={"t": 30, "b": 50},
    )
    return figure


def in_short(params: dict[str, Any]) -> str:
    """``lr=0.0123, module__hidden1=32``: a trial's searched values, floats to 3 digits."""
    return ", ".join(
        f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in params.items()
    )


def _plotted(
    title: str, plot: Callable[..., go.Figure], study: optuna.Study, **options: Any
) -> Section:
    """Optuna's figure ``plot(study, **options)``, or a note when it cannot be drawn."""
    try:
        figure = plot(study, **options)
    except (ValueError, RuntimeError, ZeroDivisionError) as error:
        return Section(title, note=f"Optuna could not draw this figure: {error}")
    if not figure.data:
        return Section(title, note="Nothing to draw: no trial recorded what this figure shows.")
    return Section(title, figure=figure)
