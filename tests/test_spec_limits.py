"""Resource limits on what users give: huge axes, YAML alias bombs, big or
non-UTF-8 files. Each is refused in one line, fast, before values are built."""

import re
import time

import pytest

from perturber.featureviz import FeatureVizError
from perturber.featureviz import spec as fv_spec
from perturber.pipeline import clusters, spec, yamlsafe
from perturber.pipeline.spec import SpecError

# 351 bytes; 9**9 "lol"s once every alias is expanded
BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{b}: &{b} [{','.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
    + ["name: *i", ""]
)


def cube_yaml(axis: str, extra: str = "") -> str:
    return f"{extra}cubes:\n  c:\n    axes: {{yaw: {axis}}}\n    models: efficientnet_lite0\n"


@pytest.fixture
def fast():
    """Each refusal must come at once (the bugs took 9 s to 120 s and gigabytes)."""
    start = time.perf_counter()
    yield
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("axis, message", [
    ("{range: [-180, 180, 1.0e-10]}", "cube 'c': 3600000000001 samples exceed the budget of 100000"),
    ("{linspace: [-180, 180, 1000000000000]}", "cube 'c': 1000000000000 samples exceed the budget of 100000"),
    ("{linspace: [-180, 180, 1.0e+12]}", "cube 'c': 1000000000000 samples exceed the budget of 100000"),
])
def test_huge_axes_are_counted_not_built(tmp_path, fast, axis, message):
    path = tmp_path / "huge.yaml"
    path.write_text(cube_yaml(axis))
    with pytest.raises(SpecError, match=message):
        spec.load_spec(path)


def test_force_still_has_hard_limits(fast):
    data = {"cubes": {"c": {"axes": {"yaw": {"range": [-180, 180, 1e-10]}}, "models": ["efficientnet_lite0"]}}}
    with pytest.raises(SpecError, match=r"axes.yaw: 3600000000001 values; an axis holds at most 100000, even with --force"):
        spec.parse_spec(data, force=True)
    data["cubes"]["c"]["axes"] = {"yaw": {"linspace": [0, 1, 10_000]}, "pitch": {"linspace": [0, 1, 10_000]},
                                  "hue": [0, 90]}
    with pytest.raises(SpecError, match=r"200000000 samples; a cube holds at most 100000000, even with --force"):
        spec.parse_spec(data, force=True)


def test_range_includes_its_stop_and_lands_on_it():
    c = spec.parse_spec({"cubes": {"c": {"axes": {"yaw": {"range": [0, 30, 10]}, "hue": {"range": [0, 0.3, 0.1]}},
                                         "models": "efficientnet_lite0"}}}).cubes[0]
    assert dict(c.axes)["yaw"] == (0.0, 10.0, 20.0, 30.0)
    assert dict(c.axes)["hue"][-1] == 0.3  # not 0.30000000000000004
    assert c.models == ("efficientnet_lite0",)  # one name alone is a list of one


@pytest.mark.parametrize("load, error", [
    (spec.load_spec, SpecError), (fv_spec.load_spec, FeatureVizError), (clusters.load_recipe, clusters.ClusterError)])
def test_every_user_yaml_goes_through_the_safe_loader(tmp_path, fast, load, error):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS)
    with pytest.raises(error, match=r"bomb.yaml: line 7: expands to more than 1000000 values"):
        load(bomb)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(error, match=r"latin1.yaml: not UTF-8 text \(byte 0xe9 at offset 9\)"):
        load(latin1)
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * 110_000)
    with pytest.raises(error, match=r"big.yaml: larger than 1 MiB"):
        load(big)
    with pytest.raises(error, match=r"cannot read \(Is a directory\)"):
        load(tmp_path)


@pytest.mark.parametrize("text, message", [
    ("&a [*a]", "line 1: an alias refers to a node that contains it"),
    ("a: 1\nb: 2\na: 3\n", "line 3: key 'a' appears twice in one mapping"),
    ("[" * 100 + "]" * 100, "nested more than 64 levels deep"),
    ("[" * 5000 + "]" * 5000, "not valid YAML"),
    ("a: !!python/object:os.system x", "not valid YAML (could not determine a constructor"),
    ("a: [1\n", "not valid YAML"),
])
def test_refused_yaml(fast, text, message):
    with pytest.raises(yamlsafe.YamlError, match="^t.yaml: .*" + re.escape(message)) as err:
        yamlsafe.loads(text, "t.yaml")
    assert "\n" not in str(err.value)


def test_a_few_aliases_and_merges_are_fine():
    data = yamlsafe.loads("base: &b {yaw: 0}\nx: {<<: *b, pitch: 1}\ny: *b\n")
    assert data == {"base": {"yaw": 0}, "x": {"yaw": 0, "pitch": 1}, "y": {"yaw": 0}}
    assert yamlsafe.loads("") is None


@pytest.mark.parametrize("text, message", [
    ("kind: slurm\njobs: true\n", "jobs: must be a whole number in 1..1000, got True"),
    ("kind: slurm\njobs: 100000\n", "jobs: must be a whole number in 1..1000, got 100000"),
    ("kind: slurm\ncluster: {5: 1}\n", "cluster: keys must be names, got 5"),
    ("kind: slurm\ncluster: [cores]\n", "cluster: must map SLURMCluster/PBSCluster arguments to values"),
    ("kind: slurm\nqueue: gpu\n", "unknown key 'queue' (known: cluster, jobs, kind)"),
    ("kind: lsf\n", "kind: must be slurm or pbs, got 'lsf'"),
    ("[slurm]\n", "must map kind, jobs and cluster to values"),
])
def test_bad_cluster_recipes(tmp_path, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(clusters.ClusterError, match=re.escape(message)):
        clusters.load_recipe(path)


def test_exponent_floats_without_a_dot_are_numbers():
    """YAML 1.2 reads 1e-10 as a number; PyYAML's YAML 1.1 read it as the string '1e-10'."""
    from perturber.pipeline import yamlsafe

    assert yamlsafe.loads("[1e-10, 1E12, -2.5e+3, 12, x1e5, '1e5']") == [1e-10, 1e12, -2500.0, 12, "x1e5", "1e5"]
    text = "cubes: {c: {axes: {yaw: {range: [-180, 180, 1e-10]}}, models: [efficientnet_lite0]}}"
    with pytest.raises(spec.SpecError, match="3600000000001 samples exceed the budget"):
        spec.parse_spec(yamlsafe.loads(text))
