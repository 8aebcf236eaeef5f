"""The report as text: ``summary.md`` (the same sections as the HTML page) and ``trials.csv``.

Both only read the ``Report`` value (``se_nas.products.report_value``).
"""
from __future__ import annotations

from .report_value import (DesignTable, Report, comparison_title, design_tables, hypervolume_note,
                           importance_caveat, intro_text, pareto_note, plotted, settings_lines, stage_cols)


def trials_csv(rep: Report) -> str:
    f = rep.frame
    cols = ["trial", "status", "arch_id", *stage_cols(f), "accuracy", "gflops", "mparams",
            *(["latency_ms"] if "latency_ms" in f else []), "epochs", "seconds", "pareto", "reason", "arch"]
    return f[cols].to_csv(index=False)


def _md(s: str) -> str:
    """A value in a Markdown table cell: a pipe or a line break would end the cell."""
    return str(s).replace("|", "\\|").replace("\n", " ")


def design_table_md(t: DesignTable) -> list[str]:
    head = ("| arch id | " + " | ".join(f"stage {i + 1}" for i in range(t.n_stages)) + f" | {t.value_head} | GFLOPs "
            "| M params |" + (" latency (ms, predicted) |" if t.latency else ""))
    rule = "|---|" + "---|" * t.n_stages + "---:|---:|---:|" + ("---:|" if t.latency else "")
    lines = ["", f"## {t.title}", "", t.note, "", head, rule]
    for r in t.rows:
        ident = f"**`{r.arch_id}`**" if r.bold else f"`{r.arch_id}`"
        tags = f" ({', '.join(_md(x) for x in r.tags)})" if r.tags else ""
        ms = "" if not t.latency else f" {r.latency:.2f} |" if r.latency is not None else " |"
        lines.append(f"| {ident}{tags} | " + " | ".join(_md(s) for s in r.stages) + f" | {r.value} | {r.gflops:.4f} | "
                     f"{r.mparams:.3f} |{ms}")
    return lines


def _comparison_md(rep: Report) -> list[str]:
    """compare.md as ``se-nas compare`` wrote it, under the section's title (the HTML page renders the
    same comparison from compare.json)."""
    body = rep.compare_md.strip()
    if body.startswith("## "):
        body = body.split("\n", 1)[1].strip() if "\n" in body else ""
    if not body and rep.comparison.finding:
        body = f"**Finding:** {rep.comparison.finding}"
    return ["", f"## {comparison_title(rep.comparison)}", "", body or "compare.md is missing: run `se-nas compare`."]


def summary_md(rep: Report) -> str:
    lines = [f"# se-nas report: `{rep.study}`", ""]
    if rep.finding:
        lines += [f"**Finding:** {rep.finding}", ""]
    lines.append(intro_text(rep))
    lines.append("")
    lines += [f"- {line}" for line in settings_lines(rep)]
    if rep.skipped:
        lines += ["", "Trial records that could not be read, left out of this report:", ""]
        lines += [f"- {_md(s)}" for s in rep.skipped]
    for t in design_tables(rep):
        lines += design_table_md(t)
    lines += ["", "## Pareto front", "", pareto_note(rep)]
    if rep.markers:
        lines += ["", "Reference designs:", ""]
        for m in rep.markers:
            lines.append(f"- {m.name} `{m.arch_id}`: accuracy {m.accuracy:.4f}, {m.gflops:.4f} GFLOPs, "
                         f"{m.mparams:.3f} M params ({m.source})")
    for o in plotted(rep):
        lines += ["", f"![accuracy against {o.short}](pareto_{o.attr}.png)"]
    lines += ["", "## Hypervolume", "", "![hypervolume](hypervolume.png)", "", hypervolume_note(rep), "",
              "## Per-stage choices among the Pareto designs", "",
              "Share of the front's designs (and of all designs trained to the end) that use each value.", ""]
    lines.append("| stage | axis | value | among Pareto | among all completed |")
    lines.append("|---:|---|---|---:|---:|")
    for _, r in rep.choices.iterrows():
        lines.append(f"| {r.stage} | {r.axis} | {r.value} | {r.best:.0%} | {r['all']:.0%} |")
    lines += ["", "![choices](choices.png)", "", "## Parameter importances", ""]
    if rep.importances:
        lines += [f"{rep.importance_note}.", "", f"{importance_caveat(rep)}.", "", "| parameter | importance |",
                  "|---|---:|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in rep.importances.items()]
        lines += ["", "![importances](importance.png)"]
    else:
        lines.append(f"Not available: {rep.importance_note}.")
    if rep.comparison is not None:
        lines += _comparison_md(rep)
    lines += ["", "## All trials", "",
              "Every trial is in [trials.csv](trials.csv); the interactive page is [report.html](report.html).", ""]
    return "\n".join(lines)
