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


def _style(m: dict) -> dict:
    return {"linewidth": 2.6, "marker": "s", "color": "black"} if m["role"] == "teacher" else \
        {"linewidth": 1.6, "marker": "o"}


def accuracy_vs_thinking(models: list[dict], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m in models:
        xs = [b["mean_thinking_tokens"] for b in m["budgets"]]
        ys = [b["accuracy"] for b in m["budgets"]]
        ax.errorbar(xs, ys, yerr=[b["accuracy_std"] for b in m["budgets"]], capsize=3, label=_label(m),
                    **_style(m))
    ax.set(xscale="log", xlabel="mean thinking tokens used (budget forcing)", ylabel="accuracy (held-out)",
           ylim=(0, 1.02), title="Accuracy vs thinking budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def accuracy_vs_cost(models: list[dict], path: Path) -> None:
    """Accuracy against what a correct answer costs, one point per budget: measured dollars (wall time on this
    machine) on the left, FLOPs (2 x params x tokens) on the right. The two disagree where a model's speed is
    not what its size suggests (per-token overheads)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10.4, 4.2), sharey=True)
    price = models[0]["cost"]["price_per_hour"] if models else 0
    dollars = f"measured cost per correct answer (\\$, machine at \\${price}/h)"  # escaped: not mathtext
    for ax, key, xlabel in ((axes[0], "cost_per_correct", dollars),
                            (axes[1], "flops_per_correct", "FLOPs per correct answer")):
        drawn = 0
        for m in models:
            pts = [(b[key], b["accuracy"]) for b in m["budgets"] if b.get(key)]
            if pts:
                ax.plot(*zip(*pts), label=_label(m), **_style(m))
                drawn += 1
        ax.set(xscale="log", xlabel=xlabel, ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:  # say so rather than leave a blank figure
            ax.text(0.5, 0.5, "no correct answers: undefined", ha="center", transform=ax.transAxes)
    axes[0].set_ylabel("accuracy (held-out)")
    fig.suptitle("Accuracy vs serving cost (one point per budget)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def scaling_axes(models: list[dict], path: Path) -> None:
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
        ax.set(xscale="log", title=_label(m), xlabel="generated tokens per problem", ylim=(0, 1.02))
        ax.title.set_fontsize(8)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(models):]:
        ax.axis("off")
    axes[0][0].set_ylabel("accuracy (held-out)")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Thinking longer vs sampling more")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
