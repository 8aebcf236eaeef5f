"""What several test files share, as fixtures (a test names the fixture as an argument; test files
never import each other or this file): random designs, parameter counts, the fast-SE comparison, the
tiny search's settings and the tiny space's latency table."""
import contextlib
import copy
import dataclasses
import os
import random
import subprocess

import pytest

from se_nas.design.arch import Arch, StageSE
from se_nas.design.choices import GATES, SQUEEZES
from se_nas.design.backbones import BACKBONES


def make_random_arch(rng: random.Random, backbone: str | None = None, gates: tuple[str, ...] = tuple(GATES)) -> Arch:
    """A random design of ``backbone`` (else of a random family): every axis drawn uniformly over the
    choices the family has (its insertion points, its stride forms), each stage off with probability 1/4."""
    backbone = backbone or rng.choice(list(BACKBONES))
    spec = BACKBONES[backbone]
    stages = tuple(
        None
        if rng.random() < 0.25
        else StageSE(
            reduction=rng.choice([1, 2, 3, 4, 8, 16, 32, 64]),
            squeeze=rng.choice(list(SQUEEZES)),
            gate=rng.choice(gates),
            position=rng.choice(spec.positions),
        )
        for _ in spec.depths
    )
    return Arch(backbone, stages, stride_on=rng.choice(spec.stride_forms), se_bias=rng.random() < 0.5)


@pytest.fixture(name="random_arch")
def random_arch_fixture():
    """``random_arch(rng, backbone=None, gates=all)``: a random design (``make_random_arch``)."""
    return make_random_arch


@pytest.fixture
def rng():
    return random.Random(0)


@pytest.fixture
def n_params():
    """``n_params(model)``: the number of parameters of a module, the figure ``count_cost`` must match."""
    return lambda model: sum(p.numel() for p in model.parameters())


# --- the fast SE path (se_nas/nn/fused.py) against the straightforward modules ----------------------
class FastSE:
    """Checks that a unit on the fast SE path computes what the reference modules compute: the same
    outputs, gradients and BatchNorm statistics, in float64."""

    @staticmethod
    def unit_pair(backbone: str, se: StageSE, index: int, width: float = 0.125):
        """A residual unit (fast SE) and a deep copy running the reference SE, in float64."""
        import torch

        from se_nas.design.geometry import resolve
        from se_nas.nn.build import ResidualUnit
        from se_nas.nn.fused import set_fast_se

        arch = Arch.uniform(backbone, se)
        u = resolve(arch, "small", width).units[index]
        torch.manual_seed(index)
        fast = ResidualUnit(u, se_bias=True).double()
        for m in fast.modules():  # non-trivial BatchNorm affine parameters, so every term is exercised
            if isinstance(m, torch.nn.BatchNorm2d):
                torch.nn.init.uniform_(m.weight, 0.5, 1.5)
                torch.nn.init.uniform_(m.bias, -0.5, 0.5)
        ref = set_fast_se(copy.deepcopy(fast), False)
        return u, fast, ref

    @staticmethod
    def upstream_grad(unit, x):
        """A random dL/dy of the unit's output shape (from a copy: a training forward moves BN statistics)."""
        import torch

        with torch.no_grad():
            return torch.randn_like(copy.deepcopy(unit).eval()(x))

    @staticmethod
    def run(unit, x, g):
        """The output, the input's gradient, every parameter's gradient and every buffer after one
        forward and backward of ``unit`` on ``x`` with upstream gradient ``g``."""
        x = x.clone().requires_grad_(True)
        y = unit(x)
        y.backward(g)
        return [y, x.grad, *(p.grad for p in unit.parameters()), *unit.buffers()]

    @staticmethod
    def assert_same(fast_vals, ref_vals):
        import torch

        for a, b in zip(fast_vals, ref_vals, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    @classmethod
    def check_unit(cls, backbone, se, index, batch=3):
        """Unit ``index`` of ``backbone`` with ``se`` everywhere: fast and reference agree."""
        import torch

        u, fast, ref = cls.unit_pair(backbone, se, index)
        x = torch.randn(batch, u.in_ch, 6, 6, dtype=torch.double)
        g = cls.upstream_grad(ref, x)
        cls.assert_same(cls.run(fast, x, g), cls.run(ref, x, g))


@pytest.fixture
def fast_se():
    """``FastSE``: compare the fast SE path with the reference modules."""
    return FastSE


# --- the tiny search ---------------------------------------------------------------------------------
@pytest.fixture
def tiny_search(tmp_path):
    """``tiny_search(**kw)``: the ``SearchConfig`` of a tiny search (tiny space, tiny recipe) in this test's
    ``tmp_path``, without a progress bar, calibration or confirmation, on one worker (the sequential
    search; tests of parallel search ask for more); ``kw`` sets any other field."""
    from se_nas.search.stages import SearchConfig

    def make(**kw):
        return SearchConfig(**{"study": "t", "space": "tiny", "recipe": "tiny", "root": tmp_path, "progress": False,
                               "calibration_seeds": 0, "confirm_top": 0, "workers": 1, **kw})

    return make


ONE_DESIGN = """name: one
backbone: resnet18
choices: {enabled: [true], reduction: [16], squeeze: [avg], gate: [sigmoid], position: [standard]}
"""


@pytest.fixture
def one_design_space(tmp_path):
    """The path of a search space of one design (an r=16 SE ResNet-18): the sampler can only propose
    it again."""
    space = tmp_path / "one.yaml"
    space.write_text(ONE_DESIGN)
    return str(space)


@pytest.fixture
def short_recipe():
    """The tiny recipe cut to one epoch on 40 images, without rungs: trials that take a second."""
    from se_nas.design.recipe import load_recipe

    return dataclasses.replace(load_recipe("tiny"), epochs=1, rungs=(), max_train_samples=40)


@pytest.fixture
def learning_recipe(short_recipe):
    """short_recipe on 400 images: still one epoch, but designs that train get above chance. On 40 images
    (two steps) every trained design can end at chance, which is failed-to-learn and never on a front, so
    a test that needs a front uses this one."""
    return dataclasses.replace(short_recipe, max_train_samples=400)


# --- the latency budget: a table of this machine (real measurements of the tiny space's deployment
# model, ResNet-18 with its ImageNet stem at full width, at 32x32 to stay fast) -----------------------
LATENCY_IMAGE_SIZE = 32


@pytest.fixture(scope="session")
def tiny_latency(tmp_path_factory):
    """The path of a latency table of the tiny space measured here, at ``LATENCY_IMAGE_SIZE`` (one per
    test process: measuring takes seconds)."""
    from se_nas.design.space import load_space
    from se_nas.nn.profile import profile

    path = tmp_path_factory.mktemp("lat") / "tiny.json"
    profile(load_space("tiny"), path, image_size=LATENCY_IMAGE_SIZE, rounds=3, warmup=1)
    return str(path)


@pytest.fixture
def latency_deploy():
    """The deployment model ``tiny_latency`` was measured on (the tiny space's, at 32x32)."""
    from se_nas.design.budget import Deploy

    return Deploy(LATENCY_IMAGE_SIZE)


@pytest.fixture
def tmpfs():
    """``tmpfs(path, size, fill=..., read_only=..., full=...)`` mounts a real tmpfs at ``path`` for this
    test: ``fill(path)`` puts files there first, then it is remounted read-only or filled to the last
    byte (a file ``filler``). Skips the test where this process may not mount (not root in a container)."""
    mounted = []

    def mount(path, size="64k", fill=None, read_only=False, full=False):
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                               capture_output=True).returncode != 0:
            pytest.skip("needs a tmpfs mount (root, with mount allowed)")
        mounted.append(path)
        if fill is not None:
            fill(path)
        if full:
            with open(path / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 4096)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def closed_study_copy():
    """``closed_study_copy(src_db, dst_db)``: a copy of a SQLite study as a finished search leaves it, in
    WAL mode without its ``-wal`` and ``-shm`` files (a study still open here has them)."""
    import sqlite3

    def copy(src, dst):
        dst.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(src)) as a, contextlib.closing(sqlite3.connect(dst)) as b:
            a.backup(b)
            b.execute("PRAGMA journal_mode=WAL")
        assert sorted(p.name for p in dst.parent.iterdir()) == [dst.name]
        return dst

    return copy


@pytest.fixture
def confirmed_study(tmp_path):
    """``confirmed_study(name, (chosen, r16, plain), accs, confirm=None)``: a real study (Optuna's public
    API) searched under ``tiny``, with the three designs as search trials (0.97, 0.95, 0.96: the chosen
    one the most accurate), then a stored confirmation of the three over 3 seeds with accuracies
    ``accs`` ({"chosen"|"r16"|"plain": 3 values}) under ``confirm`` (a Recipe the plan names "wide", as
    `se-nas search --confirm-recipe` stores it; None: the search's own recipe)."""
    import optuna

    from se_nas.design.cost import count_cost
    from se_nas.design.recipe import load_recipe
    from se_nas.record.storage import open_study
    from se_nas.record.study import TrialOutcome, counted
    from se_nas.search.confirm import RUN_PREFIX, Run, confirm_seeds, recipe_key

    def make(name: str, designs, accs: dict, confirm=None):
        chosen, r16, plain = designs
        study = open_study(name, root=tmp_path, create=True)
        search = load_recipe("tiny")
        for k, v in {"recipe": search.to_dict(), "budget": {"max_gflops": 4.0},
                     "deploy": {"image_size": 224, "num_classes": 1000}}.items():
            study.set_user_attr(k, v)
        for i, (arch, acc) in enumerate(((chosen, 0.97), (r16, 0.95), (plain, 0.96))):
            c = count_cost(arch)
            o = TrialOutcome(arch=arch, status="complete", gflops=c.gflops, mparams=c.mparams, accuracy=acc, epochs=2,
                             seed=i)
            study.add_trial(optuna.trial.create_trial(values=o.values, user_attrs=o.to_attrs()))
        seeds = confirm_seeds(3)
        plan = {"after_trials": counted(study)[0], "seeds": seeds, "chosen": chosen.to_json(), "designs": [],
                "r16": r16.to_json(), "plain": plain.to_json()}
        if confirm is not None:
            plan |= {"recipe": confirm.to_dict(), "recipe_name": "wide"}
        study.set_user_attr("confirmation", plan)
        key = recipe_key(confirm or search)
        for arch, a in ((chosen, accs["chosen"]), (r16, accs["r16"]), (plain, accs["plain"])):
            for s, v in zip(seeds, a):
                study.set_user_attr(f"{RUN_PREFIX}{key}:{arch.id}:{s}", Run(arch, s, v).to_attr())
        return study

    return make
