"""The report as one self-contained HTML page: figures inlined as base64 PNG, inline CSS and JS (it
opens offline), the same sections as ``summary.md`` (``report_value.section_titles``).

It only reads the ``Report`` value. Every value that comes from a file or a study (design labels,
study names, reasons, paths, anything of compare.json) goes through ``html.escape``; numbers are
formatted from typed values (``se_nas.products.comparison`` checked their types on read).
"""
from __future__ import annotations

import base64
import html
import math

from .comparison import Comparison, Test
from ..search.confirm import role_name
from .report_value import (DesignTable, Report, comparison_title, design_tables, hypervolume_note,
                           importance_caveat, intro_text, pareto_note, plotted, settings_lines, stage_cols)

e = html.escape

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1300px;
padding:0 1em;color:#222}h1{font-size:1.5em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
img{max-width:100%}p,li{overflow-wrap:anywhere}table{border-collapse:collapse;font-size:12px}
th,td{padding:3px 7px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}th{background:#f4f4f4}
table.sortable th{cursor:pointer;position:sticky;top:0}table.sortable td{white-space:nowrap}
table.sortable td.state{white-space:normal;min-width:18em;max-width:40em;overflow-wrap:anywhere}
tr.pareto td{background:#fdecea}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
th.num{text-align:right}tr.front td{font-weight:bold}
.note{color:#555;font-size:.9em}.wrap{max-height:600px;overflow:auto}.scroll{overflow-x:auto}
code{background:#f4f4f4;padding:0 3px}"""

# Sort the table by a clicked header: numbers numerically, text alphabetically, click again to reverse.
JS = """document.querySelectorAll('table.sortable th').forEach(function(th,i){th.addEventListener('click',function(){
var tb=th.closest('table').tBodies[0],rows=Array.from(tb.rows),asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
rows.sort(function(a,b){var x=a.cells[i].dataset.v||a.cells[i].textContent,y=b.cells[i].dataset.v||b.cells[i].textContent,
p=parseFloat(x),q=parseFloat(y),c=(!isNaN(p)&&!isNaN(q))?p-q:x.localeCompare(y);return asc?c:-c;});
rows.forEach(function(r){tb.appendChild(r);});});});"""


def _fmt(v, nd=4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.{nd}f}" if isinstance(v, float) else e(str(v))


def _table(head: list[str], rows: list[list[str]], num_from: int, row_class=None) -> str:
    """A table whose first ``num_from`` columns are text, the rest numbers; cells are already escaped."""
    h = "".join(f"<th>{c}</th>" if i < num_from else f'<th class="num">{c}</th>' for i, c in enumerate(head))
    body = "".join(f'<tr{row_class(i) if row_class else ""}>'
                   + "".join(f"<td>{c}</td>" if j < num_from else f'<td class="num">{c}</td>' for j, c in enumerate(r))
                   + "</tr>" for i, r in enumerate(rows))
    return f'<div class="scroll"><table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table></div>'


def design_table_html(t: DesignTable) -> str:
    head = ["arch id", *[f"stage {i + 1}" for i in range(t.n_stages)], e(t.value_head), "GFLOPs", "M params",
            *(["latency (ms, predicted)"] if t.latency else [])]
    rows = []
    for r in t.rows:
        tags = f" ({e(', '.join(r.tags))})" if r.tags else ""
        rows.append([f"<code>{e(r.arch_id)}</code>{tags}", *(e(s) for s in r.stages), e(r.value), f"{r.gflops:.4f}",
                     f"{r.mparams:.3f}", *([_fmt(r.latency, 2)] if t.latency else [])])
    cls = (lambda i: ' class="front"' if t.rows[i].bold else "")
    return (f"<h2>{e(t.title)}</h2><p class=\"note\">{e(t.note)}</p>"
            + _table(head, rows, 1 + t.n_stages, cls))


def _delta(t: Test | None) -> list[str]:
    if t is None:
        return ["", ""]
    d = f"{t.diff_mean:+.4f}" + (f" ± {t.diff_se:.4f}" if t.diff_se is not None and math.isfinite(t.diff_se) else "")
    return [d, "n/a" if t.p is None else f"{t.p:.3g}"]


def _setup(cmp: Comparison) -> str:
    setup = f"{len(cmp.seeds)} seed(s) per design"
    if cmp.recipe:
        r = cmp.recipe
        setup += (f", recipe {cmp.recipe_name} ({r['dataset']} at {r['image_size']} px, {r['stem']} stem, "
                  f"width x{r['width']}, {r['epochs']} epochs)")
    if cmp.deploy:
        d = cmp.deploy
        setup += (f". GFLOPs and parameters: deployment model ({d['image_size']}x{d['image_size']}, "
                  f"{d['num_classes']} classes)")
    if cmp.machine:
        size = f" ({cmp.recipe['image_size']} px input)" if cmp.recipe else ""
        setup += (f". Proxy latency: median forward pass of the trained proxy{size} at batch 1 on {cmp.device} "
                  f"({cmp.machine}); it times the small proxy, not the deployment model the GFLOPs are counted on, "
                  "so the two columns need not agree")
    if cmp.same_as:
        setup += f". The chosen design is the {role_name(cmp.same_as, cmp.baseline)} itself: one row"
    return setup


def _tests_html(cmp: Comparison) -> str:
    items = []
    for ref, key in ((cmp.baseline, "r16"), ("the plain backbone", "plain")):
        for role, (a, lat) in cmp.vs[key].items():
            if a is None:
                continue
            arm = cmp.arm(role)
            text = f"{arm.name if arm else role} vs {ref}: accuracy {a.diff_mean:+.4f} ("
            text += (f"t = {a.t:.3f}, p = {a.p:.3g}, " if a.p is not None and a.t is not None else "") + f"{a.note})"
            if lat:
                text += f"; proxy latency {lat.diff_mean:+.3f} ms"
                text += f" (p = {lat.p:.3g})" if lat.p is not None else ""
            items.append(f"<li>{e(text)}</li>")
    return f"<ul>{''.join(items)}</ul>" if items else ""


def comparison_html(cmp: Comparison) -> str:
    """The comparison section, from compare.json: the setup, one table row per design, the tests."""
    ref = cmp.baseline
    size = f", {cmp.recipe['image_size']} px" if cmp.recipe else ""
    threads = f", {cmp.threads} thread{'s' if cmp.threads != 1 else ''}" if cmp.threads else ""
    head = ["design", "arch id", "accuracy (mean ± s.e.)", "seeds", "GFLOPs", "M params",
            f"proxy latency ms{size}{threads} (mean ± std)", f"Δ accuracy vs {e(ref)}", "p (paired t)",
            "Δ accuracy vs plain", "p (paired t)"]
    rows = []
    for arm in cmp.arms:
        trial = f" (trial {arm.trial})" if arm.trial is not None else ""
        err = f" ± {arm.accuracy_err:.4f}" if arm.accuracy_err is not None and math.isfinite(arm.accuracy_err) else ""
        lat = "" if arm.latency_mean is None else f"{arm.latency_mean:.3f} ± {arm.latency_std:.3f}"
        if lat and arm.latency_predicted_ms is not None:
            lat += f" (predicted {arm.latency_predicted_ms:.3f})"
        rows.append([e(f"{arm.name}{trial}"), f"<code>{e(arm.arch_id)}</code>", f"{arm.accuracy_mean:.4f}{err}",
                     str(arm.n), f"{arm.gflops:.4f}", f"{arm.mparams:.3f}", lat,
                     *_delta((cmp.vs["r16"].get(arm.role) or (None, None))[0]),
                     *_delta((cmp.vs["plain"].get(arm.role) or (None, None))[0])])
    designs = "".join(f"<li>{e(arm.name)}: <code>{e(arm.label)}</code></li>" for arm in cmp.arms if arm.label)
    finding = f"<p><strong>Finding:</strong> {e(cmp.finding)}</p>" if cmp.finding else ""
    return (f"<h2>{e(comparison_title(cmp))}</h2>{finding}<p>{e(_setup(cmp))}.</p>" + _table(head, rows, 2)
            + _tests_html(cmp) + (f"<p>Designs:</p><ul>{designs}</ul>" if designs else ""))


def _trials_html(rep: Report) -> str:
    f = rep.frame
    cols = stage_cols(f)
    lat_head, lat_col = (["latency (ms)"], [("latency_ms", 2)]) if "latency_ms" in f else ([], [])
    head = "".join(f"<th>{e(h)}</th>" for h in ["trial", "arch id", *[f"stage {c[5:]}" for c in cols],
                                                 rep.value_label, "GFLOPs", "M params", *lat_head, "epochs", "state"])
    body = []
    for _, r in f.iterrows():
        cells = [f'<td class="num">{_fmt(r.trial)}</td>', f"<td><code>{e(str(r.arch_id))}</code></td>"]
        cells += [f"<td>{e(str(r[c]))}</td>" for c in cols]
        for c, nd in (("accuracy", 4), ("gflops", 4), ("mparams", 3), *lat_col):
            v = r[c]
            v = v if isinstance(v, (int, float)) else None
            cells.append(f'<td class="num" data-v="{"" if v is None or v != v else v}">{_fmt(v, nd)}</td>')
        cells += [f'<td class="num">{_fmt(r.epochs)}</td>', f'<td class="state">{e(str(r.state))}</td>']
        body.append(f'<tr{" class=pareto" if r.pareto else ""}>' + "".join(cells) + "</tr>")
    return ('<h2>All trials</h2><p class="note">Click a column header to sort. Pareto designs are highlighted.</p>'
            f'<div class="wrap"><table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}'
            "</tbody></table></div>")


def _img(figs: dict[str, bytes], name: str, alt: str) -> str:
    if name not in figs:
        return ""
    return f'<p><img alt="{e(alt)}" src="data:image/png;base64,{base64.b64encode(figs[name]).decode()}"></p>'


def _pareto_html(rep: Report, figs: dict[str, bytes]) -> str:
    markers = "".join(f"<li>{e(m.name)} <code>{e(m.arch_id)}</code>: accuracy {m.accuracy:.4f}, {m.gflops:.4f} GFLOPs, "
                      f"{m.mparams:.3f} M params ({e(m.source)})</li>" for m in rep.markers)
    refs = (f"<p>Reference designs:</p><ul>{markers}</ul>" if markers else
            f'<p class="note">The {e(rep.baseline)} baseline and the plain backbone have not been evaluated yet: run '
            "<code>se-nas compare</code>.</p>")
    plots = "".join(_img(figs, f"pareto_{o.attr}.png", f"accuracy against {o.short}") for o in plotted(rep))
    return f'<h2>Pareto front</h2><p class="note">{e(pareto_note(rep))}</p>{plots}{refs}'


def _importance_html(rep: Report, figs: dict[str, bytes]) -> str:
    if not rep.importances:
        return f"<h2>Parameter importances</h2><p>Not available: {e(rep.importance_note)}.</p>"
    return (f"<h2>Parameter importances</h2><p><strong>{e(importance_caveat(rep))}.</strong></p>"
            + _img(figs, "importance.png", "parameter importances") + f'<p class="note">{e(rep.importance_note)}.</p>')


def report_html(rep: Report, figs: dict[str, bytes]) -> str:
    finding = f'<p class="finding"><strong>Finding:</strong> {e(rep.finding)}</p>' if rep.finding else ""
    settings = "".join(f"<li>{e(line)}</li>" for line in settings_lines(rep))
    skipped = ("<p><strong>Trial records that could not be read, left out of this report:</strong></p><ul>"
               + "".join(f"<li>{e(s)}</li>" for s in rep.skipped) + "</ul>") if rep.skipped else ""
    parts = [
        *(design_table_html(t) for t in design_tables(rep)), _pareto_html(rep, figs),
        f'<h2>Hypervolume</h2>{_img(figs, "hypervolume.png", "hypervolume after each trial")}'
        f'<p class="note">{e(hypervolume_note(rep))}</p>',
        f'<h2>Per-stage choices among the Pareto designs</h2>{_img(figs, "choices.png", "choice frequencies")}',
        _importance_html(rep, figs), comparison_html(rep.comparison) if rep.comparison else "", _trials_html(rep)]
    body = "\n".join(p for p in parts if p)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>se-nas report: {e(rep.study)}</title>
<style>{CSS}</style></head><body>
<h1>se-nas report: <code>{e(rep.study)}</code></h1>
{finding}<p>{e(intro_text(rep))}</p>{skipped}<ul>{settings}</ul>
{body}
<script>{JS}</script>
</body></html>
"""
