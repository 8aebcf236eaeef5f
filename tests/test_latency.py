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
        assert e["n"] in (3, 6) and (key == L.REST or '"se":{' in key or e["p10"] <= e["median"] <= e["p90"])
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
    assert f"total {total:.2f} ms" in out
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
