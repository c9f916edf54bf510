"""The eval plots: every model on one figure, teacher drawn heavier than the students."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(m: dict) -> str:
    p = m["params"]
    size = f"{p / 1e9:.1f}B" if p >= 1e9 else f"{p / 1e6:.2f}M" if p >= 1e5 else f"{p / 1e3:.0f}k"
    return f"{m['name']} ({m['role']}, {size})"


def _plain_log_x(ax, base: int = 10) -> None:
    """A log x axis labelled in plain numbers (16, 32, 64; 100, 200, 500, 1,000; 0.0002), a few majors and no
    minor labels: matplotlib's defaults read "3x10^1" and crowd the minor ticks. Call it after plotting: the
    ticks are picked from the data's range (2 to 7 of them)."""
    import math

    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.set_xscale("log", base=base)
    lo, hi = sorted(ax.get_xlim())
    ticks: list[float] = []
    for mantissas in ([1.0] if base == 2 else [1.0, 2.0, 5.0], [1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0]):
        first, last = math.floor(math.log(lo, base)), math.ceil(math.log(hi, base))
        ticks = [m * base ** e for e in range(first, last + 1) for m in mantissas if lo <= m * base ** e <= hi]
        if len(ticks) >= 3:
            break
    while len(ticks) > 7:  # every other one until they fit
        ticks = ticks[::2]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(lo, hi)


def _plain(v: float, _pos=None) -> str:
    """1,000 / 64 / 0.0002: thousands separated, small values as decimals (never 2e-04)."""
    import numpy as np

    return f"{v:,.0f}" if v >= 1 else np.format_float_positional(v, precision=3, fractional=False, trim="-")


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)


def _style(m: dict) -> dict:
    return {"linewidth": 2.6, "marker": "s", "color": "black"} if m["role"] == "teacher" else \
        {"linewidth": 1.6, "marker": "o"}


def accuracy_vs_thinking(models: list[dict], path: Path) -> None:
    _save(thinking_figure(models), path)


def thinking_figure(models: list[dict]):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m in models:
        xs = [b["mean_thinking_tokens"] for b in m["budgets"]]
        ys = [b["accuracy"] for b in m["budgets"]]
        ax.errorbar(xs, ys, yerr=[b["accuracy_std"] for b in m["budgets"]], capsize=3, label=_label(m),
                    **_style(m))
    ax.set(xlabel="mean thinking tokens used (budget forcing)", ylabel="accuracy (held-out)",
           ylim=(0, 1.02), title="Accuracy vs thinking budget")
    _plain_log_x(ax, base=2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def accuracy_vs_cost(models: list[dict], path: Path) -> None:
    _save(cost_figure(models), path)


def cost_figure(models: list[dict]):
    """Accuracy against what a correct answer costs, one point per budget: measured dollars per 1,000 correct
    answers (wall time on this machine at its price) on the left, FLOPs per correct answer (2 x params x tokens)
    on the right. The two disagree where a model's speed is not what its size suggests (per-token overheads)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10.4, 4.2), sharey=True)
    price = models[0]["cost"]["price_per_hour"] if models else 0
    dollars = f"measured \\$ per 1,000 correct answers (machine at \\${price}/h)"  # escaped: not mathtext
    for ax, key, scale, xlabel in ((axes[0], "cost_per_correct", 1000, dollars),
                                   (axes[1], "flops_per_correct", 1, "FLOPs per correct answer")):
        drawn = 0
        for m in models:
            pts = [(b[key] * scale, b["accuracy"]) for b in m["budgets"] if b.get(key)]
            if pts:
                ax.plot(*zip(*pts), label=_label(m), **_style(m))
                drawn += 1
        ax.set(xlabel=xlabel, ylim=(0, 1.02))
        if key == "cost_per_correct":
            _plain_log_x(ax)
        else:
            ax.set_xscale("log")  # FLOPs: powers of ten are the plain way to read them
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:  # say so rather than leave a blank figure
            ax.text(0.5, 0.5, "no correct answers: undefined", ha="center", transform=ax.transAxes)
    axes[0].set_ylabel("accuracy (held-out)")
    fig.suptitle("Accuracy vs serving cost (one point per budget)")
    return fig


def scaling_axes(models: list[dict], path: Path) -> None:
    _save(scaling_figure(models), path)


def scaling_figure(models: list[dict]):
    """Per model, the two ways of spending test-time compute on the same axes: thinking longer (the budget
    sweep, one sample) and sampling more (maj@k and pass@k over k samples at the largest budget)."""
    plt = _plt()
    cols = min(len(models), 4)
    rows = -(-len(models) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False, sharey=True)
    for ax, m in zip(axes.flat, models):
        serial = [(b["tokens_per_sample"], b["accuracy"]) for b in m["budgets"]]
        ax.plot(*zip(*serial), marker="o", label="serial: budget forcing")
        par = m.get("parallel") or []
        if par:
            xs = [r["tokens_per_problem"] for r in par]
            ax.plot(xs, [r["maj_at_k"] for r in par], marker="s", label="parallel: maj@k")
            ax.plot(xs, [r["pass_at_k"] for r in par], marker="^", linestyle="--", label="pass@k (oracle)")
            if all("best_of_k" in r for r in par):
                ax.plot(xs, [r["best_of_k"] for r in par], marker="D", label="parallel: best-of-k (verifier)")
        ax.set(title=_label(m), xlabel="generated tokens per problem", ylim=(0, 1.02))
        _plain_log_x(ax)
        ax.title.set_fontsize(8)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(models):]:
        ax.axis("off")
    axes[0][0].set_ylabel("accuracy (held-out)")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Thinking longer vs sampling more")
    return fig


def cascades(cascades: dict, path: Path) -> None:
    _save(frontier_figure(cascades), path)


def frontier_figure(cascades: dict):
    """eval's cascades on the test split: every model alone (a line over its budgets) and every cascade (its
    calibrated setting as a star, the other settings of its calibration frontier as a dotted line), accuracy
    against measured dollars per 1,000 correct answers."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    singles: dict[str, list] = {}
    for s in cascades["singles"]:
        if s["cost_per_correct"]:
            singles.setdefault(s["model"], []).append((s["cost_per_correct"] * 1000, s["accuracy"]))
    for name, pts in singles.items():
        ax.plot(*zip(*pts), marker="o", linewidth=1.2, alpha=0.7, label=f"{name} alone (budgets)")
    for c in cascades["cascades"]:
        pts = [(f["cost_per_correct"] * 1000, f["accuracy"]) for f in c["frontier"] if f["cost_per_correct"]]
        line = ax.plot(*zip(*pts), linestyle=":", linewidth=1)[0] if pts else None
        if c["test"]["cost_per_correct"]:
            ax.plot(c["test"]["cost_per_correct"] * 1000, c["test"]["accuracy"], marker="*", markersize=13,
                    linestyle="none", color=line.get_color() if line else None, label=f"cascade {c['name']}")
    ax.set(xlabel="measured \\$ per 1,000 correct answers", ylabel="accuracy (test split of the held-out)",
           ylim=(0, 1.02), title="Cascades against every model alone")
    if singles:
        _plain_log_x(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return fig
