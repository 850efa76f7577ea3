"""Every CMP variant: interface, one compile, gradients, batch invariance and vmap, masked
statistics, bfloat16; the registry (names, options, variants outside the package) and LogoCap's
S x S initialisation.

Per case, one jitted probe computes everything the float32 tests read (train and eval outputs,
masked and unmasked statistics, per-instance and per-image vmaps, gradients), so a case
compiles three small programs (initialisation, probe, bfloat16 outputs) on [6, 5, 5, 34]
features at tiny widths.
"""

import functools
import importlib
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cmp_variant_cases import COUNT, MASK, NUM_JOINTS, SIDE, WINDOW_MLP, cases, features

from logocap_jax import config_utils
from logocap_jax.commands import cli
from logocap_jax.models import LogoCap, cmp_variants
from logocap_jax.weights import convert

ROOT = Path(__file__).resolve().parent.parent
CASES = cases()
WEIGHTS = jax.random.normal(jax.random.key(7), (COUNT, SIDE, SIDE, NUM_JOINTS))
# These programs run a few times each, so compilation dominates: without LLVM's optimisations
# it is 2.5x faster (joint_attention's probe: 14.5 -> 5.7 s); XLA's own passes still run.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


class Case:
    """A variant's module, variables whose running statistics moved off their initial values
    (float32 cases), and its jitted probe (traces counted)."""

    def __init__(self, name, options, dtype=jnp.float32, variables=None):
        self.name, self.options = name, options
        self.model = cmp_variants.create(name, options, num_joints=NUM_JOINTS, dtype=dtype)
        self.traces = 0
        self.probe = jit(self._probe)
        self.variables = variables if variables is not None else jit(self._initialize)()

    def _initialize(self):
        variables = self.model.init(jax.random.key(0), features(0), train=False)
        _, stats = self._train(variables, features(1), jnp.ones(COUNT, bool))
        return {**variables, **stats}

    def _train(self, variables, x, mask):
        return self.model.apply(variables, x, train=True, mask=mask, mutable=["batch_stats"])

    def _eval(self, variables, x):
        return self.model.apply(variables, x, train=False)

    def _probe(self, variables, x, other, mask):
        """Everything the tests read, for features x and `other` (x with the unselected
        instances replaced)."""
        self.traces += 1
        # Train mode on x, on `other` with the mask, and on `other` counting every instance.
        train, stats = jax.vmap(functools.partial(self._train, variables))(
            jnp.stack([x, other, other]), jnp.stack([mask, mask, jnp.ones_like(mask)])
        )

        def loss(params):
            out, _ = self._train({**variables, "params": params}, x, mask)
            return jnp.sum(out * WEIGHTS)

        one_by_one = jax.vmap(lambda f: self._eval(variables, f[None])[0])
        per_image = jax.vmap(lambda f: self._eval(variables, f))
        images = per_image(x.reshape(2, COUNT // 2, *x.shape[1:]))
        return dict(
            train=train[0],
            stats=jax.tree_util.tree_map(lambda s: s[0], stats),
            train_other=train[1],
            stats_other=jax.tree_util.tree_map(lambda s: s[1], stats),
            stats_unmasked=jax.tree_util.tree_map(lambda s: s[2], stats),
            eval=self._eval(variables, x),
            eval_single=one_by_one(x),
            eval_images=images.reshape(COUNT, *images.shape[2:]),
            grads=jax.grad(loss)(variables.get("params", {})),
        )

    def run(self, seed):
        x = features(seed)
        other = jnp.where(MASK[:, None, None, None], x, 10.0 * features(seed + 1) + 5.0)
        return self.probe(self.variables, x, other, MASK)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    case = Case(*CASES[request.param])
    case.result = case.run(2)
    return case


@pytest.fixture(scope="module")
def bf16_result(case):
    """Train-mode (masked) and eval outputs and statistics in bfloat16, same variables."""
    low = Case(case.name, case.options, dtype=jnp.bfloat16, variables=case.variables)

    @jit
    def run(variables, x, mask):
        train, stats = low._train(variables, x, mask)
        return dict(train=train, stats=stats, eval=low._eval(variables, x))

    return run(case.variables, features(2), MASK)


def _leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def _max_relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)


def test_interface_and_shapes(case):
    for key in ("train", "eval"):
        out = case.result[key]
        assert out.shape == (COUNT, SIDE, SIDE, NUM_JOINTS) and out.dtype == jnp.float32, key
        assert np.all(np.isfinite(out)), key
    assert set(case.variables) <= {"params", "batch_stats"}
    module = importlib.import_module(cmp_variants.module_path(case.name))
    assert case.name == "conv" or "Question:" in module.__doc__


def test_one_compile_for_new_values(case):
    for seed in (3, 4):
        result = case.run(seed)
    assert case.traces == 1
    assert not np.allclose(result["eval"], case.result["eval"]) or case.name == "fixed_kernel"


def test_gradients_reach_every_parameter(case):
    flat = jax.tree_util.tree_leaves_with_path(case.result["grads"])
    assert len(flat) == len(_leaves(case.variables.get("params", {})))
    if case.options.get("learned", True):
        assert flat, "a learned variant has parameters"
    for path, grad in flat:
        assert np.all(np.isfinite(grad)), jax.tree_util.keystr(path)
        assert np.abs(grad).max() > 0, f"no gradient reaches {jax.tree_util.keystr(path)}"


def test_eval_is_batch_invariant_and_vmaps(case):
    # float32 matrix products may block differently by batch size: measured 0 to 5.8e-7.
    assert _max_relative(case.result["eval_single"], case.result["eval"]) < 1e-5
    assert _max_relative(case.result["eval_images"], case.result["eval"]) < 1e-5


def test_unselected_instances_do_not_affect_statistics(case):
    result = case.result
    np.testing.assert_allclose(
        result["train_other"][MASK], result["train"][MASK], rtol=1e-5, atol=1e-5
    )
    for ours, reference in zip(_leaves(result["stats_other"]), _leaves(result["stats"])):
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)
    if _leaves(result["stats"]):
        # The mask matters: statistics over all instances differ.
        moved = [
            _max_relative(a, b)
            for a, b in zip(_leaves(result["stats_unmasked"]), _leaves(result["stats"]))
        ]
        assert max(moved) > 1e-2


def test_bfloat16_is_close_to_float32(case, bf16_result):
    for key in ("train", "eval"):
        assert bf16_result[key].dtype == jnp.bfloat16
        # 8 mantissa bits through a few layers: measured 1.5e-3 (fixed_kernel) to 9e-3 of the
        # largest output, 3.3e-2 for joint_attention (LayerNorms over 8 channels amplify).
        assert _max_relative(bf16_result[key], case.result[key]) < 5e-2, key
    for ours, reference in zip(_leaves(bf16_result["stats"]), _leaves(case.result["stats"])):
        # Statistics stay float32; measured up to 6.3e-3.
        assert ours.dtype == jnp.float32 and _max_relative(ours, reference) < 5e-2


def test_built_in_names_are_the_package_files():
    files = sorted(
        path.stem
        for path in (ROOT / "logocap_jax" / "models" / "cmp_variants").glob("*.py")
        if not path.stem.startswith("_")
    )
    assert list(cmp_variants.names()) == files
    assert {"conv", "fixed_kernel", "skeleton_graph", "joint_attention", "separable"} <= set(files)


@pytest.mark.parametrize("name", ["conv", "skeleton_graph"])
def test_unknown_option_names_the_variant_and_its_options(name):
    with pytest.raises(ValueError) as error:
        cmp_variants.create(name, {"widht": 3}, num_joints=NUM_JOINTS, dtype=jnp.float32)
    message = str(error.value)
    assert "widht" in message and repr(name) in message
    assert all(option in message for option in cmp_variants.default_options(name))


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="'convv'.*Built-in variants: conv"):
        cmp_variants.get("convv")


@pytest.fixture
def window_mlp(tmp_path, monkeypatch):
    """A variant written as one file outside the package, importable as labcmp.window_mlp."""
    (tmp_path / "labcmp").mkdir()
    (tmp_path / "labcmp" / "window_mlp.py").write_text(WINDOW_MLP)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "labcmp.window_mlp"
    for module in ("labcmp.window_mlp", "labcmp"):
        sys.modules.pop(module, None)


def _mini_config(variant, options, half_size):
    config = config_utils.load_config(str(ROOT / "configs" / "mini.py"))
    config.model.cmp_variant = variant
    config.model.cmp_options = options
    config.logo_ca.local_half_size = half_size
    return config


@pytest.mark.parametrize("half_size", [3, 5])
def test_logocap_initialises_the_cmp_on_the_local_window(window_mlp, half_size):
    """Window-size dependent parameters get the config's S (a 3 x 3 dummy would not fit)."""
    config = _mini_config(window_mlp, {"hidden": 4}, half_size)
    model = config_utils.build_model(config)
    template = convert.model_template(model)
    side, channels = 2 * half_size + 1, NUM_JOINTS * config.model.embedding_dim
    dense = template["params"]["joints_mlp"]
    assert dense["Dense_0"]["kernel"].shape == (side * side * channels, 4)
    assert dense["Dense_1"]["kernel"].shape == (4, side * side * NUM_JOINTS)
    kams = jax.eval_shape(
        functools.partial(model.apply, train=False, method=LogoCap.attraction_maps),
        template,
        jax.ShapeDtypeStruct((30, side, side, channels), jnp.float32),
    )
    assert kams.shape == (30, side, side, NUM_JOINTS)
    fixed = convert.model_template(config_utils.build_model(_mini_config("fixed_kernel", {}, 3)))
    assert fixed["params"]["joints_mlp"]["kernels"].shape == (7, 7, NUM_JOINTS)


def test_backbone_and_heads_do_not_depend_on_the_variant():
    conv = convert.model_template(config_utils.build_model(_mini_config("conv", {}, 5)))
    graph = convert.model_template(config_utils.build_model(_mini_config("skeleton_graph", {}, 5)))
    for collection in ("params", "batch_stats"):
        same = {k: v for k, v in conv[collection].items() if k != "joints_mlp"}
        assert same == {k: v for k, v in graph[collection].items() if k != "joints_mlp"}


def _parse_config_flags(overrides):
    """The config as every command line parses these overrides."""
    argv = [f"--config={ROOT / 'configs' / 'tiny.py'}", *overrides]
    return cli.parse(argv, lambda flag_values: None, doc="", config=True)[0].config


def test_switching_variant_on_the_command_line_replaces_its_options():
    config = _parse_config_flags(
        ["--config.model.cmp_variant=skeleton_graph", "--config.model.cmp_options={'rounds': 2}"]
    )
    model = config_utils.build_model(config)
    assert (model.cmp_variant, dict(model.cmp_options)) == ("skeleton_graph", {"rounds": 2})
    # Switching the variant alone keeps the config's conv options: an error naming both.
    with pytest.raises(ValueError, match="'widths'.*'skeleton_graph'.*rounds=3"):
        config_utils.build_model(_parse_config_flags(["--config.model.cmp_variant=skeleton_graph"]))


def test_readme_example_variant(tmp_path, monkeypatch):
    """docs/cmp_variants.md's example variant, saved as one file, passes the variant checks."""
    readme = (ROOT / "docs" / "cmp_variants.md").read_text()
    code = readme.split("### Writing one", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "readme_lab").mkdir()
    (tmp_path / "readme_lab" / "pointwise.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert cmp_variants.default_options("readme_lab.pointwise") == {"width": 64}
        case = Case("readme_lab.pointwise", {"width": 8})
        result = case.run(2)
    finally:
        for module in ("readme_lab.pointwise", "readme_lab"):
            sys.modules.pop(module, None)
    assert result["train"].shape == (COUNT, SIDE, SIDE, NUM_JOINTS)
    np.testing.assert_allclose(result["train_other"][MASK], result["train"][MASK], rtol=1e-5)
    for ours, reference in zip(_leaves(result["stats_other"]), _leaves(result["stats"])):
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)
    assert all(np.abs(grad).max() > 0 for grad in _leaves(result["grads"]))
    assert _max_relative(result["eval_single"], result["eval"]) < 1e-5
