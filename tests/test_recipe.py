"""Recipes: built-in files load, values validate with errors that name the file, key and value."""
import dataclasses

import pytest
import yaml

from se_nas.design.recipe import DATASETS, RECIPE_DIR, Recipe, RecipeError, builtin_recipes, load_recipe


def test_builtin_recipes_are_the_yaml_files():
    assert set(builtin_recipes()) >= {"digits", "tiny", "cifar10", "imagenet"}
    for name in builtin_recipes():
        r = load_recipe(name)
        text = yaml.safe_load((RECIPE_DIR / f"{name}.yaml").read_text())
        for key, value in text.items():
            got = getattr(r, key)
            if key == "rungs":
                assert list(got) == value
            elif key != "data_dir":
                assert got == value, (name, key)


def test_load_by_path_equals_load_by_name(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text((RECIPE_DIR / "digits.yaml").read_text())
    assert load_recipe(p) == load_recipe(str(p)) == load_recipe("digits")


def test_round_trip_through_dict_and_yaml(tmp_path):
    r = dataclasses.replace(load_recipe("imagenet"), rungs=(3, 9), max_train_samples=1000, threads=2)
    assert Recipe.from_dict(r.to_dict()) == r
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(r.to_dict()))
    assert load_recipe(p) == r


def test_missing_keys_take_defaults_and_an_empty_file_is_an_error(tmp_path):
    # An empty recipe file is refused, as an empty space file is (issue 23): it is more likely a mistake.
    p = tmp_path / "empty.yaml"
    p.write_text("# nothing\n")
    with pytest.raises(RecipeError, match=r"empty\.yaml: the file is empty; a recipe is a mapping"):
        load_recipe(p)
    assert load_recipe_text(tmp_path, "epochs: 3\n") == Recipe(epochs=3)
    assert Recipe.from_dict({"epochs": 3}).epochs == 3


def load_recipe_text(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return load_recipe(p)


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    # PyYAML reads 1e-4 as a string; the recipe accepts it as the number the user wrote.
    p = tmp_path / "r.yaml"
    p.write_text("weight_decay: 1e-4\nlr: 3e-1\n")
    r = load_recipe(p)
    assert r.weight_decay == pytest.approx(1e-4) and r.lr == pytest.approx(0.3)


def test_unknown_key_names_file_key_and_allowed(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("epochs: 3\nepoch: 4\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert str(p) in msg and "'epoch'" in msg and "allowed keys" in msg and "epochs" in msg


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("dataset", "mnist", "allowed: " + ", ".join(DATASETS)),
        ("optimizer", "adam", "sgd, adamw"),
        ("schedule", "linear", "cosine, step, constant"),
        ("stem", "big", "imagenet, small"),
        ("device", "gpu", "auto, cpu, cuda"),
        ("epochs", 0, "integer in 1..10000"),
        ("epochs", 2.5, "integer in 1..10000"),
        ("epochs", 100000, "integer in 1..10000"),
        ("batch_size", True, "integer in 1..65536"),
        ("batch_size", 10**6, "integer in 1..65536"),
        ("image_size", -8, "integer in 1..1024"),
        ("image_size", 100000, "integer in 1..1024"),  # would try to allocate terabytes
        ("step_epochs", 10**9, "integer in 1..10000"),
        ("seed", 2**64, "integer in 0..9223372036854775807"),  # torch's generators overflow
        ("lr", 0, "(0, 10]"),
        ("lr", float("nan"), "finite number"),
        ("lr", "fast", "a number"),
        ("width", 5, "(0, 4]"),
        ("momentum", 1.0, "[0, 1)"),
        ("label_smoothing", -0.1, "[0, 1)"),
        ("weight_decay", -1, "[0, 1)"),
        ("seed", -1, "integer in 0..9223372036854775807"),
        ("amp", "yes", "true, false, bf16 or fp16"),
        ("amp", "float16", "true, false, bf16 or fp16"),
        ("rungs", [3, 2], "strictly increasing"),
        ("rungs", "2", "list"),
        ("max_train_samples", 0, "integer >= 1"),
        ("threads", 0, "integer >= 1"),
    ],
)
def test_bad_value_names_key_value_and_rule(tmp_path, key, value, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({key: value}))
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert str(p) in msg and key in msg and needle in msg, msg
    shown = "nan" if value != value else repr(value)
    assert shown in msg, msg


def test_amp_choices_are_the_trainers_table(tmp_path):
    """``amp: fp16`` (or ``bf16``) picks the autocast dtype, where ``true`` lets the GPU decide; the
    names a recipe may give are exactly the trainer's table, and nothing changes on the CPU."""
    import torch

    from se_nas.design import recipe
    from se_nas.nn import train

    assert list(train.AMP) == list(recipe.AMP_DTYPES) and train.AMP["fp16"] is torch.float16
    p = tmp_path / "fp16.yaml"
    p.write_text("amp: fp16\n")
    r = load_recipe(p)
    assert r.amp == "fp16"
    assert train._amp_dtype(r, torch.device("cpu")) is None


def test_dataset_names_are_the_loader_table(monkeypatch):
    """One truth in two floors: the names a recipe may give (design) are exactly the loaders there are
    (nn), load_data dispatches on the loader table, and an unknown name lists the allowed ones."""
    from se_nas.design import recipe
    from se_nas.nn import data

    assert list(data.LOADERS) == list(recipe.DATASETS)
    bundle = object()
    monkeypatch.setitem(recipe.DATASETS, "mine", "a test's own")
    monkeypatch.setitem(data.LOADERS, "mine", lambda r: bundle)
    assert data.load_data(Recipe(dataset="mine", data_dir="somewhere")) is bundle
    with pytest.raises(RecipeError, match="unknown dataset 'theirs'; allowed: digits, cifar10, cifar100, "
                                          "imagefolder, mine"):
        Recipe(dataset="theirs")


def test_every_field_has_one_rule():
    from se_nas.design.recipe import _RULES

    assert list(_RULES) == [f.name for f in dataclasses.fields(Recipe)]


def test_cross_field_rules():
    with pytest.raises(RecipeError, match="data_dir is required for dataset 'cifar10'"):
        Recipe(dataset="cifar10")
    with pytest.raises(RecipeError, match=r"rungs must be epochs before the last one \(1..4\).*\[2, 5\]"):
        Recipe(epochs=5, rungs=(2, 5))
    with pytest.raises(RecipeError, match="warmup_epochs must be less than epochs"):
        Recipe(epochs=2, warmup_epochs=2)


def test_replace_validates_too():
    with pytest.raises(RecipeError, match="batch_size"):
        dataclasses.replace(Recipe(), batch_size=0)
    assert dataclasses.replace(Recipe(), seed=7).seed == 7
    assert dataclasses.replace(Recipe(), rungs=[1, 2]).rungs == (1, 2)  # lists become tuples (hashable)
    hash(Recipe())


def test_missing_recipe_lists_builtin_names(tmp_path):
    with pytest.raises(RecipeError) as e:
        load_recipe(tmp_path / "nope.yaml")
    assert "no such file" in str(e.value) and "digits" in str(e.value) and "tiny" in str(e.value)
    with pytest.raises(RecipeError, match="built-in recipe name"):
        load_recipe("digitz")


def test_not_a_mapping(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(RecipeError, match="must be a mapping"):
        load_recipe(p)


@pytest.mark.parametrize("text, where, problem", [
    ("epochs: [1, \n", "2:1", "expected the node content, but found '<stream end>'"),
    ("epochs: 3\nlr: 0.1: 2\n", "2:8", "mapping values are not allowed here"),
    ("epochs: 3\nseed: \x00\n", "2:7", "unacceptable character #x0000: special characters are not allowed"),
])
def test_bad_yaml_is_one_line_with_file_line_column_and_problem(tmp_path, text, where, problem):
    # PyYAML's own message is up to 8 lines of context; the user gets FILE:LINE:COLUMN and the problem.
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert str(e.value) == f"{p}:{where}: not valid YAML: {problem}"


def test_deeply_nested_yaml_is_one_line_not_recursion_error(tmp_path):
    p = tmp_path / "deep.yaml"
    p.write_text("[" * 2000 + "]" * 2000)
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert str(e.value) == f"{p}, line 1: YAML nested more than 32 levels deep"


def test_billion_laughs_recipe_is_refused_before_it_expands(tmp_path):
    # A 0.5 KB recipe hit MemoryError with a traceback (issue 24): anchors and aliases are refused.
    levels = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 5)]
    with pytest.raises(RecipeError, match=r"r\.yaml, line 1: YAML anchors \(&l0\) are not allowed"):
        load_recipe_text(tmp_path, "\n".join(levels) + "\nrungs: *l4\n")
    with pytest.raises(RecipeError, match=r"r\.yaml, line 1: YAML aliases \(\*x\) are not allowed"):
        load_recipe_text(tmp_path, "rungs: *x\n")


@pytest.mark.parametrize("text", [
    "rungs: [" + ", ".join(["2"] * 40_000) + "]\n",
    "optimizer: [" + ", ".join(["sgd"] * 40_000) + "]\n",
    "data_dir: [" + ", ".join(["x"] * 40_000) + "]\n",
    "? " + "x" * 300_000 + "\n: 1\n",  # an explicit key: a plain one is at most 1,024 characters
])
def test_values_echoed_in_recipe_errors_are_previews(tmp_path, text):
    with pytest.raises(RecipeError) as e:
        load_recipe_text(tmp_path, text)
    assert len(str(e.value)) < 600 and "..." in str(e.value)


def test_a_recipe_above_a_mebibyte_is_refused_unread(tmp_path):
    with pytest.raises(RecipeError, match=r"recipe .*r\.yaml' is 1,048,587 bytes; at most 1,048,576 are allowed"):
        load_recipe_text(tmp_path, "epochs: 3\n" + "#" * (1 << 20) + "\n")


def test_a_directory_or_a_binary_file_as_recipe_says_so(tmp_path):
    (tmp_path / "mine.yaml").write_text("epochs: 3\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(tmp_path)
    assert str(e.value).startswith(f"recipe {str(tmp_path)!r} is a directory; give one YAML file (in it: mine.yaml)")
    p = tmp_path / "image.yaml"
    p.write_bytes(bytes(range(200, 256)) * 4)
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert str(e.value) == f"recipe {str(p)!r} is not a text file: byte 0xc8 at position 0 is not UTF-8"


def test_cli_recipes_lists_prints_and_rejects(tmp_path, capsys):
    from se_nas.cli.parser import main

    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in builtin_recipes():
        assert f"\n{name} " in "\n" + out
    assert main(["recipes", "tiny"]) == 0
    printed = capsys.readouterr().out
    p = tmp_path / "copy.yaml"
    p.write_text(printed)
    assert load_recipe(p) == load_recipe("tiny")  # the printed file is a loadable copy
    assert main(["recipes", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
