"""The trainer: real training of a proxy SE-ResNet-50 on the built-in digits, schedules, early stop,
failures, checkpoint resume and reproducibility across processes."""
import dataclasses
import json
import math
import random
import subprocess
import sys

import pytest
import torch
from torch import nn

from se_nas import PRESETS, build_model
from se_nas.nn.data import DataBundle, TensorData, load_data
from se_nas.design.recipe import OPTIMIZERS, SCHEDULES, load_recipe
from se_nas.nn.train import (DIVERGED, Progress, TrainingFailed, TrainResult, _tensor_batches, data_for_device,
                          evaluate, lr_factor, pick_device, seed_everything, train)


@pytest.fixture(scope="module")
def tiny():
    return load_recipe("tiny")


@pytest.fixture(scope="module")
def data(tiny):
    return load_data(tiny)


def _model(recipe, data, seed=0):
    seed_everything(seed)
    return build_model(PRESETS["se_resnet50"], data.num_classes, recipe.stem, recipe.width)


# --- learning-rate schedule against hand formulas ----------------------------------------------------
def test_lr_factor_cosine_with_warmup():
    r = dataclasses.replace(load_recipe("tiny"), epochs=10, warmup_epochs=2, schedule="cosine")
    spe = 5  # steps per epoch: 10 warm-up steps, 40 cosine steps
    assert [lr_factor(s, r, spe) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    for s in (10, 20, 30, 49):
        assert lr_factor(s, r, spe) == pytest.approx(0.5 * (1 + math.cos(math.pi * (s - 10) / 40)))
    assert lr_factor(30, r, spe) == pytest.approx(0.5)


def test_lr_factor_step_and_constant():
    r = dataclasses.replace(load_recipe("imagenet"), epochs=90, warmup_epochs=0, schedule="step",
                            step_epochs=30, step_gamma=0.1)
    spe = 7
    assert lr_factor(0, r, spe) == 1.0
    assert lr_factor(30 * spe - 1, r, spe) == 1.0
    assert lr_factor(30 * spe, r, spe) == pytest.approx(0.1)
    assert lr_factor(89 * spe, r, spe) == pytest.approx(0.01)
    c = dataclasses.replace(r, schedule="constant")
    assert {lr_factor(s, c, spe) for s in range(0, 600, 37)} == {1.0}


def test_optimizer_and_schedule_tables_are_the_dispatch(tiny, data, monkeypatch):
    # An entry added to a table is a name a recipe accepts and the trainer uses: no other list to edit.
    made = []

    def nesterov(params, r):
        made.append(torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, nesterov=True))
        return made[-1]

    monkeypatch.setitem(OPTIMIZERS, "nesterov", nesterov)
    monkeypatch.setitem(SCHEDULES, "half", lambda r, step, warm, steps_per_epoch: 0.5)
    r = dataclasses.replace(tiny, optimizer="nesterov", schedule="half", epochs=1, rungs=())
    train(_model(r, data), r, data)
    assert made and made[0].param_groups[0]["nesterov"] and made[0].param_groups[0]["lr"] == 0.5 * r.lr


# --- batches and evaluation ---------------------------------------------------------------------------
def test_tensor_batches_cover_each_sample_once():
    ds = TensorData(torch.arange(10.0).view(10, 1, 1, 1).expand(10, 3, 2, 2), torch.arange(10))
    g = torch.Generator().manual_seed(0)
    batches = list(_tensor_batches(ds, 4, True, g, drop_last=False))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(10))
    dropped = list(_tensor_batches(ds, 4, True, torch.Generator().manual_seed(0), drop_last=True))
    assert [len(y) for _, y in dropped] == [4, 4]


def _in_memory_sets():
    """The two kinds of in-memory data: CIFAR's (uint8 at 32x32, normalised, resized and cropped/flipped
    per batch) and digits' (float, resized per batch)."""
    g = torch.Generator().manual_seed(7)
    cifar = TensorData(torch.randint(0, 256, (70, 3, 32, 32), generator=g, dtype=torch.uint8),
                       torch.randint(0, 10, (70,), generator=g), augment=True, pad=3,
                       mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), size=24)
    digits = TensorData(torch.randn(70, 3, 8, 8, generator=g), torch.randint(0, 10, (70,), generator=g), size=12)
    return {"cifar": cifar, "digits": digits}


def _epoch_of_batches(ds, seed):
    torch.manual_seed(seed)  # as the trainer seeds each epoch: the augmentation's draws
    out = list(_tensor_batches(ds, 16, True, torch.Generator().manual_seed(seed), drop_last=True))
    return out, torch.get_rng_state()


@pytest.mark.parametrize("kind", ["cifar", "digits"])
def test_in_memory_data_on_a_device_draws_the_cpu_paths_random_numbers(kind):
    """The device path (``TensorData.to``) shuffles and augments with the CPU generators' numbers, in the
    same order: on the CPU it gives the default path's batches bitwise, every batch of an epoch; on
    another device (``meta`` here: no GPU) the batches live there and the CPU generator ends where the
    CPU path's does, so the crops and flips are the same ones."""
    ds = _in_memory_sets()[kind]
    want, state = _epoch_of_batches(ds, 11)
    assert ds.to("cpu") is ds and ds.to(torch.device("cpu")).device == torch.device("cpu")
    got, state_cpu = _epoch_of_batches(ds.to("cpu"), 11)
    assert len(got) == len(want) == 4
    for (x, y), (wx, wy) in zip(got, want):
        assert x.dtype == wx.dtype == torch.float32 and torch.equal(x, wx) and torch.equal(y, wy)
    assert torch.equal(state_cpu, state)

    on_meta = ds.to("meta")
    assert on_meta.device.type == "meta" and ds.device.type == "cpu"  # a copy: the CPU data is untouched
    batches, state_meta = _epoch_of_batches(on_meta, 11)
    assert [(x.device.type, tuple(x.shape), y.device.type) for x, y in batches] == \
        [("meta", tuple(wx.shape), "meta") for wx, _ in want]
    assert torch.equal(state_meta, state)


def test_the_trainer_moves_in_memory_data_to_a_non_cpu_device_only(tiny, data):
    assert data_for_device(data, "cpu") is data  # the default CPU path: untouched
    moved = data_for_device(data, "meta")
    assert moved.train.device.type == moved.val.device.type == "meta" and data.train.device.type == "cpu"
    assert data_for_device(data, "meta", on_device=False) is data
    files = DataBundle(torch.utils.data.TensorDataset(torch.zeros(4, 3, 8, 8)), data.val, 10, "files")
    kept = data_for_device(files, "meta")
    assert kept.train is files.train and kept.val.device.type == "meta"  # file-backed data keeps its loader


@pytest.mark.slow
def test_training_with_in_memory_data_on_the_device_sees_the_same_batches_and_history(tiny, data):
    """On the CPU, ``train(data_on_device=True)`` trains on exactly the default path's batches (every
    step of both epochs, bitwise, augmentation included) and ends with the same history."""
    aug = DataBundle(TensorData(data.train.images, data.train.labels, augment=True, pad=1, size=tiny.image_size),
                     data.val, data.num_classes, "digits+augment")
    runs = {}
    for on_device in (False, True):
        seen = []

        def step_loss(model, x, y, loss_fn):
            seen.append((x.clone(), y.clone()))
            return loss_fn(model(x), y)

        result = train(_model(tiny, aug), tiny, aug, step_loss=step_loss, data_on_device=on_device)
        runs[on_device] = seen, result.history
    (a, ha), (b, hb) = runs[False], runs[True]
    assert len(a) == len(b) == tiny.epochs * (len(aug.train) // tiny.batch_size)
    assert all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))
    assert ha == hb


def test_evaluate_matches_a_straightforward_count(data):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    x, y = data.val.images, data.val.labels
    expected = (model(x).argmax(1) == y).float().mean().item()
    loader = [(x[i:i + 50], y[i:i + 50]) for i in range(0, len(y), 50)]
    assert evaluate(model, loader, "cpu") == pytest.approx(expected)


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    auto = pick_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")


# --- training -----------------------------------------------------------------------------------------
def test_training_learns_and_reports_history(tiny, data):
    r = dataclasses.replace(tiny, epochs=3, warmup_epochs=0.5)
    seen, lrs = [], []
    orig = torch.optim.SGD.step

    def spy(self, *a, **k):  # record the learning rate the optimizer actually used at each step
        lrs.append(self.param_groups[0]["lr"])
        return orig(self, *a, **k)

    torch.optim.SGD.step = spy
    try:
        res = train(_model(r, data), r, data, on_epoch=lambda e, a: seen.append((e, a)) and False)
    finally:
        torch.optim.SGD.step = orig
    spe = len(data.train) // r.batch_size
    assert lrs == pytest.approx([r.lr * lr_factor(s, r, spe) for s in range(3 * spe)])
    assert isinstance(res, TrainResult) and not res.stopped_early
    assert res.epochs == 3 and len(res.history) == 3 and res.accuracy == res.history[-1]
    assert seen == list(zip((1, 2, 3), res.history))
    assert res.seconds > 0
    assert res.accuracy > 0.3  # chance is 0.1: it learns, even as a tiny proxy in 3 short epochs


class _NaNGrad(torch.autograd.Function):
    """The identity forward; NaN gradients backward: a step whose loss is finite but whose update is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def test_a_step_whose_gradients_are_not_finite_is_skipped_with_max_grad_norm(tiny, data):
    r = dataclasses.replace(tiny, epochs=1, warmup_epochs=0, rungs=())
    steps = []

    def step_loss(model, x, y, loss_fn):
        steps.append(None)
        z = model(x)
        return loss_fn(_NaNGrad.apply(z) if len(steps) == 2 else z, y)

    with pytest.raises(TrainingFailed, match="loss became nan"):  # unguarded: NaN weights, then NaN losses
        train(_model(r, data), r, data, step_loss=step_loss)
    steps.clear()
    model = _model(r, data)
    res = train(model, r, data, step_loss=step_loss, max_grad_norm=math.inf)  # the supernet's setting
    assert len(steps) == len(data.train) // r.batch_size and math.isfinite(res.accuracy)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_on_epoch_true_stops_early_and_progress_shows_a_bar(tiny, data, capsys):
    res = train(_model(tiny, data), tiny, data, on_epoch=lambda e, a: e == 1, progress=True)
    assert res.stopped_early and res.epochs == 1 and len(res.history) == 1
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" not in err


def test_file_backed_data_trains_through_a_dataloader(tmp_path):
    # ImageFolder data goes through torch's DataLoader (not the in-memory fast path).
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(12):
            pix = torch.randint(0, 256, (10, 10, 3), generator=rng, dtype=torch.uint8).numpy()
            Image.fromarray(pix).save(tmp_path / c / f"{i}.png")
    r = dataclasses.replace(load_recipe("tiny"), dataset="imagefolder", data_dir=str(tmp_path), epochs=2,
                            batch_size=8, rungs=())
    d = load_data(r)
    res = train(_model(r, d), r, d)
    assert d.num_classes == 2 and res.epochs == 2
    assert all(acc in (0.0, 0.5, 1.0) for acc in res.history)  # 2 validation images


class _NonFiniteAfter(nn.Module):
    """A real model whose training forward turns non-finite on the n-th call: NaN logits (loss nan),
    or logit 0 at -inf (the loss of every class-0 sample is +inf, no inf - inf)."""

    def __init__(self, inner, n, kind):
        super().__init__()
        self.inner, self.n, self.calls, self.kind = inner, n, 0, kind

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.n:
                if self.kind == "nan":
                    out = out * float("nan")
                else:
                    out = torch.cat([torch.full_like(out[:, :1], float("-inf")), out[:, 1:]], 1)
        return out


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_non_finite_loss_fails_with_epoch_and_step(tiny, data, kind):
    spe = len(data.train) // tiny.batch_size  # 12 steps per epoch
    model = _NonFiniteAfter(_model(tiny, data), spe + 3, kind)
    with pytest.raises(TrainingFailed) as e:
        train(model, tiny, data)
    assert e.value.reason == f"loss became {kind} at epoch 2 step 3"


def test_diverging_but_finite_training_fails_with_the_reason(tiny, data):
    # lr 10 (the case): the loss grows to thousands while staying finite, accuracy at chance.
    r = dataclasses.replace(tiny, lr=10.0)
    with pytest.raises(TrainingFailed) as e:
        train(_model(r, data), r, data)
    reason = e.value.reason
    assert reason.startswith("diverged: mean training loss ") and "at epoch 1 step 12, " in reason, reason
    assert "x that of a uniform guess (ln 10 = 2.30); limit 10x; try a lower lr" in reason, reason
    ratio = float(reason.split(", ")[1].split("x ")[0])
    assert ratio > DIVERGED


@pytest.mark.slow
@pytest.mark.parametrize("seed", [None, 1])
def test_healthy_training_stays_far_below_the_divergence_limit(random_arch, tiny, data, seed):
    """The other side of the rule: the tiny recipe at its lr and at 3x it (SE-ResNet-50 and a random
    design with NoSqueeze, max+avg squeeze and hard-sigmoid) keeps every checked loss under a third of the limit."""
    arch = PRESETS["se_resnet50"] if seed is None else random_arch(random.Random(seed), "resnet50")
    for lr in (tiny.lr, 3 * tiny.lr):
        r = dataclasses.replace(tiny, lr=lr)
        seed_everything(0)
        model = build_model(arch, data.num_classes, r.stem, r.width)
        seen = []
        train(model, r, data, on_progress=lambda p: p.loss is not None and seen.append(p.loss))
        assert seen and max(seen) < DIVERGED / 3 * math.log(10), (arch.label, lr, seen)


def test_on_progress_gets_every_step_and_each_validation(tiny, data):
    calls = []
    res = train(_model(tiny, data), tiny, data, on_progress=calls.append)
    steps = len(data.train) // tiny.batch_size  # 12, fewer than a loss-check window: checked at epoch end
    expected = []
    for e in (1, 2):  # after each step, then once more after validation
        expected += [(e, s, False) for s in range(1, steps + 1)] + [(e, steps, True)]
    assert [(p.epoch, p.step, p.val_accuracy is not None) for p in calls] == expected
    assert all(p.epochs == 2 and p.steps == steps for p in calls)
    assert [p.val_accuracy for p in calls if p.val_accuracy is not None] == list(res.history)
    assert all(p.loss is None for p in calls[:steps - 1])  # no loss known before the first check
    first = calls[steps - 1].loss
    assert abs(first - math.log(10)) < 1.0  # epoch 1 starts near the loss of a uniform guess
    assert calls[-1].loss < first  # and training lowers it
    assert str(calls[-1]) == f"epoch 2/2 step {steps}/{steps} loss {calls[-1].loss:.3g} val {res.history[-1]:.3f}"
    assert str(Progress(1, 5, 3, 22, None)) == "epoch 1/5 step 3/22"


class _OOM(nn.Module):
    def forward(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_fails_the_trial(tiny, data):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _OOM())
    with pytest.raises(TrainingFailed, match=r"^out of memory on cpu at epoch 1 \(batch size 32\): CUDA out"):
        train(model, tiny, data)


def test_other_errors_propagate(tiny, data):
    model = nn.Sequential(nn.Flatten(), nn.Linear(5, 10))  # wrong input size: a bug, not a trial failure
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        train(model, tiny, data)


def test_thread_count_is_put_back_even_when_training_fails(tiny, data):
    """A recipe's ``threads`` holds for its training only; the caller's setting comes back after it,
    also when training raises."""
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))  # something for the optimizer

        def forward(self, x):
            seen.append(torch.get_num_threads())
            raise RuntimeError("probe")

    with pytest.raises(RuntimeError, match="probe"):
        train(Probe(), dataclasses.replace(tiny, threads=wanted), data)
    assert seen == [wanted]
    assert torch.get_num_threads() == before


# --- checkpoints and reproducibility ------------------------------------------------------------------
@pytest.mark.slow
def test_checkpoint_resume_gives_the_same_history(tiny, tmp_path):
    r = dataclasses.replace(tiny, epochs=3, max_train_samples=160)  # 5 steps per epoch: quick
    plain = load_data(r)
    # With crop/flip augmentation, so that the resumed run must also replay the random draws.
    data = DataBundle(TensorData(plain.train.images, plain.train.labels, augment=True, pad=1), plain.val,
                      plain.num_classes, "digits+augment")
    full = train(_model(r, data), r, data)

    ckpt = tmp_path / "trial" / "ckpt.pt"

    def die_in_epoch_2(epoch, acc):
        if epoch == 2:
            raise KeyboardInterrupt  # the process dies before epoch 2 is saved
        return False

    with pytest.raises(KeyboardInterrupt):
        train(_model(r, data), r, data, checkpoint=ckpt, on_epoch=die_in_epoch_2)
    assert ckpt.is_file() and not list(ckpt.parent.glob(".*tmp"))
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 1 and saved["history"] == list(full.history[:1])

    # A fresh process would build a fresh (differently initialised) model; the checkpoint wins.
    resumed = train(_model(r, data, seed=12345), r, data, checkpoint=ckpt)
    assert resumed.history == full.history
    # A finished checkpoint returns at once with the same result.
    again = train(_model(r, data), r, data, checkpoint=ckpt)
    assert again.history == full.history and again.epochs == 3


def test_checkpoint_of_a_stopped_run_stays_stopped(tiny, data, tmp_path):
    ckpt = tmp_path / "c.pt"
    first = train(_model(tiny, data), tiny, data, checkpoint=ckpt, on_epoch=lambda e, a: True)
    again = train(_model(tiny, data), tiny, data, checkpoint=ckpt)
    assert again.stopped_early and again.history == first.history and again.epochs == 1


@pytest.mark.slow
def test_checkpoint_of_another_recipe_is_not_resumed(tiny, data, tmp_path):
    ckpt = tmp_path / "c.pt"
    one = dataclasses.replace(tiny, epochs=1, rungs=())
    train(_model(one, data), one, data, checkpoint=ckpt)
    other = dataclasses.replace(one, lr=0.02)
    with pytest.warns(UserWarning, match="another model or recipe"):
        res = train(_model(other, data), other, data, checkpoint=ckpt)
    assert res.epochs == other.epochs
    # Runtime-only keys (device, threads, workers, rungs) do not invalidate it: it resumes (returns at once).
    runtime = dataclasses.replace(other, device="auto", threads=None, num_workers=3)
    assert train(_model(runtime, data), runtime, data, checkpoint=ckpt).history == res.history
    # An unreadable file is not resumed either.
    ckpt.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="cannot be read"):
        assert train(_model(other, data), other, data, checkpoint=ckpt).epochs == 1


_CHILD = """
import json, sys
from se_nas import PRESETS, build_model
from se_nas.nn.data import load_data
from se_nas.design.recipe import load_recipe
from se_nas.nn.train import seed_everything, train
import dataclasses
r = dataclasses.replace(load_recipe("tiny"), seed=int(sys.argv[1]))
d = load_data(r)
seed_everything(r.seed)
m = build_model(PRESETS["se_resnet50"], d.num_classes, r.stem, r.width)
print(json.dumps(train(m, r, d).history))
"""


@pytest.mark.slow
def test_same_seed_same_history_across_processes(tiny, data):
    # One run in a child process, the same seed here: two processes, identical histories.
    out = subprocess.run([sys.executable, "-c", _CHILD, "3"], capture_output=True, text=True, timeout=300,
                         check=True)
    child = json.loads(out.stdout.strip().splitlines()[-1])

    def here(seed):
        r = dataclasses.replace(tiny, seed=seed)
        return list(train(_model(r, data, seed), r, data).history)

    assert here(3) == child
    assert here(4) != child


@pytest.mark.parametrize("flag, want", [((), 1), (("--threads", "2"), 2)])
def test_se_nas_train_pins_torch_threads_as_the_search_does(tiny, tmp_path, flag, want, capsys):
    # `se-nas train` trained with torch's default (a thread per core): 17.8 s with 1 thread against 52-608 s
    # under load. Every forward pass of the training must run with the pinned count, whatever the process had.
    import yaml

    from se_nas.cli import main
    from se_nas.products.export import read_model

    rfile = tmp_path / "r.yaml"
    rfile.write_text(yaml.safe_dump(dataclasses.replace(tiny, epochs=1, rungs=(), max_train_samples=32).to_dict()))
    seen = set()
    hook = torch.nn.modules.module.register_module_forward_hook(lambda *_: seen.add(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # what the process had: neither 1 nor 2
    try:
        assert main(["train", "se_resnet50", "--recipe", str(rfile), "-o", str(tmp_path / "m.safetensors"),
                     "--quiet", *flag]) == 0
    finally:
        hook.remove()
        torch.set_num_threads(before)
    assert seen == {want}
    assert f"({want} torch thread" in capsys.readouterr().out
    assert read_model(tmp_path / "m.safetensors").meta["recipe"]["threads"] == want
