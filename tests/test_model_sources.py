"""Where weights come from, verified: Hugging Face's own digest, a sha256 prefix
in the file name, --trust pinning, resumable downloads, and `perturber models`.

Every download here is real HTTP against a local host on 127.0.0.1 that
answers as the hub does (tests/hub_server.py); the files are checkpoints with
random weights in each upstream's exact layout.
"""

from __future__ import annotations

import hashlib
import io
import itertools

import pytest
import safetensors.torch
import timm
import torch
import torchvision
import yaml

from hub_server import Hub, serve
from perturber.pipeline import config, models, weights
from perturber.pipeline.cli import main
from perturber.pipeline.models import ModelError, load_model, spec

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
MADRY_KEYS = {"checkpoint_key": "model", "drop_prefixes": ["module.normalizer.", "module.attacker."], "strip_prefix": "module.model."}


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A running local hub (HF_ENDPOINT points at it); a fresh cache and user settings folder."""
    monkeypatch.setenv("PERTURBER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PERTURBER_CONFIG", str(tmp_path / "config"))
    monkeypatch.delenv("PERTURBER_MODELS", raising=False)
    h, stop = serve(Hub())
    monkeypatch.setenv("HF_ENDPOINT", h.url)
    yield h
    stop()


@pytest.fixture
def registry(tmp_path, monkeypatch):
    counter = itertools.count()

    def write(entries: dict):
        path = tmp_path / f"models_{next(counter)}.yaml"
        path.write_text(yaml.safe_dump({n: {"input_size": 64, "mean": MEAN, "std": STD, **e} for n, e in entries.items()}))
        monkeypatch.setenv("PERTURBER_MODELS", str(path))
        return path

    return write


def _bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def madry():
    """A random resnet18 in MadryLab's robustness layout: (file bytes, plain state dict)."""
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    inner = {"module.model." + k: v for k, v in state.items()}
    inner.update({"module.attacker.model." + k: torch.zeros_like(v) for k, v in list(state.items())[:3]})
    inner["module.normalizer.new_mean"] = torch.tensor(MEAN).view(3, 1, 1)
    inner["module.normalizer.new_std"] = torch.tensor(STD).view(3, 1, 1)
    return _bytes({"model": inner, "epoch": 90}), state


def _equal(model: torch.nn.Module, state: dict) -> bool:
    loaded = model.state_dict()
    return list(loaded) == list(state) and all(torch.equal(loaded[k], v) for k, v in state.items())


def _hf_entry(filename: str, **extra) -> dict:
    return {"architecture": "torchvision:resnet18", "weights": {"huggingface": "madrylab/robust-imagenet-models", "filename": filename},
            **MADRY_KEYS, **extra}


# --------------------------------------------------------------------------
# Hugging Face: the hub's own sha256
# --------------------------------------------------------------------------


def test_hub_file_is_checked_against_the_hubs_digest_then_loads_offline(hub, registry, madry):
    data, state = madry
    hub.files["resnet18_l2_eps3.ckpt"] = data
    registry({"robust": _hf_entry("resnet18_l2_eps3.ckpt")})
    assert weights.status(spec("robust")).state == "needs download"
    assert _equal(load_model("robust", "cpu"), state)
    heads = [r for r in hub.requests if r[0] == "HEAD"]
    assert heads and heads[0][1] == "/madrylab/robust-imagenet-models/resolve/main/resnet18_l2_eps3.ckpt"
    path = weights.cached_path(f"{hub.url}/madrylab/robust-imagenet-models/resolve/main/resnet18_l2_eps3.ckpt")
    assert path.read_bytes() == data
    assert path.with_name(path.name + ".sha256").read_text().strip() == hashlib.sha256(data).hexdigest()
    assert weights.status(spec("robust")).state == "cached"

    # offline now: the digest recorded at download time verifies the cached file
    hub.files.clear()
    hub.requests.clear()
    models._load.cache_clear()
    assert _equal(load_model("robust", "cpu"), state)
    assert hub.requests == []
    path.write_bytes(data[:-1] + b"x")  # tampered with in the cache
    models._load.cache_clear()
    with pytest.raises(ModelError, match="checksum mismatch") as e:
        load_model("robust", "cpu")
    assert path.name in _one_line(e)


def test_a_file_that_disagrees_with_the_hub_is_refused_and_not_kept(hub, registry, madry):
    hub.files["w.ckpt"] = madry[0]
    hub.etags["w.ckpt"] = hashlib.sha256(b"something else").hexdigest()
    registry({"m": _hf_entry("w.ckpt")})
    with pytest.raises(ModelError, match="checksum mismatch") as e:
        load_model("m", "cpu")
    _one_line(e)
    folder = weights.cached_path(f"{hub.url}/madrylab/robust-imagenet-models/resolve/main/w.ckpt").parent
    assert [p.name for p in folder.iterdir()] == ["w.ckpt.lock"]  # neither the file nor its part (the lock stays)


def test_an_entry_sha256_must_agree_with_the_hub(hub, registry, madry):
    hub.files["w.ckpt"] = madry[0]
    registry({"m": _hf_entry("w.ckpt", weights={"huggingface": "madrylab/robust-imagenet-models", "filename": "w.ckpt",
                                                "sha256": "ab" * 32})})
    with pytest.raises(ModelError, match="disagrees with the hub") as e:
        load_model("m", "cpu")
    _one_line(e)


def test_a_hub_file_without_a_digest_or_absent_is_one_line(hub, registry, madry):
    hub.files["small.ckpt"] = madry[0]
    hub.etags["small.ckpt"] = None
    registry({"m": _hf_entry("small.ckpt"), "gone": _hf_entry("gone.ckpt")})
    with pytest.raises(ModelError, match="publishes no sha256") as e:
        load_model("m", "cpu")
    _one_line(e)
    with pytest.raises(ModelError, match="HTTP 404") as e:
        load_model("gone", "cpu")
    _one_line(e)


def test_timm_weights_come_from_the_hub_with_timms_config(hub, registry):
    net = timm.create_model("resnet18", pretrained=False)
    buffer = io.BytesIO(safetensors.torch.save(net.state_dict()))
    hub.files["model.safetensors"] = buffer.getvalue()
    path = registry({})
    path.write_text(yaml.safe_dump({"t": {"architecture": "timm:resnet18", "weights": {"timm": "resnet18.a1_in1k"}}}))
    s = spec("t")
    assert (s.input_size, s.mean, s.layers["stride32"]) == (224, tuple(MEAN), "layer4")  # from timm's config and feature info
    model = load_model("t", "cpu")
    assert ("HEAD", "/timm/resnet18.a1_in1k/resolve/main/model.safetensors", None) in hub.requests
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), net.eval()(x), atol=1e-5)


# --------------------------------------------------------------------------
# URLs: a sha256 prefix in the file name, or --trust once
# --------------------------------------------------------------------------


def _sin_file(state) -> bytes:
    return _bytes({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 60})


def test_a_sha256_prefix_in_the_file_name_is_verified(hub, registry, madry):
    state = madry[1]
    data = _sin_file(state)
    good = f"resnet18_train_60_epochs-{hashlib.sha256(data).hexdigest()[:8]}.pth.tar"
    bad = "resnet18_train_60_epochs-0badc0de.pth.tar"
    hub.files[good] = hub.files[bad] = data
    sin = {"architecture": "torchvision:resnet18", "checkpoint_key": "state_dict", "strip_prefix": "module."}
    registry({"good": {**sin, "weights": {"url": f"{hub.url}/plain/{good}"}},
              "bad": {**sin, "weights": {"url": f"{hub.url}/plain/{bad}"}}})
    assert weights.name_prefix(f"{hub.url}/plain/{good}") == good.split("-")[-1].split(".")[0]
    assert _equal(load_model("good", "cpu"), state)
    with pytest.raises(ModelError, match="checksum mismatch") as e:
        load_model("bad", "cpu")
    _one_line(e)
    assert not weights.cached_path(f"{hub.url}/plain/{bad}").exists()


def test_trust_once_pins_the_digest_in_the_users_registry(hub, registry, madry, capsys):
    state = madry[1]
    data = _bytes(state)
    hub.files["inception5h.pth"] = data
    url = f"{hub.url}/plain/inception5h.pth"
    registry({"lucid": {"architecture": "torchvision:resnet18", "weights": {"url": url}, "description": "no digest upstream"}})
    with pytest.raises(ModelError, match="--trust") as e:
        load_model("lucid", "cpu")
    _one_line(e)
    assert weights.status(spec("lucid")).state == "needs --trust"
    assert not any(r[0] == "GET" for r in hub.requests)  # nothing downloaded without trust

    assert main(["models", "fetch", "lucid", "--trust", "--quiet"]) == 0
    out = capsys.readouterr().out
    digest = hashlib.sha256(data).hexdigest()
    assert f"pinned sha256 {digest}" in out
    pinned = yaml.safe_load(config.user_registry().read_text())["lucid"]
    assert pinned == {"pin": {"url": url, "sha256": digest}}  # a pin record, not a copy of the entry
    # the entry in PERTURBER_MODELS (read after the user's registry) keeps the pin for the same URL
    assert spec("lucid").weights["sha256"] == digest and spec("lucid").description == "no digest upstream"
    assert _equal(load_model("lucid", "cpu"), state)
    registry({"lucid": {"architecture": "torchvision:resnet18", "weights": {"url": url + "?v=2"}}})
    assert spec("lucid").weights.get("sha256") is None  # a pin belongs to its URL only
    registry({"lucid": {"architecture": "torchvision:resnet18", "weights": {"url": url}}})
    assert main(["models", "fetch", "lucid"]) == 0
    assert "already there, verified" in capsys.readouterr().out

    hub.files["inception5h.pth"] = _bytes({k: v + 1 for k, v in state.items()})  # upstream changes the file
    weights.cached_path(url).unlink()
    models._load.cache_clear()
    with pytest.raises(ModelError, match="checksum mismatch") as e:
        load_model("lucid", "cpu")
    _one_line(e)


# --------------------------------------------------------------------------
# Resumable downloads and the command
# --------------------------------------------------------------------------


def test_an_interrupted_download_resumes_from_its_part_file(hub, registry, madry, capsys):
    data = madry[0]
    hub.files["big.ckpt"] = data
    hub.cut_after["big.ckpt"] = len(data) // 3
    registry({"robust": _hf_entry("big.ckpt")})
    assert main(["models", "fetch", "robust", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot download" in err and "resumes" in err and len(err.strip().splitlines()) == 1
    target = weights.cached_path(f"{hub.url}/madrylab/robust-imagenet-models/resolve/main/big.ckpt")
    part = target.with_name(target.name + ".part")
    assert part.stat().st_size == len(data) // 3 and not target.exists()

    assert main(["models", "fetch", "robust", "--quiet"]) == 0
    assert "downloaded, verified" in capsys.readouterr().out
    ranges = [r[2] for r in hub.requests if r[0] == "GET" and r[1] == "/cdn/big.ckpt"]
    assert ranges == [None, f"bytes={len(data) // 3}-"]
    assert target.read_bytes() == data and not part.exists()


def test_models_lists_every_entry_with_its_status(hub, registry, madry, tmp_path, capsys):
    hub.files["w.ckpt"] = madry[0]
    local = tmp_path / "local.pt"
    torch.save(madry[1], local)
    registry({"robust": _hf_entry("w.ckpt"), "mine": {"architecture": "torchvision:resnet18", "weights": {"file": str(local)}},
              "lost": {"architecture": "torchvision:resnet18", "weights": {"file": str(tmp_path / "lost.pt")}},
              "raw": {"architecture": "torchvision:resnet18", "weights": {"url": f"{hub.url}/plain/w.ckpt"}}})
    assert main(["models"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(models.registry()) == set(rows)
    assert "ready" in rows["efficientnet_lite0"] and "18.0 MB" in rows["efficientnet_lite0"]
    assert "needs download" in rows["robust"] and "huggingface madrylab/robust-imagenet-models/w.ckpt" in rows["robust"]
    assert "ready" in rows["mine"] and "missing" in rows["lost"] and "needs --trust" in rows["raw"]
    assert "needs --trust" in rows["inceptionv1"] and "needs download" in rows["resnet50_robust_l2_eps3"]
    assert main(["models", "fetch", "robust", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["models", "list", "robust"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "cached" in lines[1]
    assert main(["models", "fetch", "no_such_model"]) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err
    assert main(["models", "fetch"]) == 2
    assert "name the models to fetch" in capsys.readouterr().err


def test_a_download_shows_a_progress_bar(hub, madry, tmp_path, capsys):
    from perturber.pipeline import downloads

    hub.files["w.ckpt"] = madry[0]
    target = downloads.fetch(f"{hub.url}/plain/w.ckpt", tmp_path / "w.ckpt", "m", lambda path: None, progress=True)
    err = capsys.readouterr().err
    assert target.read_bytes() == madry[0]
    total = f"/{len(madry[0]) / 2**20:.1f}M"  # tqdm's bar on stderr, sized from Content-Length (cleared when done)
    assert "m: w.ckpt" in err and total in err and "B/s" in err


# --------------------------------------------------------------------------
# Found in review: concurrent downloads, a complete part file, trust and the cache
# --------------------------------------------------------------------------


def test_processes_fetching_the_same_file_at_once_all_get_it(hub, registry, madry):
    # every rank of a fine-tuning run, and every Dask worker, may fetch the same weights on a fresh cache
    import concurrent.futures

    data = madry[0] * 8  # a few hundred MB/s locally: big enough for the downloads to overlap
    hub.files["w.ckpt"] = data
    url = f"{hub.url}/madrylab/robust-imagenet-models/resolve/main/w.ckpt"
    sha = hashlib.sha256(data).hexdigest()

    def one(_):
        return weights.download(url, "m", lambda path: weights._verify(path, sha, "m"))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(one, range(4)))
    assert len(set(paths)) == 1 and paths[0].read_bytes() == data
    assert not paths[0].with_name(paths[0].name + ".part").exists()
    assert sum(1 for r in hub.requests if r[:2] == ("GET", "/cdn/w.ckpt")) == 1  # the others waited, then found it


def test_a_complete_part_file_is_verified_not_requested_past_its_end(hub, registry, madry):
    data = madry[0]
    hub.files["w.ckpt"] = data
    registry({"robust": _hf_entry("w.ckpt")})
    target = weights.cached_path(f"{hub.url}/madrylab/robust-imagenet-models/resolve/main/w.ckpt")
    target.parent.mkdir(parents=True)
    target.with_name(target.name + ".part").write_bytes(data)  # killed after the last byte, before the rename
    assert _equal(load_model("robust", "cpu"), madry[1])
    assert target.read_bytes() == data


def test_a_download_without_a_digest_never_resumes(hub, registry, madry, capsys):
    # nothing checks a --trust download's bytes, so a part file from earlier (maybe another version) is not reused
    data = _bytes(madry[1])
    hub.files["inception5h.pth"] = data
    url = f"{hub.url}/plain/inception5h.pth"
    registry({"lucid": {"architecture": "torchvision:resnet18", "weights": {"url": url}}})
    target = weights.cached_path(url)
    target.parent.mkdir(parents=True)
    target.with_name(target.name + ".part").write_bytes(b"bytes of an older file")
    assert main(["models", "fetch", "lucid", "--trust", "--quiet"]) == 0
    assert f"pinned sha256 {hashlib.sha256(data).hexdigest()}" in capsys.readouterr().out
    assert target.read_bytes() == data


def test_trust_pins_a_file_downloaded_before(hub, registry, madry, capsys):
    # a --trust whose pin could not be written leaves the file in the cache: it is not "cached" (nothing verifies
    # it), and --trust again pins it
    data = _bytes(madry[1])
    hub.files["w.pth"] = data
    url = f"{hub.url}/plain/w.pth"
    registry({"lucid": {"architecture": "torchvision:resnet18", "weights": {"url": url}}})
    weights.download(url, "lucid")
    assert weights.status(spec("lucid")).state == "needs --trust"
    assert main(["models", "fetch", "lucid", "--trust", "--quiet"]) == 0
    assert "pinned sha256" in capsys.readouterr().out
    assert _equal(load_model("lucid", "cpu"), madry[1])


def test_hex_that_is_not_a_digest_in_a_file_name(hub, registry, madry):
    # a date stamp is all hex digits: not a sha256 prefix; and an entry's own sha256 wins over any name
    data = _bytes(madry[1])
    hub.files["w-20240131.pth"] = data
    url = f"{hub.url}/plain/w-20240131.pth"
    assert weights.name_prefix(url) is None
    registry({"dated": {"architecture": "torchvision:resnet18", "weights": {"url": url}},
              "pinned": {"architecture": "torchvision:resnet18", "weights": {"url": url, "sha256": hashlib.sha256(data).hexdigest()}}})
    assert weights.status(spec("dated")).state == "needs --trust"
    assert _equal(load_model("pinned", "cpu"), madry[1])


def test_a_cached_file_that_fails_its_check_is_removed(hub, registry, madry, capsys):
    hub.files["w.ckpt"] = madry[0]
    registry({"robust": _hf_entry("w.ckpt")})
    load_model("robust", "cpu")
    path = weights.cached_path(f"{hub.url}/madrylab/robust-imagenet-models/resolve/main/w.ckpt")
    path.write_bytes(b"damaged")
    models._load.cache_clear()
    with pytest.raises(ModelError, match="removed it") as e:
        load_model("robust", "cpu")
    _one_line(e)
    assert not path.exists() and weights.status(spec("robust")).state == "needs download"
    assert main(["models", "fetch", "robust", "--quiet"]) == 0
    assert path.read_bytes() == madry[0]


def test_an_unwritable_settings_folder_is_one_line(hub, registry, madry, tmp_path, monkeypatch, capsys):
    hub.files["w.pth"] = _bytes(madry[1])
    registry({"lucid": {"architecture": "torchvision:resnet18", "weights": {"url": f"{hub.url}/plain/w.pth"}}})
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("PERTURBER_CONFIG", str(blocker))
    assert main(["models", "fetch", "lucid", "--trust", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("perturber: error: ") and "\n" not in err and "not-a-folder" in err


def test_models_names_without_list_and_an_unverified_file(registry, madry, tmp_path, capsys):
    local = tmp_path / "local.pt"
    torch.save(madry[1], local)
    registry({"mine": {"architecture": "torchvision:resnet18", "weights": {"file": str(local)}}})
    assert main(["models", "mine", "efficientnet_lite0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["efficientnet_lite0", "mine"]
    assert main(["models", "fetch", "mine", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "unverified" in out and "verified:" not in out.replace("unverified", "")


def test_a_pin_keeps_the_packages_own_entry_in_use(hub, tmp_path):
    # pinning Lucid's InceptionV1 must not freeze a copy of its entry: a later package fix (layers, class list)
    # still reaches a user who trusted the file
    from perturber.pipeline import registry_file

    builtin = spec("inceptionv1")
    url = builtin.weights["url"]
    registry_file.write_entries({"inceptionv1": {"pin": {"url": url, "sha256": "ab" * 32}},
                                 "resnet50_stylized": {"pin": {"url": url, "sha256": "cd" * 32}}})  # another URL's pin
    pinned = spec("inceptionv1")
    assert pinned.weights == {"url": url, "sha256": "ab" * 32}
    assert pinned.origin == str(models.REGISTRY_PATH) and pinned.layers == builtin.layers and pinned.classes == "inception5h"
    assert weights.status(pinned).state == "needs download"
    assert "sha256" not in spec("resnet50_stylized").weights  # a pin belongs to its URL only
    assert "inceptionv1" in models.registry() and len(models.registry()) == len(models.registry([]))

    config.user_registry().write_text("inceptionv1: {pin: {url: x}}\n")
    with pytest.raises(ModelError, match="a pin record is") as e:
        models.registry()
    _one_line(e)
