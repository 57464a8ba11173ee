"""PGD and saliency on the rendered dog with the pip-shipped EfficientNet-Lite0."""

import numpy as np
import pytest
import torch

from perturber.pipeline import engine, inference, models
from perturber.pipeline.attack import Attack, AttackError, blend, label_for, norm_of, pgd, pgd_step, saliency

pytestmark = pytest.mark.slow

MODEL = "efficientnet_lite0"


@pytest.fixture(scope="module")
def dog():
    """(1, 3, 224, 224) the canonical-view dog on a meadow, as the model sees it."""
    ev = engine.evaluate([{"object": "dog", "background": "meadow"}], [MODEL], device="cpu")
    return (torch.tensor(ev.images).permute(0, 3, 1, 2).float() / 255).contiguous()


def _top1(x, model=MODEL):
    with torch.no_grad():
        return int(models.load_model(model, "cpu")(inference.preprocess(x, models.spec(model))).argmax(1)[0])


def test_untargeted_linf_pgd_changes_lite0s_top1(dog):
    before = _top1(dog)
    attack = Attack(MODEL, eps=8 / 255, norm="linf")
    delta = pgd(dog, attack, steps=10)
    assert _top1((dog + delta).clamp(0, 1)) != before
    assert float(norm_of(delta, "linf")[0]) <= 8 / 255
    assert float(norm_of(delta, "linf")[0]) > 4 / 255  # it did use the budget


def test_targeted_pgd_reaches_the_target(dog):
    attack = Attack(MODEL, eps=8 / 255, norm="linf", target=281)  # tabby cat
    delta = pgd(dog, attack, steps=10)
    assert _top1((dog + delta).clamp(0, 1)) == 281


@pytest.mark.parametrize("norm, eps", [("linf", 2 / 255), ("l2", 0.5), ("l2", 3.0)])
def test_the_bound_holds_after_every_step(dog, norm, eps):
    attack = Attack(MODEL, eps=eps, norm=norm, step=eps / 2)  # big steps push at the bound
    label = label_for(dog, attack)
    delta = torch.zeros_like(dog)
    for _ in range(5):
        delta = pgd_step(dog, delta, attack, label)
        assert float(norm_of(delta, norm)[0]) <= eps
        assert float((dog + delta).min()) >= -1e-6 and float((dog + delta).max()) <= 1 + 1e-6  # shown clamped
    assert float(norm_of(delta, norm)[0]) > 0.9 * eps


@pytest.mark.parametrize("norm, eps, target", [("linf", 8 / 255, None), ("l2", 1.0, None), ("linf", 4 / 255, 281)])
def test_matches_torchattacks(dog, norm, eps, target):
    """torchattacks' PGD / PGDL2 with random start off, on the same inputs and settings."""
    torchattacks = pytest.importorskip("torchattacks")
    net = models.load_model(MODEL, "cpu")
    spec = models.spec(MODEL)

    class Contiguous(torch.autograd.Function):  # torchattacks' PGDL2 .view()s the gradient: keep it NCHW
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, g):
            return g.contiguous()

    class Wrapped(torch.nn.Module):  # torchattacks feeds images in [0, 1]
        def forward(self, x):
            return net(inference.preprocess(Contiguous.apply(x), spec))

    wrapped = Wrapped().eval()
    steps, alpha = 5, eps / 8
    cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    reference = cls(wrapped, eps=eps, alpha=alpha, steps=steps, random_start=False)
    attack = Attack(MODEL, eps=eps, norm=norm, target=target)
    label = label_for(dog, attack)
    if target is not None:
        reference.set_mode_targeted_by_label(quiet=True)
    theirs = reference(dog, label) - dog
    ours = pgd(dog, attack, steps=steps)
    assert torch.allclose(ours, theirs, atol=1e-4), float((ours - theirs).abs().max())


def test_blend_and_saliency(dog):
    attack = Attack(MODEL, eps=8 / 255)
    delta = pgd(dog, attack, steps=3)
    batch = blend(dog, delta, [0.0, 0.5, 1.0])
    assert batch.shape == (3, 3, 224, 224)
    assert torch.equal(batch[0], dog[0]) and torch.allclose(batch[2], (dog + delta).clamp(0, 1)[0])
    s = saliency(dog, MODEL)
    assert s.shape == (1, 224, 224) and float(s.max()) == pytest.approx(1.0)
    # the gradient lives on the dog, not the meadow: compare with the object's silhouette
    from perturber.pipeline import scene

    alpha = scene.render({"object": "dog", "background": "none"}, size=224)[..., 3] > 0
    inside, outside = float(s[0][torch.tensor(alpha)].mean()), float(s[0][~torch.tensor(alpha)].mean())
    assert inside > 1.5 * outside, (inside, outside)


@pytest.mark.parametrize("kwargs, message", [
    ({"eps": 0}, "positive"), ({"eps": float("nan")}, "positive"), ({"eps": 2, "norm": "linf"}, "above 1"),
    ({"eps": 0.1, "norm": "l1"}, "unknown norm"), ({"eps": 0.1, "target": 1000}, "0-999"),
    ({"eps": 0.1, "step": -1}, "step"),
])
def test_bad_attacks_are_refused(kwargs, message):
    with pytest.raises(AttackError, match=message):
        Attack(MODEL, **kwargs)
    with pytest.raises(models.ModelError):
        Attack("resnet9000", eps=0.1)


def test_attack_command_writes_delta_and_the_transfer_view(tmp_path, capsys):
    import json

    import xarray as xr

    from perturber.pipeline import cli

    out = tmp_path / "a.npz"
    assert cli.main(["attack", "--object", "dog", "--background", "meadow", "--steps", "10", "--quiet", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "efficientnet_lite2" in printed and f"wrote {out}" in printed
    data = np.load(out)
    assert data["delta"].shape == (224, 224, 3) and np.abs(data["delta"]).max() <= 8 / 255
    assert data["logits"].shape == (5, 2, 1000) and list(data["alphas"]) == [0, 0.25, 0.5, 0.75, 1]
    assert data["logits"][0, 0].argmax() != data["logits"][-1, 0].argmax()  # Lite0 attacked: its top-1 moved
    assert json.loads(str(data["attrs"]))["attack_model"] == MODEL
    store = tmp_path / "a.zarr"
    assert cli.main(["attack", "--norm", "l2", "--eps", "0.5", "--steps", "2", "--models", MODEL, "--quiet", "-o", str(store)]) == 0
    ds = xr.open_zarr(store)
    assert float(np.sqrt((ds["delta"].values.astype(np.float64) ** 2).sum())) <= 0.5
    assert cli.main(["attack", "--eps", "eight", "-o", str(out)]) == 2
    assert "'eight' is not a number" in capsys.readouterr().err
    assert cli.main(["attack", "--eps", "2", "-o", str(out)]) == 2


def test_attack_does_not_wipe_a_store_it_did_not_write(tmp_path, capsys):
    """``attack -o X.zarr`` replaces its own earlier output, never a precompute store."""
    import hashlib

    import xarray as xr

    from perturber.pipeline import cli

    other = tmp_path / "cube.zarr"
    xr.Dataset({"logits": ("x", np.arange(3.0))}, attrs={"spec_sha256": "0" * 64}).to_zarr(other, group="views", zarr_format=3)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in other.rglob("*") if p.is_file()}
    assert cli.main(["attack", "--steps", "1", "--models", MODEL, "--quiet", "-o", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "attack did not write" in err, err
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in other.rglob("*") if p.is_file()} == before
