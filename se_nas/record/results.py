"""What a study found: one record per design, its seed noise, its front, and the evidence for "better".

A trial is one seed of one design. A design proposed again is not a new, independent result, and the
maximum over its seeds is a lucky draw, not its accuracy (the winner's curse; see "Evaluating the
search phase of NAS", Yu et al. 2020). So every figure se-nas prints about a design comes from here:

- ``Design``: a design's accuracy is the **mean over its seeds**, with the number of seeds and a
  standard error;
- ``Noise``: the proxy's seed-to-seed standard deviation, **measured** as the pooled within-design
  standard deviation of designs trained under several seeds (at the end of training, and after every
  epoch for early stopping);
- ``design_front``: the Pareto front over per-design means and the study's objectives;
- ``Difference`` / ``paired_difference``: a difference between two designs over the same seeds, with
  its standard error and a paired t-test; ``finding`` states the result in one plain sentence, and
  calls a difference smaller than its noise "no difference";
- ``rank_agreement``: how two fidelities (the search's recipe and the confirmation's) rank the same
  designs, Kendall's tau with a bootstrap interval over seed noise.

These are plain functions over values: no study, no storage, no training.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from ..design.arch import Arch, baseline_name
from ..design.pareto import dominates, pareto_front
from .study import OBJECTIVES, directions, objective_values

ALPHA = 0.05  # a difference is called significant at p < ALPHA (two-sided paired t-test)


@dataclass(frozen=True)
class Design:
    """One design and every run of it: the unit that fronts, rankings and comparisons are made of."""

    arch: Arch
    gflops: float
    mparams: float
    accuracies: tuple[float, ...] = ()  # final validation accuracy of each run trained to the end
    seeds: tuple[int, ...] = ()
    trials: tuple[int, ...] = ()  # the search trials among those runs (confirmation runs have none)
    latency_ms: float | None = None  # predicted from the study's latency table, if it has one

    @property
    def id(self) -> str:
        return self.arch.id

    @property
    def accuracy(self) -> float:
        """The design's accuracy as an objective: its mean over seeds."""
        return self.mean

    @property
    def n(self) -> int:
        return len(self.accuracies)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies) if self.accuracies else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation of this design's own seeds (NaN with fewer than two)."""
        return statistics.stdev(self.accuracies) if self.n > 1 else math.nan

    def sem(self, noise: "Noise | None" = None) -> float:
        """Standard error of the mean: the measured seed noise over sqrt(n) (more degrees of freedom
        than one design's own seeds), else this design's own standard deviation, else NaN."""
        sigma = noise.sigma if noise is not None and noise.sigma is not None else self.std
        return sigma / math.sqrt(self.n) if self.n else math.nan

    def describe(self, noise: "Noise | None" = None, nd: int = 4) -> str:
        """``0.9590 ± 0.0063 (3 seeds)``: the mean, its standard error and the number of seeds."""
        se = self.sem(noise)
        pm = f" ± {se:.{nd}f}" if math.isfinite(se) else ""
        return f"{self.mean:.{nd}f}{pm} ({self.n} seed{'s' if self.n != 1 else ''})"


def group_designs(runs: Iterable[tuple[Arch, float, float, float, int, int | None]],
                  latency: dict[str, float] | None = None) -> list[Design]:
    """Designs from runs ``(arch, gflops, mparams, accuracy, seed, trial or None)``, grouped by
    ``Arch.id`` in order of first appearance, with their predicted ``latency`` (ms by design id) if
    given. A seed run twice counts once (the first run)."""
    latency = latency or {}
    acc: dict[str, dict] = {}
    for arch, g, p, a, seed, trial in runs:
        d = acc.setdefault(arch.id, {"arch": arch, "gflops": g, "mparams": p, "runs": {}, "trials": []})
        if seed not in d["runs"]:
            d["runs"][seed] = a
            if trial is not None:
                d["trials"].append(trial)
    return [Design(d["arch"], d["gflops"], d["mparams"], tuple(d["runs"].values()), tuple(d["runs"]),
                   tuple(d["trials"]), latency.get(d["arch"].id)) for d in acc.values()]


def designs_of(records, keep=lambda r: r.is_result) -> list[Design]:
    """The designs of a study's trials: by default every trial trained to the end within budget."""
    kept = [r for r in records if keep(r)]
    return group_designs(((r.arch, r.gflops, r.mparams, r.accuracy, r.seed, r.number) for r in kept),
                         {r.arch.id: r.latency_ms for r in kept if r.latency_ms is not None})


# --- noise -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Noise:
    """The proxy's seed-to-seed standard deviation, pooled over designs trained under several seeds.

    ``sigma`` is for the final accuracy; ``per_epoch[e]`` for the accuracy after epoch ``e``. ``df``
    is the pooled degrees of freedom (sum of seeds - 1 over the designs that have at least two).
    """

    sigma: float | None
    df: int
    designs: int
    per_epoch: dict[int, float] = field(default_factory=dict)
    per_epoch_df: dict[int, int] = field(default_factory=dict)

    @property
    def known(self) -> bool:
        return self.sigma is not None

    def describe(self, nd: int = 4) -> str:
        if self.sigma is None:
            return "seed noise not measured yet (no design trained under two seeds)"
        return (f"± {self.sigma:.{nd}f} (seed-to-seed standard deviation, pooled over {self.designs} "
                f"design{'s' if self.designs != 1 else ''}, {self.df} degrees of freedom)")

    def to_dict(self) -> dict:
        return {"sigma": self.sigma, "df": self.df, "designs": self.designs,
                "per_epoch": {str(k): v for k, v in self.per_epoch.items()},
                "per_epoch_df": {str(k): v for k, v in self.per_epoch_df.items()}}


def _pooled(groups: Iterable[Sequence[float]]) -> tuple[float | None, int, int]:
    """Pooled within-group standard deviation, its degrees of freedom and the number of groups used."""
    ss, df, k = 0.0, 0, 0
    for g in groups:
        if len(g) > 1:
            m = statistics.fmean(g)
            ss += sum((x - m) ** 2 for x in g)
            df += len(g) - 1
            k += 1
    return (math.sqrt(ss / df) if df else None), df, k


def measure_noise(histories: dict[str, list[Sequence[float]]], finals: dict[str, list[float]]) -> Noise:
    """Noise from runs grouped by design: ``finals[design]`` are the final accuracies of its runs
    trained to the end, ``histories[design]`` the per-epoch accuracies of all its trained runs
    (stopped early ones too: they are as noisy up to the epoch they reached)."""
    sigma, df, k = _pooled(finals.values())
    epochs = max((len(h) for hs in histories.values() for h in hs), default=0)
    per, per_df = {}, {}
    for e in range(1, epochs + 1):
        s, d, _ = _pooled([h[e - 1] for h in hs if len(h) >= e] for hs in histories.values())
        if s is not None:
            per[e], per_df[e] = s, d
    return Noise(sigma, df, k, per, per_df)


# --- the front -------------------------------------------------------------------------------------
def costs(d: Design, objectives: Sequence[str] = OBJECTIVES) -> list[float]:
    """``d``'s values of the study's minimised objectives (all but accuracy, which comes first);
    a value the design lacks (a latency without the table) is infinite."""
    return [math.inf if v is None else v for v in objective_values(d, objectives)[1:]]


def design_front(designs: Sequence[Design], objectives: Sequence[str] = OBJECTIVES) -> list[Design]:
    """The Pareto front over per-design mean accuracy and the study's other ``objectives`` (default
    GFLOPs and parameters), cheapest first. A design without a value of an objective is not on it."""
    ds = [d for d in designs if d.n and None not in objective_values(d, objectives)]
    if not ds:
        return []
    mask = pareto_front([objective_values(d, objectives) for d in ds], directions(objectives))
    return sorted((d for d, m in zip(ds, mask) if m), key=lambda d: costs(d, objectives))


def dominators(d: Design, designs: Sequence[Design], objectives: Sequence[str] = OBJECTIVES) -> list[Design]:
    """The designs of ``designs`` that dominate ``d`` on per-design means and the study's ``objectives``
    (at least as accurate and no more costly in every objective, better in one), most accurate first."""
    if not d.n or None in objective_values(d, objectives):
        return []
    dirs = directions(objectives)
    mine = objective_values(d, objectives)
    out = [o for o in designs if o.id != d.id and o.n and None not in objective_values(o, objectives)
           and dominates(objective_values(o, objectives), mine, dirs)]
    return sorted(out, key=lambda o: (-o.mean, *costs(o, objectives)))


def best_design(designs: Sequence[Design], max_gflops: float | None = None,
                objectives: Sequence[str] = OBJECTIVES) -> Design | None:
    """The design with the highest mean accuracy within ``max_gflops`` (ties: cheaper first in the
    study's ``objectives``)."""
    ok = [d for d in designs if d.n and (max_gflops is None or d.gflops <= max_gflops)]
    return max(ok, key=lambda d: (d.mean, *(-c for c in costs(d, objectives)))) if ok else None


# --- differences -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Difference:
    """``a - b`` over paired seeds: mean, standard error, and a two-sided paired t-test."""

    mean: float
    se: float
    n: int
    t: float | None = None
    p: float | None = None
    note: str = ""

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < ALPHA

    def describe(self, nd: int = 4) -> str:
        se = f" ± {self.se:.{nd}f}" if math.isfinite(self.se) else ""
        p = f"p = {self.p:.2g}" if self.p is not None else self.note
        return f"{self.mean:+.{nd}f}{se} ({p}, {self.n} seed{'s' if self.n != 1 else ''})"

    def to_dict(self) -> dict:
        return {"diff_mean": self.mean, "diff_se": self.se, "n": self.n, "t": self.t, "p": self.p,
                "note": self.note}


def paired_difference(values: Sequence[float], reference: Sequence[float]) -> Difference:
    """``values - reference`` seed by seed (seed k of both shares data order and split, so pairing
    removes that part of the noise), with a paired t-test."""
    from scipy import stats

    if len(values) != len(reference):
        raise ValueError(f"paired values need the same seeds: {len(values)} against {len(reference)}")
    d = [a - b for a, b in zip(values, reference)]
    n = len(d)
    mean = statistics.fmean(d) if d else math.nan
    se = statistics.stdev(d) / math.sqrt(n) if n > 1 else math.nan
    if n < 2:
        return Difference(mean, se, n, note=f"no test possible with {n} seed; use 2 or more seeds")
    if max(d) == min(d):
        return Difference(mean, se, n, note="the difference is the same on every seed: the t-test is undefined")
    res = stats.ttest_rel(values, reference)
    return Difference(mean, se, n, float(res.statistic), float(res.pvalue), f"paired t-test over {n} seeds")


def _cost_words(a: Design, b: Design) -> str:
    dp, dg = a.mparams - b.mparams, a.gflops - b.gflops
    if abs(dp) < 5e-4 and abs(dg) < 5e-5:
        return "at the same cost"
    size = f"{abs(dp):.2f}M" if abs(dp) >= 0.01 else f"{abs(dp) * 1e3:.1f}K"
    parts = [f"{size} {'fewer' if dp < 0 else 'more'} parameters"]
    if abs(dg) >= 5e-4:
        parts.append(f"{abs(dg):.3f} {'fewer' if dg < 0 else 'more'} GFLOPs")
    return "with " + " and ".join(parts)


# --- two fidelities -------------------------------------------------------------------------------
def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two rankings of the same items (ties count as neither concordant nor
    discordant); NaN with fewer than two items or where one ranking is all ties."""
    import numpy as np

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    i, j = np.triu_indices(len(x), 1)
    sx, sy = np.sign(x[..., i] - x[..., j]), np.sign(y[..., i] - y[..., j])
    den = math.sqrt(float((sx * sx).sum()) * float((sy * sy).sum()))
    return float((sx * sy).sum()) / den if den else math.nan


@dataclass(frozen=True)
class RankAgreement:
    """How two fidelities rank the same designs: Kendall's tau-b of their means, with a parametric
    bootstrap over seed noise (each design's mean in each fidelity redrawn from a normal with its
    standard error, that fidelity's pooled seed noise over the root of its seeds; ``draws`` draws,
    fixed generator seed). The pairing of the confirmation's seeds is ignored, so the interval is
    conservative."""

    tau: float
    low: float  # 5th and 95th percentile of tau over the draws
    high: float
    sd: float
    n: int  # designs ranked by both
    draws: int

    def describe(self) -> str:
        if not math.isfinite(self.tau):
            return f"Kendall tau undefined over {self.n} designs (one ranking is all ties)"
        band = (f" (90% bootstrap interval over seed noise {self.low:+.2f} to {self.high:+.2f})"
                if math.isfinite(self.low) else " (uncertainty unmeasured: no seed noise)")
        return f"Kendall tau {self.tau:+.2f} over {self.n} designs{band}"

    def to_dict(self) -> dict:
        return {"tau": self.tau, "low": self.low, "high": self.high, "sd": self.sd, "n": self.n,
                "draws": self.draws, "uncertainty": "parametric bootstrap over each fidelity's seed noise"}


def rank_agreement(a: Sequence[Design], a_noise: Noise | None, b: Sequence[Design], b_noise: Noise | None,
                   draws: int = 2000, seed: int = 0) -> RankAgreement | None:
    """The agreement of the rankings ``a`` and ``b`` (the same designs, in the same order, measured at
    two fidelities), or None with fewer than three designs measured in both."""
    import numpy as np

    both = [(x, y) for x, y in zip(a, b) if x.n and y.n]
    if len(both) < 3:
        return None
    ma = np.array([x.mean for x, _ in both])
    mb = np.array([y.mean for _, y in both])
    sa = np.array([x.sem(a_noise) for x, _ in both])
    sb = np.array([y.sem(b_noise) for _, y in both])
    tau = kendall_tau(ma, mb)
    if not (np.isfinite(sa).all() and np.isfinite(sb).all()):
        return RankAgreement(tau, math.nan, math.nan, math.nan, len(both), 0)
    rng = np.random.default_rng(seed)
    xa = ma + rng.standard_normal((draws, len(both))) * sa
    xb = mb + rng.standard_normal((draws, len(both))) * sb
    taus = np.array([kendall_tau(u, v) for u, v in zip(xa, xb)])
    taus = taus[np.isfinite(taus)]
    low, high = (float(q) for q in np.quantile(taus, [0.05, 0.95]))
    return RankAgreement(tau, low, high, float(taus.std(ddof=1)), len(both), draws)


def fidelity_words(best: Design, chosen: Design, vs: Difference | None, agreement: RankAgreement | None,
                   search_fidelity: str, noise: Noise, r16: Design, plain: Design) -> str:
    """The sentence a two-fidelity finding ends with: how the search's ranking agrees with the
    confirmation's over the confirmed designs, and whether the search's choice is still the best
    confirmed design (``best``: the most accurate confirmed design within the budget)."""
    agree = (f"The search (on {search_fidelity}) and the confirmation rank the confirmed designs with "
             f"{agreement.describe()}" if agreement is not None else
             f"Fewer than 3 confirmed designs were measured at both fidelities (the search's on {search_fidelity}): "
             "no rank agreement")
    if best.id == chosen.id:
        return f"{agree}; the search's choice is still the best confirmed design."
    if vs is not None and vs.significant and vs.mean > 0:
        by = f"more accurate by {vs.describe(3)}"
    elif vs is not None:
        by = f"ahead within the seed noise ({vs.describe(3)})"
    else:
        by = f"{best.describe(noise, 3)} against {chosen.describe(noise, 3)}"
    return (f"{agree}; the search's choice is not the best confirmed design: {_role(best, r16, plain)} is, "
            f"{by}, and it is the answer.")


def finding(chosen: Design, r16: Design, plain: Design, vs_r16: Difference | None, vs_plain: Difference | None,
            noise: Noise, dominated_by: Design | None = None, vs_dominant: Difference | None = None,
            answer: Design | None = None, fidelity: str = "") -> str:
    """One plain sentence for what the search found: the chosen design against the family's reference SE
    (r=16, or its own: ``baseline_name``) and the plain backbone, each difference with its standard error,
    p-value and seeds. A difference that is not significant is called "no difference", with the proxy's
    seed noise.

    ``dominated_by``: a confirmed design that dominates the chosen one on the confirmed front (``vs_dominant``
    its paired difference with the chosen one, ``answer`` the most accurate confirmed front design if that is
    another one): the sentence then says so first and never calls the choice "the best".
    ``fidelity`` (``Recipe.fidelity``: "digits 16 px, width 0.125, 5 epochs"): what the figures were
    measured on, said first."""
    lead, best = "", "The best design is"
    if dominated_by is not None:
        lead, best = _dominated(chosen, r16, plain, dominated_by, vs_dominant, answer, noise), "The search's choice is"
    text = lead + _finding(chosen, r16, plain, vs_r16, vs_plain, noise, best)
    return f"On {fidelity}: {text[0].lower()}{text[1:]}" if fidelity else text


def _role(d: Design, r16: Design, plain: Design) -> str:
    if d.id == plain.id:
        return "the plain backbone"
    if d.id == r16.id:
        return f"the fixed {baseline_name(r16.arch.backbone)}"
    return f"design {d.id} ({d.arch.label})"


def _dominated(chosen: Design, r16: Design, plain: Design, dom: Design, vs: Difference | None, answer: Design | None,
               noise: Noise) -> str:
    """The sentence that leads a finding whose chosen design another confirmed design dominates."""
    name = _role(dom, r16, plain)
    if vs is not None and vs.significant and vs.mean > 0:
        acc = f"is more accurate by {vs.describe(3)}"
    elif vs is not None:
        acc = f"is as accurate within the seed noise ({vs.describe(3)})"
    else:
        acc = f"scores {dom.describe(noise, 3)} against {chosen.describe(noise, 3)}"
    costs_ = _cost_words(dom, chosen)
    tail = f"; the answer is {name}"
    if answer is not None and answer.id != dom.id:
        tail = f"; the most accurate confirmed front design, the answer, is {_role(answer, r16, plain)}, {answer.describe(noise, 3)}"
    return (f"The search's choice, {_role(chosen, r16, plain)}, is dominated on the confirmed front: {name} {acc} "
            f"{costs_}{tail}. ")


def _finding(chosen: Design, r16: Design, plain: Design, vs_r16: Difference | None, vs_plain: Difference | None,
             noise: Noise, best: str) -> str:
    ref16 = baseline_name(r16.arch.backbone)
    sigma = f"± {noise.sigma:.3f}" if noise.sigma is not None else "unmeasured"
    if chosen.id == plain.id:
        d = _neg(vs_r16)  # the reference SE minus the plain backbone
        if d is None:
            tail = f"{ref16} was not measured"
        elif d.significant:
            tail = (f"{ref16} is {'better' if d.mean > 0 else 'worse'} by {d.describe(3)}"
                    + ("" if d.mean > 0 else f": {ref16} does not pay on this proxy"))
        else:
            tail = (f"{ref16} differs by {d.describe(3)}: no SE design is distinguishable from it at this "
                    f"proxy's seed noise ({sigma})")
        return f"{best} the plain backbone (no SE), {chosen.describe(noise, 3)}; {tail}."
    if chosen.id == r16.id:
        vs = (f"the plain backbone differs by {_neg(vs_plain).describe(3)}" if vs_plain is not None
              else "the plain backbone was not measured")
        return (f"{best} the fixed {ref16}, {chosen.describe(noise, 3)}; {vs}"
                + ("." if vs_plain is not None and vs_plain.significant else
                   f": no per-stage design is distinguishable from it at this proxy's seed noise ({sigma})."))
    name = f"design {chosen.id} ({chosen.arch.label})"
    claims = []
    for ref_name, ref, d in ((ref16, r16, vs_r16), ("the plain backbone", plain, vs_plain)):
        if d is None:
            claims.append(f"{ref_name} was not measured")
        elif d.significant:
            claims.append(f"{'beats' if d.mean > 0 else 'is worse than'} {ref_name} by {d.describe(3)} "
                          f"{_cost_words(chosen, ref)}")
        else:
            claims.append(f"is not distinguishable from {ref_name} ({d.describe(3)}, {_cost_words(chosen, ref)})")
    if all(d is not None and not d.significant for d in (vs_r16, vs_plain)):
        which = "the best" if best.startswith("The best") else "the search's choice"
        return (f"No SE design is distinguishable from the plain backbone or {ref16} at this proxy's seed noise "
                f"({sigma}): {which}, {name}, {claims[0]} and {claims[1]}.")
    return f"{name[0].upper()}{name[1:]} {claims[0]}; it {claims[1]}. Seed noise of the proxy: {sigma}."


def _neg(d: Difference | None) -> Difference | None:
    """The same difference seen from the other side (``b - a``)."""
    if d is None:
        return None
    return Difference(-d.mean, d.se, d.n, None if d.t is None else -d.t, d.p, d.note)
