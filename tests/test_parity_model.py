"""Parity of the converted tiny model with the official PyTorch forward (golden fixture A).

The golden arrays are NCHW (PyTorch); ours are channels-last, so every golden array is
transposed to NHWC before comparing. The whole network runs once (one jit, flip batch
[input, flip_W(input)] as the official flip test builds it) with `capture_intermediates`, and
the CMP runs once on the golden `cmp_input`, in eval mode (running BatchNorm statistics).

Tolerances
----------
Network outputs (backbone intermediates, features, head transitions, heatmaps, offsets):
|ours - golden| <= NET_ATOL + NET_RTOL * max|golden| per array. Both sides compute in float32
with different summation orders (oneDNN vs XLA convolutions; reductions over up to
9 * 256 = 2304 terms) through ~20 convolution + BatchNorm layers, so the expected error is a few
float32 ulps of the array's magnitude scale: measured 0.7e-6 .. 6.9e-6 relative to max|golden|
(worst: backbone.stage4.3 1.24e-4 / 18.0 and offsets_raw 3.34e-4 / 56.6). NET_RTOL = 3e-5 leaves
a ~4x margin for other CPUs / XLA versions; it is still ~1000x smaller than any real bug
(a wrong padding, BN epsilon, flip or upsampling mode changes values by >= 1e-2 relative).

CMP (10 layers, 11x11 windows, 136 -> 32 -> 16 -> 8 -> 17 channels): CMP_TOL * max(1, max|golden|),
CMP_TOL = 1e-5, i.e. 1e-5 absolute for maps of magnitude <= 1 and 1e-5 relative above.
Measured, each layer fed with the golden output of the previous layer: <= 1.5e-6 relative;
the CMP run as a whole from cmp_input (errors compound): <= 2e-6 relative (cmp.4: 4.5e-5 of 36.4).
The attention weights (in [0, 1]) are compared with 1e-5 absolute (measured 1.8e-7).

Other CPUs: every check here, the bit-exact ones included, passes on an Intel Xeon and on an AMD
EPYC (Zen 4) under XLA's default instruction set, --xla_cpu_max_isa=AVX2 and
--xla_cpu_max_isa=SSE4_2. Inputs come from the fixtures, never from OpenCV's warp, whose rounding
differs between CPUs; the model sees the stored network input.
"""

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from golden_arrays import nhwc

from logocap_jax import config_utils
from logocap_jax.models import LogoCap, hrnet

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "golden"
NET_ATOL = 1e-5
NET_RTOL = 3e-5
CMP_TOL = 1e-5
ATTN_ATOL = 1e-5
# Layer index of the official joints_mlp Sequential -> index of the layer producing its input
# (the ReLUs 2, 5, 8 are not modules: their outputs are the inputs of layers 3, 6, 9).
CMP_LAYERS = {"0": None, "1": "0", "3": "2", "4": "3", "6": "5", "7": "6", "9": "8"}


def assert_close(name, ours, golden, atol, rtol_of_max=0.0):
    ours, golden = np.asarray(ours), np.asarray(golden)
    assert ours.shape == golden.shape, f"{name}: shape {ours.shape} != golden {golden.shape}"
    assert np.all(np.isfinite(ours)), name
    scale = np.abs(golden).max()
    tol = atol + rtol_of_max * scale
    err = np.abs(ours.astype(np.float64) - golden).max()
    assert err <= tol, (
        f"{name}: max error {err:.3e} > tolerance {tol:.3e} (max|golden| {scale:.3e})"
    )
    return err


@pytest.fixture(scope="module")
def golden(golden_forward):
    return golden_forward[True]


@pytest.fixture(scope="module")
def golden_noflip(golden_forward):
    return golden_forward[False]


@pytest.fixture(scope="module")
def tiny(tiny_model, tiny_variables):
    return config_utils.load_config(str(ROOT / "configs" / "tiny.py")), tiny_model, tiny_variables


@pytest.fixture(scope="module")
def network(tiny, golden):
    """(Predictions, intermediates) of the flip-test batch [input, flip_W(input)]."""
    _, model, variables = tiny
    image = jnp.asarray(nhwc(golden["input"]))
    batch = jnp.concatenate([image, image[:, :, ::-1]])

    @jax.jit
    def run(variables, batch):
        return model.apply(
            variables, batch, train=False, capture_intermediates=True, mutable=["intermediates"]
        )

    predictions, state = jax.device_get(run(variables, batch))
    return predictions, state["intermediates"]


def test_golden_input_is_the_flip_batch_source(golden):
    assert golden["input"].shape == (1, 3, 128, 256)
    assert golden["features"].shape[0] == 2  # [input, flipped input]


def test_backbone_stem(network, golden):
    _, inter = network
    # bn2 output before its ReLU; only batch element 0 is stored.
    ours = inter["backbone"]["bn2"]["__call__"][0][:1]
    assert_close("backbone.stem_bn2", ours, nhwc(golden["backbone.stem_bn2"]), NET_ATOL, NET_RTOL)


@pytest.mark.parametrize("stage", [2, 3, 4])
def test_backbone_stage_outputs(network, golden, tiny, stage):
    config, _, _ = tiny
    _, inter = network
    last_module = config.model.stage_modules[stage - 2] - 1
    branches = inter["backbone"][f"stage{stage}.{last_module}"]["__call__"][0]
    assert len(branches) == stage
    for i, branch in enumerate(branches):
        key = f"backbone.stage{stage}.{i}"
        assert_close(key, branch[:1], nhwc(golden[key]), NET_ATOL, NET_RTOL)


def test_features(network, golden):
    """The official feature map: the four branches upsampled and concatenated."""
    _, inter = network
    features = hrnet.concatenate_branches(inter["backbone"]["__call__"][0])
    assert_close("features", features, nhwc(golden["features"]), NET_ATOL, NET_RTOL)


@pytest.mark.parametrize(
    "module,key",
    [
        ("transition_cls", "transition_cls"),
        ("transition_reg", "transition_reg"),
        ("transition_embedding", "embedding"),
    ],
)
def test_head_transitions(network, golden, module, key):
    _, inter = network
    assert_close(key, inter[module]["__call__"][0], nhwc(golden[key]), NET_ATOL, NET_RTOL)


def test_head_outputs(network, golden):
    predictions, _ = network
    assert_close(
        "heatmaps_raw", predictions.heatmaps, nhwc(golden["heatmaps_raw"]), NET_ATOL, NET_RTOL
    )
    assert_close(
        "offsets_raw", predictions.offsets, nhwc(golden["offsets_raw"]), NET_ATOL, NET_RTOL
    )
    assert_close("embedding", predictions.embeddings, nhwc(golden["embedding"]), NET_ATOL, NET_RTOL)


def test_noflip_outputs_are_batch_element_zero(network, golden_noflip):
    """The noflip fixture's single-image outputs equal element 0 of the flip batch."""
    predictions, _ = network
    for ours, key in [
        (predictions.heatmaps, "heatmaps_raw"),
        (predictions.offsets, "offsets_raw"),
        (predictions.embeddings, "embedding"),
    ]:
        assert_close(key, ours[:1], nhwc(golden_noflip[key]), NET_ATOL, NET_RTOL)


# ----------------------------------------------------------------------------- CMP


def _cmp_runner(model):
    """jit(variables, cmp_input, layer_inputs) -> (kams, intermediates).

    `layer_inputs` maps a joints_mlp layer name to the array its input is replaced with (an
    interceptor swaps the argument), so each layer can be fed the golden previous output.
    """

    def run(variables, features, layer_inputs):
        def interceptor(next_fun, args, kwargs, context):
            module = context.module
            if (
                context.method_name == "__call__"
                and module.name in layer_inputs
                and module.parent is not None
                and module.parent.name == "joints_mlp"
            ):
                args = (layer_inputs[module.name],) + tuple(args[1:])
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            return model.apply(
                variables,
                features,
                train=False,
                method=LogoCap.attraction_maps,
                capture_intermediates=True,
                mutable=["intermediates"],
            )

    return jax.jit(run)


def _layer_output(inter, layer):
    # AttentiveNorm (layer 4) calls BatchNorm.__call__ through super(), which records the
    # affine-free normalised map first; the module's own output is recorded last.
    return inter["joints_mlp"][layer]["__call__"][-1]


def _golden_layer(g, name):
    return nhwc(g["cmp_input"] if name is None else g[f"cmp.{name}"])


@pytest.fixture(scope="module")
def cmp_runner(tiny):
    return _cmp_runner(tiny[1])


@pytest.mark.parametrize("fixture", ["tiny_forward.npz", "tiny_forward_noflip.npz"])
@pytest.mark.parametrize("isolated", [True, False], ids=["layer_by_layer", "chained"])
def test_cmp_layers(tiny, cmp_runner, fixture, isolated):
    _, _, variables = tiny
    g = np.load(f"{GOLDEN}/{fixture}")
    layer_inputs = (
        {
            name: jnp.asarray(_golden_layer(g, src))
            for name, src in CMP_LAYERS.items()
            if src is not None
        }
        if isolated
        else {}
    )
    kams, state = jax.device_get(
        cmp_runner(variables, jnp.asarray(nhwc(g["cmp_input"])), layer_inputs)
    )
    inter = state["intermediates"]
    for name in CMP_LAYERS:
        out = _layer_output(inter, name)
        golden = nhwc(g[f"cmp.{name}"])
        assert_close(f"cmp.{name}", out, golden, CMP_TOL * max(1.0, np.abs(golden).max()))
        if name in ("1", "4", "7"):  # the ReLU that follows, cmp.2 / cmp.5 / cmp.8
            relu = f"cmp.{int(name) + 1}"
            golden = nhwc(g[relu])
            assert_close(relu, np.maximum(out, 0), golden, CMP_TOL * max(1.0, np.abs(golden).max()))
    golden = nhwc(g["cmp.9"])
    assert_close("kams", kams, golden, CMP_TOL * max(1.0, np.abs(golden).max()))
    # hsigmoid of the attention branch's 1x1 conv = the mixture weights.
    logits = inter["joints_mlp"]["4"]["attn_weights.attention.0"]["__call__"][0]
    assert logits.shape[1:3] == (1, 1)
    assert_close(
        "cmp.4.attn_weights",
        jax.nn.hard_sigmoid(logits[:, 0, 0, :]),
        g["cmp.4.attn_weights"],
        ATTN_ATOL,
    )
    # The test-time KAM is the clamp of the CMP output.
    assert_close("kam", np.clip(kams, 0, 1), nhwc(g["kam"]), CMP_TOL)


def test_cmp_interceptor_replaces_layer_inputs(tiny, cmp_runner, golden):
    """Guards the layer-by-layer test: a zero input to the last 1x1 conv leaves only its bias."""
    _, _, variables = tiny
    features = jnp.asarray(nhwc(golden["cmp_input"]))
    zeros = jnp.zeros(features.shape[:3] + (golden["cmp.8"].shape[1],), jnp.float32)
    kams, _ = jax.device_get(cmp_runner(variables, features, {"9": zeros}))
    bias = np.asarray(variables["params"]["joints_mlp"]["9"]["bias"])
    np.testing.assert_array_equal(kams, np.broadcast_to(bias, kams.shape))
