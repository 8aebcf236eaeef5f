"""The report's figures, drawn from the ``Report`` value (``se_nas.products.report_value``) and nothing else.

Accuracy against each cost objective (per-design means with their standard error, the per-design
front and its staircase, the confirmed designs, the r=16 baseline and the plain backbone), with a
zoomed lower panel on the front where designs that broke stretch the accuracy axis; the
hypervolume after each trial; the per-stage choice shares; the fANOVA importances.
"""
from __future__ import annotations

import io

import numpy as np

from ..design.pareto import pareto_front
from .report_value import AXES, Report, plotted, value_order
from ..record.study import Status


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def figures(rep: Report) -> dict[str, bytes]:
    """The report's figures as PNG bytes, by file name."""
    plt = _plt()
    out = {}
    for o in plotted(rep):
        out[f"pareto_{o.attr}.png"] = _png(plt, _pareto_plot(plt, rep, o.attr, o.label))
    out["hypervolume.png"] = _png(plt, _hv_plot(plt, rep))
    out["choices.png"] = _png(plt, _choice_plot(plt, rep))
    if rep.importances:
        out["importance.png"] = _png(plt, _importance_plot(plt, rep))
    return out


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _pareto_plot(plt, rep: Report, col: str, unit: str):
    """Each design at its mean accuracy over its seeds with a ± standard-error bar (single runs as
    faint dots behind), the per-design front in red with its 2-D staircase, the confirmed designs
    (same K fresh seeds) as squares, and the r=16 baseline and plain backbone as hollow markers.

    Designs that broke (accuracy near chance) stretch the accuracy axis, so the front crowds into
    one corner: where the front designs that trained and the confirmed front span less than half of
    the axis, a lower panel shows them again, zoomed on that band (same x axis)."""
    zoom = _zoom_band(rep, col)
    if zoom is None:
        fig, ax = plt.subplots(figsize=(7, 4.6))
        axes = [ax]
    else:
        fig, axes = plt.subplots(2, 1, figsize=(7, 8), sharex=True, gridspec_kw={"height_ratios": [1, 1.15]})
    for ax in axes:
        _draw_pareto(ax, rep, col)
        ax.grid(alpha=0.3)
        ax.set_ylabel("supernet score; confirmed: validation accuracy" if rep.supernet
                      else "validation accuracy (proxy)")
    axes[-1].set_xlabel(unit)
    axes[0].set_title(f"{rep.study}: accuracy against {next(o.short for o in plotted(rep) if o.attr == col)}")
    if zoom is not None:
        axes[1].set_ylim(*zoom)
        axes[1].set_title(f"zoomed on the front: accuracy {zoom[0]:.3f} to {zoom[1]:.3f}", fontsize=9)
        axes[0].axhspan(*zoom, color="#fff3c4", zorder=0, lw=0)  # where the lower panel looks
    # beside the axes, never over a point (savefig's tight bounding box makes room for it)
    axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, frameon=False)
    return fig


def _zoom_band(rep: Report, col: str) -> tuple[float, float] | None:
    """The accuracy band of the front designs that trained (in the upper half of the plotted accuracy
    range: a broken design can be on a 3-objective front by being cheap) and of the confirmed front,
    means ± standard error, padded; None where that band fills more than half of the range anyway."""
    f = rep.frame
    shown = f[f.status.isin([Status.COMPLETE.value, Status.STOPPED_EARLY.value])].accuracy.dropna().tolist()
    shown += [d.mean for d in rep.designs]
    if not shown:
        return None
    bottom, top = min(shown), max(shown)
    mid = (bottom + top) / 2

    def bars(ds):
        return [(d.mean - e, d.mean + e) for d in ds if getattr(d, col) is not None and d.mean >= mid
                for e in [0.0 if rep.supernet or d.sem(rep.noise) != d.sem(rep.noise) else d.sem(rep.noise)]]

    conf = rep.confirmation
    band = bars(rep.front) + (bars([d for d in conf.front if d.n]) if conf is not None else [])
    if not band:
        return None
    lo, hi = min(b[0] for b in band), max(b[1] for b in band)
    pad = max(0.12 * (hi - lo), 0.005)
    lo, hi = lo - pad, hi + pad
    return (lo, hi) if top > bottom and hi - lo < 0.5 * (max(top, hi) - min(bottom, lo)) else None


def _draw_pareto(ax, rep: Report, col: str) -> None:
    f = rep.frame
    runs = f[f.status.isin([Status.COMPLETE.value, Status.STOPPED_EARLY.value])]
    if len(runs):
        ax.scatter(runs[col], runs.accuracy, c="#d9d9d9", marker=".", s=16, zorder=1,
                   label="supernet paths (scores)" if rep.supernet else "single runs (one seed each)")
    on_front = {d.id for d in rep.front}

    def errbar(ds, color, marker, size, label, z, face=None, bars=True):
        ds = [d for d in ds if getattr(d, col) is not None]  # a latency the table can no longer give
        if not ds:
            return
        x = [getattr(d, col) for d in ds]
        y = [d.mean for d in ds]
        e = [d.sem(rep.noise) if bars and d.sem(rep.noise) == d.sem(rep.noise) else 0.0 for d in ds]
        ax.errorbar(x, y, yerr=e, fmt=marker, ms=size, color=color, mfc=face or color, ecolor=color, elinewidth=1,
                    capsize=2, label=label, zorder=z)

    errbar([d for d in rep.designs if d.id not in on_front], "#5b8cc0", "o", 4.5,
           "design: supernet score (not trained)" if rep.supernet else "design: mean ± s.e. over its seeds", 2,
           bars=not rep.supernet)  # a supernet score is one evaluation, not a mean over seeds
    errbar(rep.front, "#c0392b", "o", 5.5, f"{'supernet ranking' if rep.supernet else 'per-design'} Pareto front "
           f"({len(rep.objectives)} objectives)", 3, bars=not rep.supernet)
    if rep.designs:  # the 2-D front of this projection, over per-design means, as a staircase
        pts = np.array([[d.mean, getattr(d, col)] for d in rep.designs])
        m2 = pareto_front(pts, ("maximize", "minimize"))
        st = pts[m2][np.argsort(pts[m2][:, 1])]
        ax.step(st[:, 1], st[:, 0], where="post", c="#c0392b", lw=1.2, alpha=0.8, zorder=3)
    conf = rep.confirmation
    if conf is not None:
        where = f" on {conf.fidelity}" if conf.two_fidelity else ""
        errbar([d for d in conf.designs if d.n], "black", "s", 6, f"confirmed: mean ± s.e. over the same {len(conf.seeds)} "
               f"fresh seeds{where}", 4, face="none")
    # Reference designs are hollow outlines on top, so a design at the same point (the plain backbone
    # is often one) still shows through them.
    for m, color, mk in zip(rep.markers, ("#1a7f37", "#6f42c1"), ("*", "D")):
        if getattr(m, col, None) is None:  # a marker has no latency
            continue
        ax.scatter([getattr(m, col)], [m.accuracy], marker=mk, s=220 if mk == "*" else 110, facecolors="none",
                   edgecolors=color, linewidths=1.6, label=f"{m.name}\n({m.source})", zorder=5)
    budget = (rep.settings.get("budget") or {}).get(f"max_{col}")
    if budget:
        ax.axvline(budget, ls="--", c="gray", lw=1, label=f"budget {budget:g}")


def _hv_plot(plt, rep: Report):
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.plot(rep.frame.trial, rep.hypervolume, drawstyle="steps-post", c="#2c6fbb")
    ax.set_xlabel("trial")
    ax.set_ylabel("normalised hypervolume")
    ax.set_title(f"hypervolume of the Pareto front after each trial ({', '.join(rep.objectives)})")
    ax.grid(alpha=0.3)
    return fig


def allowed_choices(rep: Report) -> list[dict[str, set[str]]] | None:
    """Per stage, per axis: every value the study's search space allows, spelled as in ``rep.choices``
    ("off" for a stage that may go without SE). None for a study that stored no space.

    Reads the form ``SearchSpace.to_dict()`` stores (every axis listed for every stage), which
    ``SearchSpace.from_dict`` (the YAML form) does not take back.
    """
    if not rep.settings.get("space"):
        return None
    out = []
    for st in rep.settings["space"]["stages"]:
        off = {"off"} if False in st["enabled"] else set()
        se = True in st["enabled"]
        out.append({axis: off | ({str(v) for v in st[axis]} if se else set()) for axis in AXES})
    return out


def _choice_plot(plt, rep: Report):
    c = rep.choices
    allowed = allowed_choices(rep)
    fig, axes = plt.subplots(1, len(AXES), figsize=(3.2 * len(AXES), 3.4), squeeze=False)
    stages = sorted(set(c.stage) | set(range(1, len(allowed) + 1) if allowed else ()))
    cmap = plt.get_cmap("Reds").with_extremes(bad="#eeeeee")
    for ax, axis in zip(axes[0], AXES):
        sub = c[c.axis == axis]
        # every allowed value gets a row, chosen or not; a value a stage does not allow is blank there
        values = sorted(set(sub.value).union(*(a[axis] for a in allowed or ())), key=value_order)
        grid = np.zeros((len(values), len(stages)))
        if allowed:
            for j, stage in enumerate(stages):
                ok = allowed[stage - 1][axis] if stage <= len(allowed) else set()
                grid[[v not in ok for v in values], j] = np.nan
        for _, row in sub.iterrows():
            grid[values.index(row.value), stages.index(row.stage)] = row.best
        ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto")
        for i in range(len(values)):
            for j in range(len(stages)):
                ax.text(j, i, "not allowed" if np.isnan(grid[i, j]) else f"{grid[i, j]:.0%}", ha="center",
                        va="center", fontsize=6 if np.isnan(grid[i, j]) else 8,
                        color="white" if grid[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(stages)), [f"stage {s}" for s in stages], fontsize=8)
        ax.set_yticks(range(len(values)), values, fontsize=8)
        ax.set_title(axis, fontsize=10)
    fig.suptitle(f"share of each per-stage choice among the {rep.n_best} Pareto designs", fontsize=11)
    fig.tight_layout()
    return fig


def _importance_plot(plt, rep: Report):
    items = sorted(rep.importances.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(items) + 1.2))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#2c6fbb")
    ax.set_xlabel("importance for accuracy (fANOVA)")
    ax.set_title("parameter importances")
    ax.grid(alpha=0.3, axis="x")
    return fig
