"""Search-space files: parsing, errors, sampling, size and cheapest design against brute force."""
import itertools

import optuna
import pytest

from se_nas.design.arch import Arch, StageSE
from se_nas.design.cost import count_cost
from se_nas.design.space import SpaceError, list_spaces, load_space


def write(tmp_path, text, name="space.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def all_params(space):
    """Every assignment of the space's parameters, found by running sample() on a recording trial:
    a straightforward enumeration that doesn't reuse SearchSpace.size or stage_options."""
    archs = set()

    def walk(fixed):
        class Recorder:
            def __init__(self):
                self.missing = None

            def suggest_categorical(self, name, choices):
                if name in fixed:
                    return fixed[name]
                self.missing = (name, choices)
                return choices[0]

        rec = Recorder()
        arch = space.sample(rec)
        if rec.missing is None:
            archs.add(arch)
            return
        name, choices = rec.missing
        for c in choices:
            walk({**fixed, name: c})

    walk({})
    return archs


@pytest.mark.parametrize("name", list_spaces())
def test_builtin_spaces_load_and_sample_valid_archs(name):
    space = load_space(name)
    assert name in list_spaces()
    study = optuna.create_study(directions=["maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        t = study.ask()
        arch = space.sample(t)
        assert isinstance(arch, Arch) and arch.backbone == space.backbone
        for i, s in enumerate(arch.stages):
            # SE parameters of a disabled stage are never suggested
            has_params = any(k.startswith(f"s{i + 1}.") and k != f"s{i + 1}.enabled" for k in t.params)
            assert has_params == (s is not None and not space.shared)
        study.tell(t, 0.0)


def test_default_space_matches_the_brief():
    sp = load_space("resnet50-per-stage")
    assert sp.backbone == "resnet50" and (sp.deploy.image_size, sp.deploy.num_classes) == (224, 1000)
    for st in sp.stages:
        assert st["reduction"] == (2, 4, 8, 16, 32)
        assert set(st["squeeze"]) == {"avg", "max", "avgmax", "none"}
        assert set(st["position"]) == {"standard", "pre", "post", "identity", "after_3x3"}
    # (1 off + 5*4*4*5 on) per stage, four stages
    assert sp.size() == (1 + 5 * 4 * 4 * 5) ** 4
    assert sp.baseline() == Arch.uniform("resnet50", StageSE(16))


@pytest.mark.parametrize("text", [
    "backbone: resnet18\nchoices: {reduction: [4, 16], gate: [sigmoid, tanh]}\nstages: {s2: {enabled: true}, s4: {enabled: false}}\n",
    "backbone: resnet18\nshared: true\nchoices: {reduction: [4, 16], squeeze: [avg, none]}\nstages: {s1: {enabled: false}}\n",
])
def test_size_equals_enumeration(tmp_path, text):
    space = load_space(write(tmp_path, text))
    assert space.size() == len(all_params(space))


def test_tiny_size_equals_enumeration():
    space = load_space("tiny")
    assert space.size() == len(all_params(space)) == 375


def test_per_stage_override_fixes_and_restricts(tmp_path):
    space = load_space(write(tmp_path, "backbone: resnet50\nchoices: {reduction: [2, 4, 8]}\n"
                                       "stages: {s1: {enabled: false}, s3: {reduction: 8, gate: [tanh]}}\n"))
    assert space.stages[0]["enabled"] == (False,)
    assert space.stages[2]["reduction"] == (8,) and space.stages[2]["gate"] == ("tanh",)
    assert space.stages[1]["reduction"] == (2, 4, 8)
    arch = space.sample(optuna.trial.FixedTrial({"s2.enabled": True, "s2.reduction": 4, "s3.enabled": True,
                                                 "s4.enabled": False}))
    assert arch.stages == (None, StageSE(4), StageSE(8, gate="tanh"), None)


def test_shared_space_uses_one_design():
    space = load_space("paper-ablations")
    arch = space.sample(optuna.trial.FixedTrial({
        "s1.enabled": False, "s2.enabled": True, "s3.enabled": True, "s4.enabled": True,
        "se.reduction": 8, "se.squeeze": "max", "se.gate": "tanh", "se.position": "pre"}))
    se = StageSE(8, "max", "tanh", "pre")
    assert arch.stages == (None, se, se, se)


def test_cheapest_equals_brute_force(tmp_path):
    # SE forced on in every stage, so the plain network is not in the space
    space = load_space(write(tmp_path, "backbone: resnet18\nchoices: {enabled: [true], reduction: [2, 16], "
                                       "squeeze: [avg, none], position: [standard, pre]}\n"))
    archs = all_params(space)
    costs = {a: count_cost(a) for a in archs}
    by_f, by_p = space.cheapest()
    assert costs[by_f].flops == min(c.flops for c in costs.values())
    assert costs[by_p].params == min(c.params for c in costs.values())
    assert by_f in archs and by_p in archs


def _brute_force_frontier(archs):
    """(flops, params) pairs no other architecture beats on both: all pairs compared."""
    costs = {(c.flops, c.params) for c in map(count_cost, archs)}
    return {c for c in costs if not any(o[0] <= c[0] and o[1] <= c[1] and o != c for o in costs)}


@pytest.mark.parametrize("text", [
    # a real trade-off: SE before a strided unit sees fewer channels but a 4x larger map than after it
    "backbone: resnet18\nchoices: {enabled: [true], reduction: [2], squeeze: [avg, max], position: [standard, pre]}\n",
    "backbone: resnet18\nchoices: {enabled: [true, false], reduction: [4, 16], squeeze: [max, none]}\n",
    "backbone: resnet18\nshared: true\nchoices: {reduction: [2, 32], squeeze: [avg, none], "
    "position: [standard, after_3x3]}\n",
], ids=["forced", "optional", "shared"])
def test_cost_frontier_equals_brute_force(tmp_path, text):
    space = load_space(write(tmp_path, text))
    archs = all_params(space)
    front = space.cost_frontier()
    assert {(f, p) for f, p, _ in front} == _brute_force_frontier(archs)
    for f, p, a in front:  # each point is an architecture of the space with exactly that cost
        assert a in archs and (count_cost(a).flops, count_cost(a).params) == (f, p)
    assert [f for f, _, _ in front] == sorted(f for f, _, _ in front)


def test_cheapest_with_off_allowed_is_plain():
    space = load_space("resnet50-per-stage")
    assert space.cheapest() == (space.plain(), space.plain())


@pytest.mark.parametrize("text, words", [
    ("backbone: resnet50\nbogus: 1\n", ["'bogus'", "allowed", "backbone"]),
    ("backbone: resnet51\n", ["backbone", "'resnet51'", "resnet50"]),
    ("backbone: resnet50\nchoices: {gate: [sigmoid, swish]}\n", ["gate", "'swish'", "hardsigmoid"]),
    ("backbone: resnet50\nchoices: {reduction: [0]}\n", ["reduction", "0", "positive integers"]),
    ("backbone: resnet50\nchoices: {colour: [red]}\n", ["'colour'", "squeeze"]),
    ("backbone: resnet50\nstages: {s5: {enabled: false}}\n", ["'s5'", "s1, s2, s3, s4"]),
    ("backbone: resnet50\nstages: {s1: {gates: [tanh]}}\n", ["stages.s1", "'gates'", "position"]),
    ("backbone: resnet50\nshared: true\nstages: {s1: {reduction: 4}}\n", ["stages.s1", "'reduction'", "shared"]),
    ("backbone: resnet50\ndeploy: {image_size: -3}\n", ["deploy.image_size", "-3"]),
    ("backbone: resnet50\ndeploy: {size: 224}\n", ["deploy", "'size'", "image_size"]),
    ("backbone: resnet50\nchoices: {enabled: [yes, maybe]}\n", ["enabled", "'maybe'", "true, false"]),
    ("backbone: resnet50\nstride_on: 5x5\n", ["stride_on", "5x5", "1x1"]),
    ("- just\n- a list\n", ["expected a mapping"]),
    ("backbone: [unclosed\n", ["malformed YAML", "line 2, column 1", "expected ',' or ']'"]),
    ("backbone: resnet50\nchoices: {gate: [tanh}\n", ["line 2, column 22", "malformed YAML"]),
    ("backbone: [resnet18]\n", ["backbone must be one name", "['resnet18']", "resnet50"]),
    ("backbone: {name: resnet18}\n", ["backbone must be one name", "resnet50"]),
    (f"backbone: resnet50\nchoices: {{reduction: {list(range(1, 66))}}}\n", ["reduction", "65 values", "at most 64"]),
    (f"backbone: resnet50\nstages: {{s2: {{reduction: {list(range(1, 66))}}}}}\n", ["stages.s2", "at most 64"]),
])
def test_bad_space_files_name_file_key_and_allowed(tmp_path, text, words):
    p = write(tmp_path, text, "mine.yaml")
    with pytest.raises(SpaceError) as e:
        load_space(p)
    msg = str(e.value)
    assert str(p) in msg and "\n" not in msg
    for w in words:
        assert w in msg


def test_binary_file_is_named(tmp_path):
    p = tmp_path / "model.pt"
    p.write_bytes(b"PK\x03\x04\x14\x00\xd0\xcf\x11\xe0" * 20)
    with pytest.raises(SpaceError, match=r"model.pt: not a text file \(byte 0xd0 at offset 6 is not UTF-8\)"):
        load_space(p)


def test_missing_space_file_and_unknown_name(tmp_path):
    with pytest.raises(SpaceError, match="cannot read search space file .*nope.yaml"):
        load_space(tmp_path / "nope.yaml")
    with pytest.raises(SpaceError, match="built-in: .*resnet50-per-stage"):
        load_space("no-such-space")


def test_the_space_readme_table_states_each_files_size():
    """search_spaces/README.md's table of the built-in spaces gives each file's number of designs: it
    must be the number the space itself counts (and list every file)."""
    import re
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "search_spaces"
    stated = {}
    for line in (folder / "README.md").read_text().splitlines():
        files = re.findall(r"`([\w-]+\.yaml)`", line.split("|")[1]) if line.startswith("| `") else []
        for f in files:
            stated[f] = int(line.rstrip(" |").split("|")[-1].split()[0].replace(",", ""))
    assert set(stated) == {p.name for p in folder.glob("*.yaml")}
    for name, n in stated.items():
        assert load_space(str(folder / name)).size() == n, name


# --- hostile files: aliases, size, depth, and values echoed in errors (issue 24, item 5) ---------------
def _laughs(levels: int) -> str:
    """A 'billion laughs' document: each anchor lists the previous one 9 times (9**levels values)."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    # Five levels expand to 59,049 values today; the real attack (nine levels, 914 bytes) reached 3.7 GB.
    p = write(tmp_path, "backbone: resnet50\n" + _laughs(5) + "choices:\n  reduction: *l4\n")
    with pytest.raises(SpaceError, match=r"space\.yaml, line 2: YAML anchors \(&l0\) are not allowed"):
        load_space(p)
    p = write(tmp_path, "backbone: resnet50\nchoices:\n  reduction: [*l4, *l4]\n")
    with pytest.raises(SpaceError, match=r"space\.yaml, line 3: YAML aliases \(\*l4\) are not allowed"):
        load_space(p)


def test_builtin_spaces_and_recipes_need_no_anchors():
    from se_nas.design.builtin import RECIPE_DIR, SPACES_DIR
    from se_nas.design.recipe import load_recipe

    for p in [*SPACES_DIR.glob("*.yaml"), *RECIPE_DIR.glob("*.yaml")]:
        (load_space if p.parent == SPACES_DIR else load_recipe)(p)


@pytest.mark.parametrize("text, words", [
    ("backbone: resnet50\nchoices:\n  reduction: " + "[" * 2000 + "]" * 2000 + "\n",
     r"space\.yaml, line 3: YAML nested more than 32 levels deep"),
    ("backbone: resnet50\nchoices:\n  reduction: [" + ", ".join(["x"] * 60_000) + "]\n",
     r"space\.yaml, line 3: more than 50,000 YAML values"),
])
def test_deep_or_huge_yaml_is_one_short_line(tmp_path, text, words):
    with pytest.raises(SpaceError, match=words) as e:
        load_space(write(tmp_path, text))
    assert len(str(e.value)) < 200


def test_a_space_file_above_a_mebibyte_is_refused_unread(tmp_path):
    p = write(tmp_path, "backbone: resnet50\n" + "#" * (1 << 20) + "\n")
    with pytest.raises(SpaceError, match=r"search space file .* is 1,048,596 bytes; at most 1,048,576 are allowed"):
        load_space(p)


@pytest.mark.parametrize("text", [
    "backbone: resnet50\nstages:\n  s1: [" + ", ".join(["16"] * 40_000) + "]\n",  # a list where a mapping goes
    "backbone: resnet50\ndeploy: [" + ", ".join(["224"] * 40_000) + "]\n",
    "backbone: [" + ", ".join(["resnet50"] * 40_000) + "]\n",
    "backbone: resnet50\nchoices:\n  gate: [" + "x" * 500_000 + "]\n",
])
def test_values_echoed_in_errors_are_previews(tmp_path, text):
    # A 200,000-item list gave a 1.49 MB error line; every value shown is now a short preview.
    with pytest.raises(SpaceError) as e:
        load_space(write(tmp_path, text))
    assert len(str(e.value)) < 600 and "..." in str(e.value)
