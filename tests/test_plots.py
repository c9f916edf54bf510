"""The eval's plots read at a glance: log axes labelled in plain numbers (16, 32, 64, ...; 0.0002 $), no crowded
minor labels, and cost in $ per 1,000 correct answers."""

import re

from distill import plots


def _model(name: str, role: str, scale: float) -> dict:
    budgets = [{"budget": b, "mean_thinking_tokens": b * 0.9, "accuracy": min(1.0, b / 300), "accuracy_std": 0.02,
                "tokens_per_sample": b + 12, "cost_per_correct": 3e-7 * scale * b / 16,
                "flops_per_correct": 2e9 * scale * b} for b in (16, 32, 64, 128, 256)]
    parallel = [{"k": k, "tokens_per_problem": 280 * k, "maj_at_k": 0.9, "pass_at_k": 0.95} for k in (1, 2)]
    return {"name": name, "role": role, "params": int(7e5 * scale), "budgets": budgets, "parallel": parallel,
            "cost": {"price_per_hour": 0.1}}


def _labels(ax, minor: bool = False) -> list[str]:
    """The x tick labels drawn inside the axis's view."""
    ax.figure.canvas.draw()
    lo, hi = sorted(ax.get_xlim())
    ticks = ax.xaxis.get_minorticklocs() if minor else ax.xaxis.get_majorticklocs()
    labels = ax.xaxis.get_ticklabels(minor=minor)
    return [t.get_text() for v, t in zip(ticks, labels) if lo <= v <= hi and t.get_text()]


def test_log_axes_have_plain_labels_and_cost_is_per_1000_correct():
    models = [_model("teacher", "teacher", 1.0), _model("student", "student", 0.3)]
    [ax] = plots.thinking_figure(models).axes
    assert {"16", "32", "64", "128"} <= set(_labels(ax)) and not _labels(ax, minor=True)
    cost, _flops = plots.cost_figure(models).axes
    assert "$ per 1,000 correct answers" in cost.get_xlabel()
    labels = _labels(cost)
    assert labels and all(re.fullmatch(r"[0-9][0-9,.]*", x) for x in labels), labels  # 0.0002, not 2x10^-4
    assert len(set(labels)) == len(labels) and "0" not in labels, labels
    assert not _labels(cost, minor=True)
    x = cost.lines[0].get_xdata()
    assert abs(x[0] - 3e-7 * 1000) < 1e-12  # $ per correct x 1,000
    for ax in plots.scaling_figure(models).axes[:2]:
        labels = _labels(ax)
        assert labels and all(re.fullmatch(r"[0-9][0-9,.]*", x) for x in labels), labels
        assert not _labels(ax, minor=True)
