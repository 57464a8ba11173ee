"""The model zoo's architectures, class lists and checkpoint layouts, with
random weights in the upstream files' layouts (no downloads, no mocks).

Lucid's InceptionV1 through lucent's module and the inception5h class list;
torchvision's GoogLeNet (its transform_input as mean/std 0.5), AlexNet and
VGG-16; bethgelab's Stylized-ImageNet checkpoint layout; timm architectures
whose input size, mean, std and layers come from timm, in .pt and
.safetensors files. Each user entry is a YAML file in ``tmp_path`` named by
``PERTURBER_MODELS``, with ``PERTURBER_CACHE`` in ``tmp_path`` too.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torchvision

from perturber.pipeline import classes, config, models
from perturber.pipeline.architectures import class_index
from perturber.pipeline.inference import capture, preprocess
from perturber.pipeline.models import ModelError, load_model, sha256_of, spec

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
CLASSES = config.DATA_DIR / "classes"
LUCID_LAYERS = ["conv2d0", "conv2d1", "conv2d2", "mixed3a", "mixed3b", "mixed4a", "mixed4b", "mixed4c", "mixed4d",
                "mixed4e", "mixed5a", "mixed5b"]
#: Channels of each of Lucid's InceptionV1 layers (Lucid's modelzoo, as in Distill's circuits articles).
LUCID_CHANNELS = dict(zip(LUCID_LAYERS, [64, 64, 192, 256, 480, 508, 512, 512, 528, 832, 832, 1024]))


@pytest.fixture(autouse=True)
def _no_user_registry(monkeypatch):
    """Every test starts from the built-in registry only."""
    monkeypatch.delenv("PERTURBER_MODELS", raising=False)


def _one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


def _save(tmp_path, obj, name="w.pt"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _images(n: int = 2, size: int = 224, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def _close(out: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    """out equals ref within ``rel`` of ref's largest magnitude (random networks'
    logits can be tiny, so an absolute tolerance alone says little)."""
    assert out.shape == ref.shape
    scale = ref.abs().max().item()
    assert scale > 0
    err = (out - ref).abs().max().item()
    assert err <= rel * scale, (err, scale)


def _lines(path) -> list[str]:
    return path.read_text().rstrip("\n").split("\n")


# --------------------------------------------------------------------------
# 1. The inception5h class list
# --------------------------------------------------------------------------


def test_inception5h_class_index_is_a_permutation():
    index = class_index("inception5h")
    assert len(index) == 1000
    assert sorted(index) == list(range(1, 1001))  # outputs 0 ("dummy") and 1001-1007 never used
    lines = _lines(CLASSES / "inception5h.txt")
    assert len(lines) == 1008
    assert lines[0].split()[0] == "-" and all(lines[i].split()[0] == "-" for i in range(1001, 1008))

    imagenet = [line.split(" ", 1) for line in _lines(CLASSES / "imagenet.txt")]
    assert len(imagenet) == 1000
    assert [w for w, _ in imagenet] == sorted(w for w, _ in imagenet) == list(classes.imagenet_wnids())
    name = {w: n for w, n in imagenet}
    by_output = {output: i for i, output in enumerate(index)}
    # known facts of Lucid's InceptionV1: output -> ImageNet-1k index and name
    for output, imagenet_index, label in [(1, 278, "kit fox"), (2, 212, "English setter"), (3, 250, "Siberian husky"),
                                          (8, 285, "Egyptian cat")]:
        assert by_output[output] == imagenet_index
        assert imagenet[imagenet_index][1] == label
        assert lines[output].split(" ", 1)[1] == label
    # the names are torchvision's (which tell apart WordNet's two cranes and two maillots)
    assert [n for _, n in imagenet] == torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
    for label, wnids in [("crane", ("n02012849", "n03126707")), ("maillot", ("n03710637", "n03710721"))]:
        twins = [position for position, (w, _) in enumerate(imagenet) if w in wnids]
        assert len(twins) == 2 and all(imagenet[i][1].startswith(label) for i in twins)
        assert index[twins[0]] != index[twins[1]]
    # every line's name is the torchvision name of its wnid, and line i maps to output i
    position = {w: i for i, (w, _) in enumerate(imagenet)}
    for output, line in enumerate(lines):
        wnid, _, label = line.partition(" ")
        if wnid == "-":
            continue
        assert label == name[wnid], (output, line)
        assert index[position[wnid]] == output


def _bad_list(tmp_path, name, change) -> str:
    lines = _lines(CLASSES / "inception5h.txt")
    change(lines)
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_bad_class_lists_are_one_line_errors(tmp_path, user_registry):
    good = _lines(CLASSES / "inception5h.txt")
    twice_wnid = good[1].split()[0]

    def twice(lines):
        lines[5] = good[1]

    def unknown(lines):
        lines[7] = "n99999999 no such class"

    def missing(lines):
        lines[8] = "- removed"

    path = _bad_list(tmp_path, "zoo_twice.txt", twice)
    with pytest.raises(ModelError) as e:
        class_index(path)
    msg = _one_line(e)
    assert "zoo_twice.txt" in msg and twice_wnid in msg and "twice" in msg and "lines 2 and 6" in msg

    path = _bad_list(tmp_path, "zoo_unknown.txt", unknown)
    with pytest.raises(ModelError) as e:
        class_index(path)
    msg = _one_line(e)
    assert "zoo_unknown.txt" in msg and "n99999999" in msg and "line 8" in msg

    path = _bad_list(tmp_path, "zoo_missing.txt", missing)
    with pytest.raises(ModelError) as e:
        class_index(path)
    msg = _one_line(e)
    assert "zoo_missing.txt" in msg and "1 ImageNet-1k classes missing" in msg and good[8].split()[0] in msg

    with pytest.raises(ModelError) as e:
        class_index("no_such_class_list")
    assert "inception5h" in _one_line(e)

    # the registry names the entry too, when it is read
    reg = user_registry({"bad_classes": {"architecture": "lucent_inceptionv1", "weights": {"file": "/x.pt"}, "classes": path}})
    with pytest.raises(ModelError) as e:
        models.registry([str(reg)])
    msg = _one_line(e)
    assert "'bad_classes'" in msg and "zoo_missing.txt" in msg


# --------------------------------------------------------------------------
# 2. Lucid's InceptionV1 in the layout lucent loads (ProGamerGov's inception5h.pth)
# --------------------------------------------------------------------------


def test_builtin_inceptionv1_entry():
    s = spec("inceptionv1")
    assert s.architecture == "lucent_inceptionv1"
    assert s.classes == "inception5h" and s.input_size == 224
    assert s.mean == pytest.approx((117 / 255,) * 3) and s.std == pytest.approx((1 / 255,) * 3)
    assert list(s.layers) == LUCID_LAYERS
    assert all(s.layer_path(layer) == layer for layer in LUCID_LAYERS)


def test_lucent_inceptionv1_upstream_layout(user_registry, tmp_path):
    from lucent.modelzoo.inceptionv1 import InceptionV1

    torch.manual_seed(0)
    upstream = InceptionV1(pretrained=False)  # lucent's own module, redirected ReLUs and softmax as it ships
    state = upstream.state_dict()
    path = _save(tmp_path, state, "inception5h.pth")
    builtin = spec("inceptionv1")
    entry = {"architecture": "lucent_inceptionv1", "weights": {"file": str(path), "sha256": sha256_of(path)},
             "classes": "inception5h", "input_size": 224, "mean": [117 / 255] * 3, "std": [1 / 255] * 3,
             "layers": dict(builtin.layers)}
    user_registry({"lucid": entry}, defaults=False)
    s = spec("lucid")
    model = load_model("lucid", "cpu")
    assert set(model.state_dict()) == set(state)  # the hook's class index stays out of the state dict

    images = _images()
    x = preprocess(images, s)
    assert torch.allclose(x, 255 * images - 117, atol=1e-4)

    # lucent's forward up to softmax2_pre_activation_matmul: the 1008 logits before its softmax
    logits = {}
    upstream.eval().softmax2_pre_activation_matmul.register_forward_hook(lambda m, i, o: logits.setdefault("raw", o))
    paths = [s.layer_path(layer) for layer in LUCID_LAYERS]
    with torch.no_grad():
        probs = upstream(x.contiguous())
        with capture(model, paths) as acts:
            out = model(x)
    raw = logits["raw"]
    assert raw.shape == (2, 1008)
    assert torch.allclose(probs, raw.softmax(1))
    assert out.shape == (2, 1000)
    _close(out, raw[:, list(class_index("inception5h"))])
    for layer in LUCID_LAYERS:
        a = acts[s.layer_path(layer)]
        assert a.ndim == 4 and a.shape[:2] == (2, LUCID_CHANNELS[layer]), (layer, a.shape)
    assert acts["conv2d0"].shape[-1] == 112 and acts["mixed5b"].shape[-1] == 7


def test_lucent_inceptionv1_takes_any_input_size(user_registry, tmp_path):
    # feature visualisation shows the network its own image size (96 px in the demo): lucent's head pools a
    # fixed 7x7 map, which failed below 224 px and silently multiplied the batch above it
    from lucent.modelzoo.inceptionv1 import InceptionV1

    torch.manual_seed(1)
    path = _save(tmp_path, InceptionV1(pretrained=False).state_dict(), "inception5h.pth")
    entry = {**spec("inceptionv1").entry, "weights": {"file": str(path), "sha256": sha256_of(path)}}
    user_registry({"lucid": entry}, defaults=False)
    model = load_model("lucid", "cpu")
    with torch.no_grad(), capture(model, ["mixed5b"]) as acts:
        for side in (64, 96, 256):
            x = torch.rand(3, 3, side, side) * 255 - 117
            out = model(x)
            assert out.shape == (3, 1000), side
            # the head is a global average pool of mixed5b, as at 224 px, where the 7x7 pool covers the map
            head = model.softmax2_pre_activation_matmul(acts["mixed5b"].mean((2, 3)))
            _close(out, head[:, list(class_index("inception5h"))])


# --------------------------------------------------------------------------
# 3. torchvision's GoogLeNet, AlexNet and VGG-16
# --------------------------------------------------------------------------


def _pretrained_structure(name: str) -> torch.nn.Module:
    """The module torchvision's builder makes when it loads its pretrained file."""
    if name == "googlenet":
        return torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False, transform_input=True)
    return torchvision.models.get_model(name, weights=None)


@pytest.mark.filterwarnings("ignore:The default weight initialization of GoogleNet")
def test_googlenet_mean_std_equal_transform_input(user_registry, tmp_path):
    torch.manual_seed(0)
    reference = _pretrained_structure("googlenet")
    with torch.no_grad():  # weights that carry the input to the logits (default ones nearly forget it)
        for m in reference.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = reference.state_dict()
    path = _save(tmp_path, state, "googlenet.pth")
    builtin = spec("googlenet")
    assert builtin.mean == (0.5,) * 3 and builtin.std == (0.5,) * 3
    assert builtin.drop_prefixes == ("aux1.", "aux2.")  # the file carries the auxiliary heads
    user_registry({"my_googlenet": {"architecture": builtin.architecture, "weights": {"file": str(path)},
                                    "drop_prefixes": list(builtin.drop_prefixes),
                                    "mean": list(builtin.mean), "std": list(builtin.std), "layers": dict(builtin.layers)}})
    s = spec("my_googlenet")
    model = load_model("my_googlenet", "cpu")
    assert model.transform_input is False

    images = _images()
    imagenet = models.ModelSpec("ref", "torchvision:googlenet", {}, 224, tuple(MEAN), tuple(STD))
    paths = [s.layer_path(layer) for layer in ("conv2d0", "mixed4a", "mixed5b")]
    with torch.no_grad():
        with capture(reference.eval(), paths) as ref_acts:
            ref = reference(preprocess(images, imagenet))
        with capture(model, paths) as acts:
            out = model(preprocess(images, s))
        wrong = model(preprocess(images, imagenet))  # the test tells the two preprocessings apart
    assert out.shape == ref.shape == (2, 1000)
    assert (ref[0] - ref[1]).abs().max() > 0.01 * ref.abs().max()  # the logits depend on the image
    assert torch.allclose(out, ref, atol=1e-4)
    _close(out, ref, rel=1e-4)
    for p in paths:
        _close(acts[p], ref_acts[p], rel=1e-4)
    assert (wrong - ref).abs().max() > 0.05 * ref.abs().max()
    trainable = models.build_trained(s)  # fine-tuning: logits in train mode too, no auxiliary heads
    assert trainable.training and not any(k.startswith("aux") for k in trainable.state_dict())
    assert isinstance(trainable(preprocess(images, s)), torch.Tensor)


@pytest.mark.filterwarnings("ignore:The default weight initialization of GoogleNet")
@pytest.mark.parametrize("name", ["googlenet", "alexnet", "vgg16"])
def test_torchvision_entries_fit_their_pretrained_files(name):
    s = spec(name)
    assert s.architecture == f"torchvision:{name}" and s.classes == "imagenet"
    with torch.device("meta"):  # structure only: no memory, no initialisation
        model = models.build_architecture(s.architecture)
        pretrained = _pretrained_structure(name)
    modules = dict(model.named_modules())
    for layer in s.layers:
        assert s.layer_path(layer) in modules, (name, layer)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in pretrained.state_dict().items() if not k.startswith(s.drop_prefixes or ("-",))}
    assert ours == theirs  # the file's keys, less the auxiliary heads the entry drops (GoogLeNet)
    # torchvision's own record of the file: its parameter count (GoogLeNet's without the auxiliary heads,
    # which its file carries and torchvision drops after loading, as the architecture here never has them)
    meta = torchvision.models.get_weight(s.weights["torchvision"]).meta
    assert sum(p.numel() for p in model.parameters()) == meta["num_params"]
    assert meta["categories"] is not None and len(meta["categories"]) == 1000
    if name == "googlenet":
        assert list(s.layers) == LUCID_LAYERS  # the same friendly names as Lucid's InceptionV1


# --------------------------------------------------------------------------
# 4. bethgelab's Stylized-ImageNet checkpoint layout
# --------------------------------------------------------------------------


def test_sin_checkpoint_layout_loads_exactly(user_registry, tmp_path):
    sin = spec("resnet50_stylized")
    assert (sin.checkpoint_key, sin.strip_prefix, sin.drop_prefixes) == ("state_dict", "module.", ())
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    checkpoint = {"epoch": 60, "arch": "resnet50", "best_prec1": 0.5,
                  "state_dict": {"module." + k: v for k, v in state.items()}}
    path = _save(tmp_path, checkpoint, "resnet18_sin.pth.tar")
    user_registry({"my_sin": {"architecture": "torchvision:resnet18", "weights": {"file": str(path), "sha256": sha256_of(path)},
                              "checkpoint_key": sin.checkpoint_key, "strip_prefix": sin.strip_prefix,
                              "layers": dict(sin.layers)}})
    model = load_model("my_sin", "cpu")
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k


# --------------------------------------------------------------------------
# 5. timm architectures
# --------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv3_small_050"])
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_timm_entry_takes_its_defaults_from_timm(user_registry, tmp_path, arch, fmt):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(2)
    net = timm.create_model(arch, pretrained=False).eval()
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    path = tmp_path / f"{arch}.{fmt}"
    if fmt == "pt":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    user_registry({"t": {"architecture": f"timm:{arch}", "weights": {"file": str(path)}}}, defaults=False)
    s = spec("t")
    cfg = timm.models.get_pretrained_cfg(arch)
    assert cfg.num_classes == 1000
    assert s.input_size == cfg.input_size[-1] == 224
    assert s.mean == tuple(cfg.mean) and s.std == tuple(cfg.std)
    strides = {f"stride{r}" for r in (4, 8, 16, 32)}
    assert strides <= set(s.layers)
    assert set(s.layers) <= strides | {"stride2"}

    model = load_model("t", "cpu")
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items()) and set(loaded) == set(state)
    x = preprocess(_images(), s)
    with torch.no_grad():
        ref = net(x.contiguous())
        with capture(model, [s.layer_path(layer) for layer in s.layers]) as acts:
            out = model(x)
    assert out.shape == (2, 1000)
    _close(out, ref)
    for layer in s.layers:
        a = acts[s.layer_path(layer)]
        stride = int(layer.removeprefix("stride"))
        assert a.ndim == 4 and a.shape[0] == 2 and a.shape[-1] == 224 // stride, (layer, a.shape)


def test_builtin_convnext_tiny_equals_timm_defaults():
    from perturber.pipeline import timm_models

    s = spec("convnext_tiny")
    assert s.architecture == "timm:convnext_tiny" and dict(s.weights) == {"timm": "convnext_tiny.fb_in1k"}
    written = {"input_size": s.entry["input_size"], "mean": s.entry["mean"], "std": s.entry["std"], "layers": s.entry["layers"]}
    assert written == timm_models.defaults("convnext_tiny", {"timm": "convnext_tiny.fb_in1k"}, "")
    assert set(s.entry) >= {"input_size", "mean", "std", "layers"}  # written out: reading it never imports timm


def test_unknown_timm_architecture(user_registry, tmp_path):
    path = _save(tmp_path, {}, "x.pt")
    reg = user_registry({"t": {"architecture": "timm:no_such_net", "weights": {"file": str(path)}}}, defaults=False)
    with pytest.raises(ModelError) as e:
        models.registry([str(reg)])
    msg = _one_line(e)
    assert "'t'" in msg and "no_such_net" in msg
    # with input size, mean and std written out the entry reads, and loading says the same
    user_registry({"t2": {"architecture": "timm:no_such_net", "weights": {"file": str(path)}}})
    with pytest.raises(ModelError) as e:
        load_model("t2", "cpu")
    assert "no_such_net" in _one_line(e)


@pytest.mark.parametrize("architecture, tag", [("resnet18", "resnet18.no_such_tag"), ("no_such_net", "no_such_net.in1k")])
def test_unknown_timm_weights_tag(user_registry, architecture, tag):
    reg = user_registry({"t": {"architecture": f"timm:{architecture}", "weights": {"timm": tag}}}, defaults=False)
    with pytest.raises(ModelError) as e:
        models.registry([str(reg)])
    msg = _one_line(e)
    assert "'t'" in msg and tag in msg


def test_timm_weights_with_other_classes(user_registry):
    import timm

    tag = "convnext_tiny.fb_in22k"
    assert timm.models.get_pretrained_cfg(tag).num_classes != 1000
    reg = user_registry({"t": {"architecture": "timm:convnext_tiny", "weights": {"timm": tag}}}, defaults=False)
    with pytest.raises(ModelError) as e:
        models.registry([str(reg)])
    msg = _one_line(e)
    assert "'t'" in msg and tag in msg and "1000" in msg


def test_garbage_safetensors_is_refused(user_registry, tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    user_registry({"t": {"architecture": "torchvision:resnet18", "weights": {"file": str(path)}}})
    with pytest.raises(ModelError) as e:
        load_model("t", "cpu")
    assert "bad.safetensors" in _one_line(e)


def test_builtin_registry_does_not_import_timm(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PERTURBER_MODELS"}
    env["PERTURBER_CONFIG"] = str(tmp_path / "config")  # no user registry
    code = "import sys; from perturber.pipeline import models; models.registry(); print('timm' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_timm_vision_transformers_take_any_input_size():
    # the same class of bug as Lucid's fixed head: timm's ViTs (and Swins) assert their training size, and
    # feature visualisation shows them their own image size
    import timm

    for arch in ("vit_tiny_patch16_224",):  # (swin_tiny too; its 20 s of initialisation kept it out)
        torch.manual_seed(0)
        model = models.build_architecture(f"timm:{arch}").eval()
        fixed = timm.create_model(arch, pretrained=False).eval()
        fixed.load_state_dict(model.state_dict())  # the same parameters: only the size check differs
        x = torch.rand(1, 3, 224, 224)
        with torch.no_grad():
            assert model(torch.rand(2, 3, 96, 96)).shape == (2, 1000), arch
            _close(model(x), fixed(x))
