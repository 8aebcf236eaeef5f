"""The architecture description: validation, JSON round-trip, canonical id, presets."""
import json
import random

import pytest

from se_nas.design.arch import PRESETS, Arch, ArchError, StageSE, resolve_arch


@pytest.mark.parametrize("seed", range(50))
def test_json_round_trip_is_lossless(random_arch, seed):
    arch = random_arch(random.Random(seed))
    back = Arch.from_json(arch.to_json())
    assert back == arch and back.id == arch.id and back.to_json() == arch.to_json()
    assert Arch.from_json(arch.to_json(indent=2)) == arch


def test_id_is_canonical_and_distinguishes_designs(random_arch):
    a = Arch.uniform("resnet50")
    assert a.id == Arch.from_dict(json.loads(a.to_json())).id
    ids = {random_arch(random.Random(s)).id for s in range(300)}
    assert len(ids) == 300
    assert a.with_stage(3, StageSE(reduction=8)).id != a.id


def test_missing_stage_fields_take_the_paper_defaults():
    a = Arch.from_dict({"backbone": "resnet50", "stages": [{}, None, {"reduction": 8}, {}]})
    assert a.stages[0] == StageSE(16, "avg", "sigmoid", "standard") and a.stages[1] is None
    assert a.stride_on == "1x1" and a.se_bias is False


@pytest.mark.parametrize(
    "stage,needle",
    [
        ({"gate": "softmax"}, "unknown gate 'softmax'; allowed: sigmoid, hardsigmoid, tanh, relu"),
        ({"squeeze": "median"}, "unknown squeeze 'median'; allowed: avg, max, avgmax, none"),
        ({"position": "middle"}, "unknown position 'middle'; allowed: standard, pre, post, identity, after_3x3"),
        ({"reduction": 0}, "reduction ratio must be a positive integer, got reduction=0"),
        ({"reduction": 2.5}, "got reduction=2.5"),
        ({"reduction": True}, "got reduction=True"),
        ({"ratio": 4}, "unknown key(s) ['ratio']"),
    ],
)
def test_bad_stage_values_name_field_value_and_allowed(stage, needle):
    with pytest.raises(ArchError) as e:
        Arch.from_dict({"backbone": "resnet50", "stages": [stage, None, None, None]})
    assert needle in str(e.value) and "stages[0]" in str(e.value)


def test_bad_top_level_values():
    with pytest.raises(ArchError, match="resnet50 has 4 stages, got 3 stage entries"):
        Arch("resnet50", (None, None, None))
    with pytest.raises(ArchError, match="unknown backbone 'resnet51'; allowed: resnet18"):
        Arch.uniform("resnet51")
    with pytest.raises(ArchError, match="stride_on"):
        Arch.uniform("resnet50", stride_on="5x5")
    with pytest.raises(ArchError, match=r"stage index must be in 0\.\.3, got 4"):
        Arch.uniform("resnet50").with_stage(4, None)
    with pytest.raises(ArchError, match="malformed JSON"):
        Arch.from_json('{"backbone": "resnet50", "stages": [')
    with pytest.raises(ArchError, match="expected a JSON object"):
        Arch.from_json("[1, 2]")
    with pytest.raises(ArchError, match="unknown key"):
        Arch.from_json('{"backbone": "resnet50", "stages": [null,null,null,null], "depth": 3}')


def test_arch_is_immutable():
    a = Arch.uniform("resnet50")
    with pytest.raises(AttributeError):
        a.backbone = "resnet18"


def test_presets_and_resolve(tmp_path):
    assert PRESETS["se_resnet50"] == Arch.uniform("resnet50", StageSE())
    assert not PRESETS["resnet50"].has_se
    p = tmp_path / "a.json"
    PRESETS["se_resnet18"].save(p)
    assert resolve_arch(str(p)) == PRESETS["se_resnet18"]
    assert resolve_arch("se_resnet18") == PRESETS["se_resnet18"]
    with pytest.raises(ArchError, match="neither a JSON file nor a preset"):
        resolve_arch("se_resnet5")
    with pytest.raises(ArchError, match="cannot read architecture file"):
        resolve_arch(str(tmp_path / "missing.json"))


# --- files a user may give as an architecture: each bad one is one line naming the file -----------------
def test_binary_file_names_the_file_and_the_byte(tmp_path):
    p = tmp_path / "model.json"
    p.write_bytes(b'{"backbone": "resnet50", ' + bytes([0xD0, 0xCF, 0x11, 0xE0]) * 8)
    with pytest.raises(ArchError) as e:
        resolve_arch(str(p))
    assert str(e.value) == f"architecture file {str(p)!r} is not a text file: byte 0xd0 at position 25 is not UTF-8"


def test_stage_count_mismatch_in_a_file_names_the_file(tmp_path):
    p = tmp_path / "three.json"
    p.write_text('{"backbone": "resnet50", "stages": [null, null, null]}')
    with pytest.raises(ArchError) as e:
        resolve_arch(str(p))
    assert str(e.value) == f"{p}: resnet50 has 4 stages, got 3 stage entries"
    with pytest.raises(ArchError, match=r"^architecture: unknown stride_on '5x5'"):
        Arch.from_dict({"backbone": "resnet50", "stages": [None] * 4, "stride_on": "5x5"})


def test_deeply_nested_json_is_one_line_not_recursion_error(tmp_path):
    p = tmp_path / "deep.json"
    p.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArchError) as e:
        resolve_arch(str(p))
    assert str(e.value) == f"{p}: JSON nested too deeply; an architecture is an object of stage objects (3 levels)"


def test_a_directory_and_a_huge_value_are_one_short_line(tmp_path):
    with pytest.raises(ArchError, match=r"is a directory, not a file$"):
        resolve_arch(str(tmp_path))
    huge = {"backbone": "resnet50", "stages": [[[1] * 100_000], None, None, None]}
    with pytest.raises(ArchError) as e:
        Arch.from_dict(huge, "big.json")
    msg = str(e.value)
    assert msg.startswith("big.json: stages[0]: expected an object or null (no SE), got [[1, 1, 1,") and len(msg) < 120
