"""The report of a study as one value: what every renderer reads, and nothing a renderer computes.

``se_nas.products.report.build_report`` fills a ``Report`` from the study once; the renderers
(``report_html``, ``report_text``, ``report_plots``) only read it, so the HTML page, ``summary.md``,
``trials.csv`` and the PNG figures cannot disagree. The sections every page shows, in order, are
``section_titles(rep)``, and the design tables (the confirmed front, the search's front) are built
here as rows of text and numbers (``design_tables``) for each renderer to lay out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..design.arch import PAPER_SE, baseline_name
from .comparison import Comparison
from ..search.confirm import Confirmation
from ..record.results import Design, Noise
from ..record.study import OBJECTIVE_TABLE, OBJECTIVES, Status

AXES = ("reduction", "squeeze", "gate", "position")
STATUS_TEXT = {s.value: s.text for s in Status}

# Why the fANOVA importances say little on the built-in data (README, "What the built-in data can and
# cannot tell"): the proxy separates designs that break from designs that train, not working designs.
IMPORTANCE_CAVEAT = ("Caveat: on the built-in digits proxy, accuracy separates designs that break from designs that "
                     "train, not working SE designs from each other (their spread equals seed noise; README, 'What the "
                     "built-in data can and cannot tell'), so these importances mostly say which choices break "
                     "training, not which make a working design better")
IMPORTANCE_CAVEAT_OTHER = ("Caveat: importances are only as good as the proxy's power to separate working designs; "
                           "where the designs' spread is within the measured seed noise they mostly say which choices "
                           "break training")


def importance_caveat(rep: "Report") -> str:
    """The caveat the importances need: strong for the built-in digits proxy, general for other data."""
    dataset = (rep.settings.get("recipe") or {}).get("dataset", "digits")
    return IMPORTANCE_CAVEAT if dataset == "digits" else IMPORTANCE_CAVEAT_OTHER


@dataclass(frozen=True)
class Marker:
    """A reference design placed on the Pareto plots (the r=16 baseline, the plain backbone)."""

    name: str
    arch_id: str
    accuracy: float
    gflops: float
    mparams: float
    source: str  # where the accuracy comes from: "compare (K seeds)" or "trial N"


@dataclass(frozen=True)
class DesignRow:
    """One design in a design table, as text and numbers (the renderers only lay it out)."""

    arch_id: str
    stages: tuple[str, ...]  # per stage: "off" or the SE choice's label
    value: str  # "0.9590 ± 0.0063 (3 seeds)", or a supernet score
    gflops: float
    mparams: float
    latency: float | None
    tags: tuple[str, ...] = ()  # "chosen", the baseline's name, "plain", "over budget"
    bold: bool = False  # on the confirmed front


@dataclass(frozen=True)
class DesignTable:
    title: str
    note: str
    value_head: str
    n_stages: int
    latency: bool  # the study has a latency table: one more column
    rows: tuple[DesignRow, ...]


@dataclass
class Report:
    study: str
    frame: Any  # pandas DataFrame, one row per trial; column "pareto" marks the front
    reference: tuple[float, ...]  # hypervolume reference point (accuracy, then the study's other objectives)
    ideal: tuple[float, ...]  # with ``reference``, the box the hypervolume is normalised by
    hypervolume: np.ndarray  # normalised hypervolume after each trial, in [0, 1]
    choices: Any  # DataFrame: stage, axis, value, best (share among Pareto designs), all (among complete)
    importances: dict[str, float]
    importance_note: str
    markers: list[Marker] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # recipe, budget, deploy, space of the study
    compare_md: str = ""
    designs: list[Design] = field(default_factory=list)  # one per design trained to the end, by the search
    front: list[Design] = field(default_factory=list)  # the search's per-design front
    noise: Noise | None = None
    confirmation: Confirmation | None = None
    comparison: Comparison | None = None  # compare.json as ``se-nas compare`` wrote it, validated
    latency: dict[str, float] = field(default_factory=dict)  # predicted ms by design id (a study with a table)
    objectives: tuple[str, ...] = OBJECTIVES  # the study's: the front and the hypervolume are over these
    supernet: bool = False  # a one-shot study: ``designs`` and ``front`` are supernet scores, not trainings
    skipped: tuple[str, ...] = ()  # one line per trial record that could not be read (left out)

    @property
    def value_label(self) -> str:
        """What the search's values are: trained accuracies, or a one-shot study's supernet scores."""
        return "supernet score" if self.supernet else "accuracy"

    @property
    def baseline(self) -> str:
        """What this study's reference SE is called (``baseline_name``: "r=16 SE", "MobileNetV3's own SE")."""
        return baseline_name(self.designs[0].arch.backbone) if self.designs else PAPER_SE

    @property
    def finding(self) -> str:
        if self.comparison and self.comparison.finding:
            return self.comparison.finding
        return self.confirmation.sentence if self.confirmation is not None else ""

    @property
    def n_best(self) -> int:
        return len(self.front)


def plotted(rep: Report):
    """The study's objectives other than accuracy: one accuracy-against-it plot each."""
    return [OBJECTIVE_TABLE[o] for o in rep.objectives[1:]]


def stage_cols(f) -> list[str]:
    return sorted((c for c in f.columns if c.startswith("stage") and c[5:].isdigit()), key=lambda c: int(c[5:]))


def value_order(v: str):
    # numbers in numeric order, "off" last
    return (v == "off", 0 if v.isdigit() else 1, int(v) if v.isdigit() else 0, v)


def front_title(rep: Report) -> str:
    return "Supernet ranking front (per design)" if rep.supernet else "Search front (per design)"


def comparison_title(cmp: Comparison) -> str:
    return f"Comparison against the fixed {cmp.baseline} baseline and the plain backbone"


def section_titles(rep: Report) -> list[str]:
    """The report's sections in order: every renderer (HTML, Markdown) shows exactly these."""
    return [*(["Confirmed front"] if rep.confirmation is not None else []), front_title(rep), "Pareto front",
            "Hypervolume", "Per-stage choices among the Pareto designs", "Parameter importances",
            *([comparison_title(rep.comparison)] if rep.comparison is not None else []), "All trials"]


def _row(d: Design, value: str, latency: dict[str, float], tags=(), bold=False) -> DesignRow:
    return DesignRow(d.id, tuple("off" if s is None else s.label for s in d.arch.stages), value, d.gflops, d.mparams,
                     latency.get(d.id), tuple(tags), bold)


def design_tables(rep: Report) -> list[DesignTable]:
    """The confirmed front (where the search confirmed) and the search's per-design front."""
    n_stages = max(len(d.arch.stages) for d in rep.designs)
    lat = bool(rep.latency)
    out = []
    conf = rep.confirmation
    if conf is not None:
        front = {d.id for d in conf.front}
        rows = []
        for d in conf.designs:
            role = ("chosen" if d.id == conf.chosen.id else rep.baseline if d.id == conf.r16.id
                    else "plain" if d.id == conf.plain.id else "")
            dominated = conf.dominated_by is not None and d.id == conf.chosen.id
            tags = [t for t in (role, "over budget" if d.id in conf.over_budget else "",
                                f"dominated by {conf.dominated_by.id}" if dominated else "") if t]
            rows.append(_row(d, d.describe(conf.noise), rep.latency, tags, d.id in front))
        out.append(DesignTable(
            "Confirmed front",
            f"Every design below was trained again under the same {len(conf.seeds)} fresh seeds "
            f"({', '.join(str(s) for s in conf.seeds)}) on {conf.fidelity}: the chosen design (picked by the search "
            f"before these runs), the next designs of the search's front, {rep.baseline} and the plain backbone. "
            "Front designs are in bold." + (f" {fidelity_text(rep)}" if conf.two_fidelity else ""),
            "accuracy (mean ± s.e., seeds)", n_stages, lat, tuple(rows)))
    ranked = sorted(rep.front, key=lambda d: -d.mean)
    if rep.supernet:
        note = ("Each design's value is its supernet score: its path's accuracy in the trained supernet (BatchNorm "
                "recalibrated), discounted by its initialisation check (docs/oneshot.md). A ranking, not a trained "
                "accuracy and not comparable with one; the confirmed front above is what was trained. GFLOPs "
                "(1 multiply-accumulate = 1 FLOP) and parameters are the deployment model's.")
        rows = tuple(_row(d, f"{d.mean:.4f}", rep.latency) for d in ranked)
        out.append(DesignTable(front_title(rep), note, "supernet score", n_stages, lat, rows))
    else:
        note = ("Each design's accuracy is the mean over the seeds the search trained it with on "
                f"{search_fidelity(rep)} (standard error from the "
                f"measured seed noise {rep.noise.describe() if rep.noise else ''}); accuracy is the proxy's validation "
                "accuracy, GFLOPs (1 multiply-accumulate = 1 FLOP) and parameters are the deployment model's.")
        rows = tuple(_row(d, d.describe(rep.noise), rep.latency) for d in ranked)
        out.append(DesignTable(front_title(rep), note, "accuracy (mean ± s.e., seeds)", n_stages, lat, rows))
    return out


def search_fidelity(rep: Report) -> str:
    """The search recipe's fidelity (``Recipe.fidelity``): what the search front's figures are measured on."""
    from ..design.recipe import Recipe

    return Recipe.from_dict(rep.settings.get("recipe") or {}, where="the study's recipe").fidelity


def fidelity_text(rep: Report) -> str:
    """A study confirmed under another recipe than its search's: both fidelities, how their rankings of the
    confirmed designs agree, and whether the search's choice is still the best confirmed design ("" else)."""
    conf = rep.confirmation
    if conf is None or not conf.two_fidelity:
        return ""
    agree = (conf.agreement.describe() if conf.agreement is not None
             else "not measured (fewer than 3 confirmed designs measured at both fidelities)")
    if conf.best is None:
        still = "no confirmed design within the budget trained yet"
    elif conf.best.id == conf.chosen.id:
        still = f"the search's choice {conf.chosen.id} is still the best confirmed design"
    else:
        still = (f"the search's choice {conf.chosen.id} is not the best confirmed design: {conf.best.id} is, and it is "
                 "the answer (`se-nas export --best` takes it)")
    return (f"Two fidelities: the search ranked designs on {search_fidelity(rep)}, the confirmation (recipe "
            f"{conf.recipe_name}) trained them on {conf.fidelity}. Rank agreement over the confirmed designs: {agree}; "
            f"{still}.")


def intro_text(rep: Report) -> str:
    """The report's opening paragraph: trials by status, designs, the front, hypervolume."""
    f = rep.frame
    counts = ", ".join(f"{int((f.status == s).sum())} {t}" for s, t in STATUS_TEXT.items() if (f.status == s).any())
    n_res = sum(d.n for d in rep.designs)
    if rep.supernet:
        return (f"{len(f)} trials: {counts}. {len(rep.designs)} designs ranked through the supernet (each a supernet "
                f"score, not a training); front over those scores: {len(rep.front)} designs. Normalised hypervolume "
                f"of the scores after the last trial: {rep.hypervolume[-1]:.4f}.")
    return (f"{len(f)} trials: {counts}. {len(rep.designs)} distinct designs among the {n_res} trials trained to the "
            f"end within budget; front over per-design means: {len(rep.front)} designs. Normalised hypervolume "
            f"after the last trial: {rep.hypervolume[-1]:.4f}.")


def settings_lines(rep: Report) -> list[str]:
    """The study's budget, deployment model and proxy recipe, one line each (no list marker)."""
    s = rep.settings
    out = []
    if s.get("budget"):
        b = s["budget"]
        parts = [f"<= {b['max_gflops']:g} GFLOPs" if b.get("max_gflops") else "",
                 f"<= {b['max_mparams']:g}M params" if b.get("max_mparams") else "",
                 f"<= {b['max_latency_ms']:g} ms latency" if b.get("max_latency_ms") else ""]
        out.append(f"budget: {' and '.join(p for p in parts if p) or 'none'}")
        if b.get("latency"):
            from ..design.budget import BORDERLINE, table_uncertainty

            u = table_uncertainty(b)
            out.append(f"latency predicted from the table {b['latency']} (profile {b.get('latency_hash')})"
                       + (f", {u}" if u else ""))
            n = int(rep.frame["reason"].fillna("").str.contains(BORDERLINE).sum()) if "reason" in rep.frame else 0
            if n:
                out.append(f"{n} trial{'s' if n != 1 else ''} borderline: predicted within the table's uncertainty of "
                           "the latency limit, on either side (see their reason); the budget decided as predicted")
    if s.get("deploy"):
        d = s["deploy"]
        out.append(f"deployment model: {d.get('image_size')}x{d.get('image_size')} input, {d.get('num_classes')} classes")
    if s.get("recipe"):
        r = s["recipe"]
        out.append(f"proxy recipe: {r.get('dataset')} at {r.get('image_size')}px, {r.get('stem')} stem, width "
                   f"x{r.get('width')}, {r.get('epochs')} epochs, {r.get('optimizer')} lr {r.get('lr')}")
    conf = rep.confirmation
    if conf is not None and conf.two_fidelity:
        out.append(f"confirmation recipe ({conf.recipe_name}): {conf.fidelity}; its seed noise {conf.noise.describe()}")
    return out


def marker_text(m: Marker) -> str:
    return (f"{m.name} {m.arch_id}: accuracy {m.accuracy:.4f}, {m.gflops:.4f} GFLOPs, {m.mparams:.3f} M params "
            f"({m.source})")


def pareto_note(rep: Report) -> str:
    return (("Circles are supernet scores (a path's accuracy in the trained supernet, discounted by its initialisation "
             "check: a ranking, not a training); squares are the confirmation's standalone accuracies. "
             if rep.supernet else "")
            + "Accuracy is the proxy's validation accuracy; GFLOPs (1 multiply-accumulate = 1 FLOP) and parameters "
              "are the deployment model's. The front is computed over completed, within-budget trials only. The "
              "lower panel, where there is one, zooms on the accuracy band of the front and the confirmed front.")


def hypervolume_note(rep: Report) -> str:
    box = ", ".join(f"{OBJECTIVE_TABLE[o].label} {lo:.4g}..{hi:.4g}"
                    for o, lo, hi in zip(rep.objectives[1:], rep.ideal[1:], rep.reference[1:]))
    return ("Normalised to the box between accuracy 0 and 1, the cheapest completed trial and the reference "
            f"(budget, or 10% beyond the most expensive completed trial): {box}.")
