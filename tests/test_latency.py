"""The latency profile and predictor: real measurements of a tiny space (ResNet-18 at width 0.125 on
16x16 inputs, small stem), coverage of every block, the predictor as the sum of its entries, coverage
and device-mismatch errors, the resume, the CUDA path (its events run where a GPU is present)."""
import json
import math
import os
import time

import pytest
import torch

from se_nas.design import latency as L
from se_nas.nn import profile as P
from se_nas.design.arch import Arch, StageSE
from se_nas.cli.parser import main
from se_nas.design.geometry import resolve, unit_input_sizes
from se_nas.design.space import load_space

KW = dict(stem="small", width=0.125, image_size=16, rounds=3, warmup=1)


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    path = tmp_path_factory.mktemp("lat") / "tiny.json"
    return P.profile(load_space("tiny"), path, **KW)


def _designs(space):
    """Every design of a (small) space, by brute force over the per-stage options."""
    import itertools

    return [Arch(space.backbone, stages) for stages in itertools.product(
        *(space.stage_options(i) for i in range(len(space.stages))))]


def test_profile_covers_every_block_of_the_space(tiny_table):
    space = load_space("tiny")
    # hand count: ResNet-18 stage 1 has one unit shape (both units 8->8, stride 1), stages 2-4 two (the
    # strided first unit with its projection, then the rest); stages 1-3 offer off + 2 r x 2 gates, stage 4
    # off + 1 r x 2 gates
    assert len(tiny_table.entries) - 2 == 1 * 5 + 2 * 5 + 2 * 5 + 2 * 3
    needed = set()
    for arch in _designs(space):  # 375 designs: every unit of every one has its entry
        g = resolve(arch, "small", 0.125)
        needed |= {L.unit_key(u, s) for u, s in zip(g.units, unit_input_sizes(g, 16))}
    assert needed == set(tiny_table.entries) - {L.MODEL, L.REST}
    for key, e in tiny_table.entries.items():
        # an SE entry: its chunk's 3 rounds; the plain model's (the table's level): its own 6 rounds
        # pooled with the 3 of the one chunk of carriers, which times it beside them
        assert e["n"] == (3 if '"se":{' in key else 9) and (key == L.REST or '"se":{' in key or e["p10"] <= e["median"] <= e["p90"])
        # measured entries are positive; an SE unit's (and the rest's) is a difference of noisy times,
        # which the profile clamps at 0 (seen on a loaded machine), never below: the reader refuses that
        assert all(e[q] >= 0 for q in L.STATS) and (e["median"] > 0 or key == L.REST or '"se":{' in key)
    h = tiny_table.header
    assert (h["device"], h["threads"], h["batch"], h["dtype"], h["torch"]) == (
        "cpu", 1, 1, "float32", torch.__version__.split("+")[0])
    assert h["form"] == {"backbone": "resnet18", "stride_on": "1x1", "se_bias": False, "stem": "small",
                         "width": 0.125, "image_size": 16, "num_classes": 1000}
    assert h["device_name"] and h["space"] == "tiny"
    # the file on disk is the table
    assert json.loads(open(tiny_table.path).read())["entries"] == tiny_table.entries


def test_predictor_is_the_sum_of_its_entries(tiny_table):
    e = {k: v["median"] for k, v in tiny_table.entries.items()}
    plain = Arch.uniform("resnet18", None)
    # the plain model is predicted as what was measured of it, end to end
    assert L.predict_latency(plain, tiny_table).ms == pytest.approx(e[L.MODEL])
    # SE r4/hard-sigmoid in stage 2 only: its two units' entries replace the plain ones
    se = StageSE(4, gate="hardsigmoid")
    arch = plain.with_stage(1, se)
    g, gp = resolve(arch, "small", 0.125), resolve(plain, "small", 0.125)
    sizes = unit_input_sizes(g, 16)
    swapped = [(L.unit_key(u, s), L.unit_key(p, s)) for u, p, s in zip(g.units, gp.units, sizes) if u.stage == 1]
    assert len(swapped) == 2 and all("hardsigmoid" in k and "hardsigmoid" not in p for k, p in swapped)
    expected = e[L.MODEL] + sum(e[k] - e[p] for k, p in swapped)
    lat = L.predict_latency(arch, tiny_table)
    assert lat.ms == pytest.approx(expected)
    assert lat.ms == pytest.approx(lat.rest + sum(lat.stages))
    assert lat.rest == pytest.approx(e[L.MODEL] - sum(e[L.unit_key(p, s)] for p, s in zip(gp.units, sizes)))
    # units of one stage with the same shapes share an entry: stage 1's two units are one key
    assert L.unit_key(gp.units[0], sizes[0]) == L.unit_key(gp.units[1], sizes[1])


def test_predictor_speed_and_its_cache(tiny_table):
    p = L.predictor(tiny_table)
    designs = _designs(load_space("tiny"))
    first = [p.ms(a) for a in designs]
    t0 = time.perf_counter()
    again = [p.ms(a) for a in designs]
    assert again == first
    assert (time.perf_counter() - t0) / len(designs) < 1e-3  # tens of thousands per second, with room


def test_missing_blocks_name_what_and_the_command(tiny_table):
    r8 = Arch.uniform("resnet18", None).with_stage(3, StageSE(8))
    with pytest.raises(L.LatencyError) as e:
        L.predict_latency(r8, tiny_table)
    msg = str(e.value)
    assert "no entry for stage 4 unit 1 (32->64 channels at 4x4) with SE r8/avg/sig/std" in msg
    assert "se-nas latency profile --space tiny --device cpu --threads 1 --image-size 16 --stem small " \
           "--width 0.125 -o" in msg and "\n" not in msg
    with pytest.raises(L.LatencyError, match="covers resnet18 .*not design .*resnet34"):
        L.predict_latency(Arch.uniform("resnet34", None), tiny_table)
    with pytest.raises(L.LatencyError, match="covers resnet18 .*stride on 1x1.*stride on 3x3"):
        L.predict_latency(Arch.uniform("resnet18", None, stride_on="3x3"), tiny_table)
    with pytest.raises(L.LatencyError, match="profiled at 16x16, not 224x224.*--image-size 224"):
        L.predict_latency(Arch.uniform("resnet18", None), tiny_table, image_size=224)


def test_rerun_resumes_and_adds_a_design(tmp_path, tiny_table):
    space = load_space("tiny")
    path = tmp_path / "t.json"
    d = json.loads(open(tiny_table.path).read())
    # an interrupted profile: the base chunk (the model and the plain units, saved together) and 3 more
    plain = {k for k in d["entries"] if k in (L.MODEL, L.REST) or '"se":null' in k}
    assert len(plain) == 2 + 7
    plain |= set([k for k in d["entries"] if k not in plain][:3])
    kept = {k: v for k, v in d["entries"].items() if k in plain}
    path.write_text(json.dumps({"header": d["header"], "entries": kept}))
    done = []
    table = P.profile(space, path, progress=lambda n, total: done.append((n, total)), **KW)
    assert set(table.entries) == set(tiny_table.entries)
    assert all(table.entries[k] == v for k, v in kept.items())  # nothing measured twice
    assert done[0] == (12 - 2 + 1, 32) and done[-1] == (32, 32)
    # a design outside the space: --arch profiles just its missing units
    r8 = Arch.uniform("resnet18", None).with_stage(3, StageSE(8))
    table = P.profile(space, path, archs=[r8], **KW)
    assert len(table.entries) == len(tiny_table.entries) + 2
    # covered now (an uncovered unit raises); not its sign: at the test's 3 rounds on a loaded machine a
    # unit's difference to the plain carrier can come out negative (seen at load 6)
    assert math.isfinite(L.predict_latency(r8, L.load_table(path)).ms)
    with pytest.raises(L.LatencyError, match=r"other settings \(batch 1, now 2\).*another file"):
        P.profile(space, path, **{**KW, "batch": 2})


def test_table_from_another_machine_warns(tmp_path, tiny_table):
    d = json.loads(open(tiny_table.path).read())
    d["header"].update(torch="1.13.0", device_name="Some Other CPU")
    path = tmp_path / "other.json"
    path.write_text(json.dumps(d))
    with pytest.warns(L.LatencyWarning, match=r"torch 1\.13\.0 \(here .*on 'Some Other CPU' \(here"):
        table = L.load_table(path)
    assert L.predict_latency(Arch.uniform("resnet18", None), table).ms > 0  # accepted
    path.write_text("{}")
    with pytest.raises(L.LatencyError, match="not a se-nas latency table.*latency profile"):
        L.load_table(path)


def test_cuda_path(tmp_path):
    assert L.parse_device("cuda") == ("cuda", 0) and L.parse_device("cuda:1") == ("cuda", 1)
    assert L.parse_device("cpu") == ("cpu", None) and set(P.TIMERS) == {"cpu", "cuda"}
    for bad in ("gpu", "cpu:0", "cuda:x"):
        with pytest.raises(L.LatencyError, match="--device must be cpu or cuda"):
            L.parse_device(bad)
    path = tmp_path / "gpu.json"
    if not torch.cuda.is_available():
        with pytest.raises(L.LatencyError, match="--device cuda:0 is not available here.*sees no CUDA"):
            P.profile(load_space("tiny"), path, device="cuda:0", **KW)
        assert not path.exists()
        return
    table = P.profile(load_space("tiny"), path, device="cuda", **KW)  # CUDA events
    assert table.header["device"] == "cuda:0" and table.header["threads"] is None
    assert table.header["device_name"] == torch.cuda.get_device_name(0)
    assert L.predict_latency(Arch.uniform("resnet18", StageSE(4)), table).ms > 0
    with pytest.raises(L.LatencyError, match="CUDA device"):
        L.device_name(f"cuda:{torch.cuda.device_count()}")


def test_cli_profile_and_cost(tmp_path, capsys):
    path = tmp_path / "t.json"
    argv = ["latency", "profile", "--space", "tiny", "--stem", "small", "--width", "0.125", "--image-size", "16",
            "--rounds", "2", "--quiet", "-o", str(path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"wrote {path}: 31 unit entries of tiny" in out and "AMD" in out or "cpu (" in out
    assert main(["cost", "se_resnet18", "--image-size", "16", "--latency", str(path)]) == 0
    out = capsys.readouterr().out
    total = L.predict_latency(Arch.uniform("resnet18", StageSE()), L.load_table(path)).ms
    u = L.load_table(path).u_ms(total)
    assert f"total {total:.2f} ± {u:.2f} ms" in out  # the table knows its uncertainty (issue 22)
    assert main(["cost", "se_resnet50", "--latency", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("se-nas cost: error: latency table") and "resnet50" in err and "\n" not in err
    assert main(["latency", "profile", "--device", "tpu", "-o", str(tmp_path / "x.json")]) == 2
    assert "--device must be cpu or cuda[:N], got 'tpu'" in capsys.readouterr().err


def test_process_clock_is_one_thread_only(tmp_path):
    space = load_space("tiny")
    with pytest.raises(L.LatencyError, match="--clock process measures one thread's latency.*--threads 2"):
        P.profile(space, tmp_path / "p.json", threads=2, clock="process", **KW)
    with pytest.raises(L.LatencyError, match="--clock must be one of wall, process on cpu, got 'cpu'"):
        P.profile(space, tmp_path / "p.json", clock="cpu", **KW)
    table = P.profile(space, tmp_path / "p.json", clock="process", **KW)
    assert table.header["clock"] == "process" and "process CPU time" in table.describe()
    assert "--clock process" in table.profile_command()


# --- a table is checked when it is read (issue 22), and bounded before it is (issue 24) ----------------
@pytest.mark.parametrize("change, words", [
    (lambda e: e[L.MODEL].update(median="12.5"), r"entry 'model': median must be a finite number of milliseconds "
                                                 r">= 0, got '12\.5'"),
    (lambda e: e[L.REST].pop("median"), r"entry 'rest' has no median; each entry holds median, p10, p90 \(ms\) and n"),
    (lambda e: e[L.MODEL].update(p10=-0.5), r"entry 'model': p10 must be a finite number of milliseconds >= 0, "
                                            r"got -0\.5"),
    (lambda e: e[L.MODEL].update(p90=math.nan), r"entry 'model': p90 must be .*, got nan"),
    (lambda e: e[L.MODEL].update(n=0), r"entry 'model': n \(the number of repeats\) must be a positive integer"),
    (lambda e: e.update(model=[1, 2, 3]), r"entry 'model' must be a mapping of median, p10, p90 and n, got \[1, 2, 3\]"),
    (lambda e: e[next(k for k in e if k.startswith("{"))].update(median=-1),
     r"entry .\{\"size\":\d+,\"unit\":\{.*\.\.\..*: median must be a finite number .* got -1"),
])
def test_a_bad_table_entry_is_one_line_naming_the_file_and_the_entry(tmp_path, tiny_table, capsys, change, words):
    d = json.loads(open(tiny_table.path).read())
    change(d["entries"])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(L.LatencyError, match=f"latency table '{path}': {words}"):
        L.load_table(path)
    assert main(["cost", "se_resnet18", "--image-size", "16", "--latency", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "Traceback" not in err, err


def test_a_table_above_the_size_bound_is_refused_unread(tmp_path):
    path = tmp_path / "huge.json"
    path.write_text('{"header": {}, "entries": {}}')
    os.truncate(path, L.MAX_TABLE_BYTES + 1)  # sparse: no disk
    with pytest.raises(L.LatencyError, match=f"latency table '{path}' is 33,554,433 bytes; at most 33,554,432 "
                                             r"are allowed \(refused before reading it\)"):
        L.load_table(path)


def test_every_device_kind_a_table_may_name_has_a_timer():
    """The table (design floor, no torch) names the device kinds; the profiler (nn floor) times each."""
    assert tuple(P.TIMERS) == L.DEVICE_KINDS


# --- the table knows its uncertainty (issue 22) ------------------------------------------------------------
def test_the_profile_ends_with_a_check_of_whole_designs_stored_as_the_uncertainty(tiny_table):
    c = tiny_table.check
    plain = Arch.uniform("resnet18", None)
    ids = [d["id"] for d in c["designs"]]
    # the plain design, r=16 everywhere, and CHECK_RANDOM random designs (seeded: the same every run)
    assert ids[:2] == [plain.id, Arch.uniform("resnet18", StageSE(16)).id] and len(ids) == 2 + L.CHECK_RANDOM
    assert ids == [a.id for a in P.check_designs(tiny_table.form, L.space_options(load_space("tiny"), "small", 0.125,
                                                                                   16)[1], L.CHECK_RANDOM)]
    for d in c["designs"]:
        assert d["predicted_ms"] == pytest.approx(L.predict_latency(Arch.from_dict(d["arch"]), tiny_table).ms)
        assert d["error_pct"] == pytest.approx(100 * (d["predicted_ms"] - d["measured_ms"]) / d["measured_ms"])
    assert c["u_pct"] == max(c["worst_abs_error_pct"], c["noise_pct"]) > 0 and c["rounds"] == KW["rounds"]
    assert tiny_table.uncertainty_pct == c["u_pct"]
    assert tiny_table.plus_minus(100.0) == f"100.00 ± {c['u_pct']:.2f} ms"
    # stored in the file beside the header, not in it: re-checking a table keeps its hash
    again = L.load_table(tiny_table.path)
    assert again.check == c and "check" not in again.header and again.hash == tiny_table.hash


def test_check_figures_and_the_drift_rule():
    rows = [{"id": str(i), "arch": {}, "predicted_ms": p, "times": t} for i, (p, t) in enumerate([
        (100.0, [100.0, 101.0, 100.0, 101.0]),  # halves 100 vs 101: 1% noise; error -0.5%
        (110.0, [100.0, 100.0, 100.0, 100.0]),  # +10%
        (99.0, [100.0, 100.0, 100.0, 100.0])])]  # -1%
    c = L.check_summary(rows, 4)
    assert c["worst_abs_error_pct"] == pytest.approx(10) and c["median_abs_error_pct"] == pytest.approx(1)
    assert c["drift_pct"] == pytest.approx(-0.4975, abs=1e-3) and c["noise_pct"] == 0 and c["u_pct"] == c[
        "worst_abs_error_pct"]
    assert not L.drifted(c)  # |drift| below the 1% floor
    assert L.drifted({**c, "drift_pct": 2.5, "noise_pct": 1.0}) and not L.drifted({**c, "drift_pct": 2.5, "noise_pct": 1.5})


def test_latency_check_says_a_drifted_table_drifted_and_names_the_reprofile_command(tmp_path, tiny_table, capsys):
    d = json.loads(open(tiny_table.path).read())
    for e in d["entries"].values():  # a table 50x too slow (far beyond a loaded machine's noise, seen at 170%)
        e.update({q: 50 * e[q] for q in L.STATS})
    path = tmp_path / "slow.json"
    path.write_text(json.dumps(d))
    assert main(["latency", "check", str(path), "--rounds", "3"]) == 1
    out = capsys.readouterr().out
    assert f"latency table '{path}' drifts beyond its own noise" in out
    assert (f"re-profile it on a quiet machine with: se-nas latency profile --space tiny --device cpu --threads 1 "
            f"--image-size 16 --stem small --width 0.125 -o {tmp_path / 'slow-new.json'}") in out
    assert f"stored: ± {tiny_table.check['u_pct']:.1f}%" in out


def test_a_table_from_before_the_check_loads_and_says_its_uncertainty_is_unknown(tmp_path, capsys):
    import shutil

    path = tmp_path / "old.json"
    shutil.copy(os.path.join(os.path.dirname(__file__), "fixtures", "v0.1.0", "latency.json"), path)
    table = L.load_table(path, on_mismatch=lambda m: None)
    assert table.check is None and table.uncertainty_pct is None and table.runtime == "torch"
    assert main(["cost", "resnet18", "--image-size", "32", "--latency", str(path)]) == 0
    assert (f"total {table.ms(L.MODEL):.2f} ms (uncertainty unknown: a table from before se-nas measured one; "
            f"`se-nas latency check {path}` measures it)") in capsys.readouterr().out
    # a budget at its prediction is not flagged: its uncertainty is unknown
    from se_nas.design.budget import Budget

    assert Budget(max_latency_ms=table.ms(L.MODEL), latency=str(path)).borderline(Arch.uniform("resnet18", None)) == ""


def test_a_design_within_u_of_the_latency_limit_is_flagged_never_moved(tiny_table):
    from se_nas.design.budget import Budget
    from se_nas.design.cost import count_cost

    arch = Arch.uniform("resnet18", StageSE(16))
    ms, u = L.predict_latency(arch, tiny_table).ms, tiny_table.u_ms(L.predict_latency(arch, tiny_table).ms)
    cost = count_cost(arch, 16)
    half = min(u, ms) / 2  # u can exceed ms itself on a loaded machine (seen at load 6)
    for limit, fits in ((ms + half, True), (ms - half, False)):  # within u, either side
        b = Budget(max_latency_ms=limit, latency=tiny_table.path)
        assert b.fits(cost, arch) is fits  # decided as predicted: the flag changes nothing
        assert b.check(cost, arch) == Budget(max_latency_ms=limit, latency=tiny_table.path).check(cost, arch)
        note = b.borderline(arch)
        assert note.startswith(f"borderline: predicted {ms:.2f} ms is within ± {u:.2f} ms (the table's uncertainty, "
                               f"{tiny_table.uncertainty_pct:.1f}%) of the {limit:g} ms latency limit"), note
    assert Budget(max_latency_ms=ms + 2 * u, latency=tiny_table.path).borderline(arch) == ""
    assert Budget(latency=tiny_table.path).borderline(arch) == ""  # no limit: nothing to be near


def test_a_bad_stored_check_is_one_line(tmp_path, tiny_table):
    d = json.loads(open(tiny_table.path).read())
    d["check"]["u_pct"] = "big"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(L.LatencyError, match=f"latency table '{path}': check: u_pct must be a finite number of "
                                             r"percent >= 0, got 'big'"):
        L.load_table(path)


# --- a second runtime: ONNX Runtime on the CPU (issue 22) ----------------------------------------------
def test_every_runtime_a_table_may_name_has_a_timer():
    assert tuple(P.RUNTIMES) == L.RUNTIMES


@pytest.mark.slow  # 13 s at load 6: an ONNX export and two sessions per carrier
def test_onnxruntime_profile_builds_its_own_table(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "ort.json"
    assert main(["latency", "profile", "--space", "tiny", "--stem", "small", "--width", "0.125", "--image-size", "16",
                 "--rounds", "2", "--runtime", "onnxruntime", "--quiet", "-o", str(path)]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime on cpu (" in out and "check of 6 whole designs" in out
    table = L.load_table(path)
    assert table.header["runtime"] == "onnxruntime" == table.runtime and table.check is not None
    assert "--runtime onnxruntime" in table.profile_command()
    se = Arch.uniform("resnet18", StageSE(16))
    assert L.predict_latency(se, table).ms > 0 and all(e["median"] >= 0 for e in table.entries.values())
    # a torch profile into it is refused: another runtime, another table
    with pytest.raises(L.LatencyError, match=r"other settings \(runtime 'onnxruntime', now 'torch'\)"):
        P.profile(load_space("tiny"), path, **KW)
    with pytest.raises(L.LatencyError, match="--runtime onnxruntime times its CPU execution provider"):
        P.profile(load_space("tiny"), tmp_path / "x.json", runtime_="onnxruntime", device="cuda", **KW)
    with pytest.raises(L.LatencyError, match="--runtime onnxruntime times wall clock"):
        P.profile(load_space("tiny"), tmp_path / "x.json", runtime_="onnxruntime", clock="process", **KW)


def test_without_onnxruntime_one_line_names_the_extra(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: import fails
    assert main(["latency", "profile", "--space", "tiny", "--runtime", "onnxruntime", "-o", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("se-nas latency: error: --runtime onnxruntime needs the onnxruntime package: pip install "
                           "'se-nas[onnxruntime]' (or pip install onnxruntime)"), err
    assert not (tmp_path / "o.json").exists()
