"""Stage-by-stage and end-to-end parity of the test-time pipeline with the official code.

Each stage is fed the golden inputs of that stage (golden fixture A, NCHW -> channels-last), so
errors do not compound; then the whole jitted pipeline runs on the golden network input (flip
on and off) and from the raw image, down to the results JSON written by the official test script.

Tolerances (and why)
--------------------
Exact (bit-for-bit) where the stage is a fixed sequence of single IEEE float32 operations with
the same order as the official code, or integer/index logic: flip merge, center NMS, initial
poses, local mesh, validity mask, and the reference-mode samplers (local features, global
KEMs; XLA:CPU does not contract a*b + c into FMAs). All measured exact.

UPSAMPLE_ATOL = 2e-6 (~4 float32 ulps at the heatmaps' magnitude 5.6): jax.image.resize and
  torch's bilinear interpolation weight the same two neighbours per axis in a different order.
  Measured 9.5e-7.
GAUSS_RTOL = 2.4e-7 (2 ulps, element-wise relative): the Gaussian prior is exp() of the same
  float32 argument, but XLA's exp and torch's exp differ by 1 ulp on 844 of the 9409 entries
  (measured max relative 1.19e-7); neither is correctly rounded, so bit-exactness is not
  reachable with jnp.exp.
REFINED_RTOL = 2e-6 of max|golden| (max 2.2): the KAM convolution sums 121 products in a
  different order (shift-add or XLA's grouped convolution vs torch's). Measured 1.43e-6
  (shift_add) and 4.8e-7 (grouped) absolute, i.e. <= 6.5e-7 relative.
TOP2_XY_ATOL = 1e-4 px, TOP2_V_RTOL = 2.4e-7: the blend is exact index arithmetic plus one
  0.75/0.25 blend (measured exact). Joints in `refined_ambiguous` (top-2/top-3 closer than
  1e-4 relative: argmax may legitimately differ) are excluded; there are 5 (flip) / 7 (noflip).

End to end (network included): the only error source is the float32 reordering in the network
(see test_parity_model.py: offsets agree to ~3e-4, heatmaps to ~4e-5).
KEYPOINT_ATOL_PX = 1e-3 network-input px: x, y = center - 4 * offset + an integer/4 displacement,
  so the keypoint error is 4x the offset error at the center cell. Measured 7.5e-4 (flip) and
  5.5e-4 (noflip).
JSON_XY_ATOL = KEYPOINT_ATOL_PX * 392 / 128: the JSON is in original-image pixels, 1 / s = 3.06x
  larger (measured 2.3e-3 flip, 1.7e-3 noflip); bbox width/height are differences, 2x that.
SCORE_ATOL = 1e-4: keypoint score = refined value (<= 2.2) * center score; center scores agree
  to ~2e-5, refined values to ~1e-4 relative. Measured 2.8e-5 (keypoint scores) and 1.2e-5 (pose
  scores).

Other CPUs: every check here, the bit-exact ones included, passes on an Intel Xeon and on an AMD
EPYC (Zen 4) under XLA's default instruction set, --xla_cpu_max_isa=AVX2 and
--xla_cpu_max_isa=SSE4_2. Inputs come from the fixtures, never from OpenCV's warp, whose rounding
differs between CPUs; the raw-image test compares its warp with golden_arrays.assert_warp_matches.
"""

import json
from pathlib import Path

import golden_arrays
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from golden_arrays import nhwc

from logocap_jax import config_utils, decode, logo_ca, sampling
from logocap_jax.inference import pipeline, postprocess, preprocess

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "golden"
FLIP, NOFLIP = "tiny_forward.npz", "tiny_forward_noflip.npz"
RESULTS = {FLIP: "tiny_forward_results.json", NOFLIP: "tiny_forward_results_noflip.json"}
NUM_VALID = {FLIP: 5, NOFLIP: 3}  # README: 5 centers / poses / persons with flip, 3 without
NUM_AMBIGUOUS = {FLIP: 5, NOFLIP: 7}
INPUT_HW = (128, 256)
ORIGINAL_HW = (392, 640)

UPSAMPLE_ATOL = 2e-6
GAUSS_RTOL = 2.4e-7
REFINED_RTOL = 2e-6
TOP2_XY_ATOL = 1e-4
TOP2_V_RTOL = 2.4e-7
KEYPOINT_ATOL_PX = 1e-3
JSON_XY_ATOL = KEYPOINT_ATOL_PX * ORIGINAL_HW[0] / INPUT_HW[0]
SCORE_ATOL = 1e-4


def max_err(ours, golden):
    ours, golden = np.asarray(ours), np.asarray(golden)
    assert ours.shape == golden.shape, f"shape {ours.shape} != golden {golden.shape}"
    return np.abs(ours.astype(np.float64) - golden).max()


@pytest.fixture(scope="module")
def goldens(golden_forward):
    return {FLIP: golden_forward[True], NOFLIP: golden_forward[False]}


@pytest.fixture(scope="module")
def heatmaps_hr(goldens):
    """Input-resolution heatmaps [H, W, 18] each fixture's decoder saw. The noflip fixture does
    not store them: they are our upsampling of its heatmaps_raw (upsample is checked separately)."""
    noflip = decode.upsample(jnp.asarray(nhwc(goldens[NOFLIP]["heatmaps_raw"])), *INPUT_HW)
    return {FLIP: nhwc(goldens[FLIP]["heatmaps_hr"])[0], NOFLIP: np.asarray(noflip)[0]}


def decoder_offsets(g):
    return nhwc(g["offsets_fused"] if "offsets_fused" in g else g["offsets_raw"])


# ---------------------------------------------------------------------------- stages


def test_flip_merge(goldens):
    g = goldens[FLIP]
    heatmaps, offsets = decode.flip_merge(
        jnp.asarray(nhwc(g["heatmaps_raw"])), jnp.asarray(nhwc(g["offsets_raw"]))
    )
    np.testing.assert_array_equal(heatmaps, nhwc(g["heatmaps_fused"]))
    np.testing.assert_array_equal(offsets, nhwc(g["offsets_fused"]))


def test_upsample(goldens):
    g = goldens[FLIP]
    hr = decode.upsample(jnp.asarray(nhwc(g["heatmaps_fused"])), *INPUT_HW)
    assert max_err(hr, nhwc(g["heatmaps_hr"])) <= UPSAMPLE_ATOL


@pytest.mark.parametrize("fixture", [FLIP, NOFLIP])
def test_center_nms(goldens, heatmaps_hr, fixture):
    g = goldens[fixture]
    mask = g["center_mask"]
    assert mask.sum() == NUM_VALID[fixture]
    centers = np.asarray(decode.center_nms(jnp.asarray(heatmaps_hr[fixture][None, ..., -1]), 30))
    assert centers.shape == (1, 30, 3)
    # Positions of the kept centers: exact. Rows outside the mask are zero-score padding whose
    # positions are implementation-defined.
    np.testing.assert_array_equal(centers[0, mask, :2], g["centers_topk"][0, mask, :2])
    assert np.all(centers[0, ~mask, 2] <= 0) and np.all(g["centers_topk"][0, ~mask, 2] <= 0)
    if fixture == FLIP:  # golden heatmaps_hr: exact scores
        np.testing.assert_array_equal(centers[0, :, 2], g["centers_topk"][0, :, 2])
    else:  # our upsampling of heatmaps_raw
        assert max_err(centers[0, :, 2], g["centers_topk"][0, :, 2]) <= UPSAMPLE_ATOL


@pytest.mark.parametrize("fixture", [FLIP, NOFLIP])
def test_initial_poses_and_local_mesh(goldens, fixture):
    g = goldens[fixture]
    poses = decode.initial_poses(jnp.asarray(g["centers_topk"]), jnp.asarray(decoder_offsets(g)))
    # From the golden centers every row is defined, padding rows included.
    np.testing.assert_array_equal(poses, g["initial_poses"])
    mesh = decode.local_mesh(jnp.asarray(g["initial_poses"]), 5)
    np.testing.assert_array_equal(mesh, g["local_kem"])
    np.testing.assert_array_equal(np.asarray(mesh)[0, g["center_mask"]], g["refine_allposes"])


@pytest.mark.parametrize("fixture", [FLIP, NOFLIP])
def test_valid_centers(goldens, fixture):
    g = goldens[fixture]
    valid = decode.valid_centers(jnp.asarray(g["centers_topk"][..., 2]), 0.01)
    np.testing.assert_array_equal(np.asarray(valid)[0], g["center_mask"])


def test_valid_centers_falls_back_to_the_first_slot():
    scores = jnp.array([[0.009, 0.005, 0.0], [0.5, 0.02, 0.001]])
    np.testing.assert_array_equal(
        decode.valid_centers(scores, 0.01), [[True, False, False], [True, True, False]]
    )


@pytest.mark.parametrize("fixture", [FLIP, NOFLIP])
def test_local_feature_sampling(goldens, fixture):
    g = goldens[fixture]
    embedding = nhwc(g["embedding"])[:1]
    allposes = g["refine_allposes"]
    features = sampling.sample(
        jnp.asarray(embedding[0]), jnp.asarray(allposes) / 4.0, mode="reference"
    )
    np.testing.assert_array_equal(features, g["local_features"])
    # The pipeline's reshaping to the CMP layout (channel = joint * C + c).
    flat = pipeline.sample_local_features(
        jnp.asarray(embedding), jnp.asarray(allposes[None]), mode="reference"
    )
    np.testing.assert_array_equal(flat, nhwc(g["cmp_input"]))


@pytest.mark.parametrize("fixture", [FLIP, NOFLIP])
def test_global_kems(goldens, heatmaps_hr, fixture):
    g = goldens[fixture]
    np.testing.assert_array_equal(g["global_center_poses"], g["refine_allposes"][:, 5, 5])
    windows = logo_ca.global_kems(
        jnp.asarray(heatmaps_hr[fixture]),
        jnp.asarray(g["global_center_poses"]),
        48,
        mode="reference",
    )
    if fixture == FLIP:
        np.testing.assert_array_equal(windows, g["global_hm_sampled"])
    else:  # sampled from our upsampling: inherits its error, nothing more
        assert max_err(windows, g["global_hm_sampled"]) <= UPSAMPLE_ATOL


def test_gauss_reweight(goldens):
    golden = goldens[FLIP]["gauss_reweight"]
    ours = np.asarray(logo_ca.gaussian_window(48, 16.0))
    assert ours.shape == golden.shape == (97, 97)
    np.testing.assert_allclose(ours, golden, rtol=GAUSS_RTOL, atol=0)
    assert ours[48, 48] == 1.0 and ours.min() > 1e-4  # the official 1e-4 cut is a no-op


@pytest.fixture(scope="module")
def attract_fns():
    """kam_convolution_instances (what the pipeline runs) and vmapped kam_convolution, jitted."""
    fns = {}
    for mode in ("shift_add", "grouped"):
        fns[mode] = jax.jit(
            lambda h, k, mode=mode: logo_ca.kam_convolution_instances(h, k, mode=mode)
        )
        fns[mode + "_vmap"] = jax.jit(
            jax.vmap(lambda h, k, mode=mode: logo_ca.kam_convolution(h, k, mode=mode))
        )
    return fns


@pytest.mark.parametrize("mode", ["shift_add", "grouped", "shift_add_vmap", "grouped_vmap"])
@pytest.mark.parametrize("fixture", [FLIP, NOFLIP])
def test_kam_convolution(goldens, attract_fns, fixture, mode):
    g = goldens[fixture]
    # The noflip fixture does not store the (identical) Gaussian.
    reweighted = g["global_hm_sampled"] * goldens[FLIP]["gauss_reweight"]
    refined = attract_fns[mode](jnp.asarray(reweighted), jnp.asarray(g["kam"]))
    tol = REFINED_RTOL * np.abs(g["refined_hm"]).max()
    assert max_err(refined, g["refined_hm"]) <= tol
    # Choices at non-ambiguous joints do not change with the summation order.
    poses = np.asarray(logo_ca.top2_blend(refined, jnp.asarray(g["global_center_poses"]), 48))
    unambiguous = ~g["refined_ambiguous"]
    assert (
        max_err(poses[unambiguous][:, :2], g["refined_poses"][unambiguous][:, :2]) <= TOP2_XY_ATOL
    )


@pytest.mark.parametrize("fixture", [FLIP, NOFLIP])
def test_top2_blend(goldens, fixture):
    g = goldens[fixture]
    ambiguous = g["refined_ambiguous"]
    assert ambiguous.sum() == NUM_AMBIGUOUS[fixture]
    poses = np.asarray(
        logo_ca.top2_blend(jnp.asarray(g["refined_hm"]), jnp.asarray(g["global_center_poses"]), 48)
    )
    assert poses.shape == g["refined_poses"].shape
    ours, golden = poses[~ambiguous], g["refined_poses"][~ambiguous]
    assert max_err(ours[:, :2], golden[:, :2]) <= TOP2_XY_ATOL
    np.testing.assert_allclose(ours[:, 2], golden[:, 2], rtol=TOP2_V_RTOL, atol=0)
    # The blended value is 0.75 / 0.25 of the two best refined values.
    top = g["refined_top3_val"][~ambiguous]
    np.testing.assert_allclose(ours[:, 2], 0.75 * top[:, 0] + 0.25 * top[:, 1], rtol=TOP2_V_RTOL)


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny(tiny_model, tiny_variables):
    return config_utils.load_config(str(ROOT / "configs" / "tiny.py")), tiny_model, tiny_variables


@pytest.fixture(scope="module")
def predict_fns(tiny):
    config, model, _ = tiny
    return {
        flip: pipeline.make_predict_fn(model, config_utils.decode_settings(config, flip_test=flip))
        for flip in (True, False)
    }


@pytest.fixture(scope="module")
def predictions(tiny, predict_fns, goldens):
    """Pipeline outputs of image 0 on each fixture's golden input."""
    _, _, variables = tiny
    out = {}
    for fixture, flip in ((FLIP, True), (NOFLIP, False)):
        images = jnp.asarray(nhwc(goldens[fixture]["input"]))
        out[fixture] = jax.tree_util.tree_map(
            lambda x: np.asarray(x)[0], jax.device_get(predict_fns[flip](variables, images))
        )
    return out


def _people(config, out, resize_info):
    test = config.test
    return postprocess.select_people(
        out.poses,
        out.scores,
        out.valid,
        resize_info,
        max_people=test.max_people,
        nms_distance_ratio=test.nms_distance_ratio,
        nms_min_joints=test.nms_min_joints,
    )


def _assert_results_match(results, golden_results):
    assert len(results) == len(golden_results)  # the same NMS survivors ...
    for ours, gold in zip(results, golden_results):  # ... in the same order
        assert (
            ours["image_id"] == gold["image_id"] and ours["category_id"] == gold["category_id"] == 1
        )
        ours_kp = np.array(ours["keypoints"]).reshape(-1, 3)
        gold_kp = np.array(gold["keypoints"]).reshape(-1, 3)
        assert ours_kp.shape == gold_kp.shape == (17, 3)
        assert max_err(ours_kp[:, :2], gold_kp[:, :2]) <= JSON_XY_ATOL
        assert max_err(ours_kp[:, 2], gold_kp[:, 2]) <= SCORE_ATOL
        assert abs(ours["score"] - gold["score"]) <= SCORE_ATOL
        bbox, gold_bbox = np.array(ours["bbox"]), np.array(gold["bbox"])
        assert max_err(bbox[:2], gold_bbox[:2]) <= JSON_XY_ATOL
        assert max_err(bbox[2:], gold_bbox[2:]) <= 2 * JSON_XY_ATOL


@pytest.mark.parametrize("fixture", [FLIP, NOFLIP])
def test_end_to_end_model_outputs(goldens, predictions, fixture):
    g, out = goldens[fixture], predictions[fixture]
    count = NUM_VALID[fixture]
    # The same valid set: the first `count` slots (center-score order), as center_mask & S > 0.
    np.testing.assert_array_equal(np.flatnonzero(out.valid), np.arange(count))
    np.testing.assert_array_equal(out.valid, g["center_mask"] & (out.scores > 0))
    valid = out.valid
    assert max_err(out.poses[valid][..., :2], g["model_poses"][..., :2]) <= KEYPOINT_ATOL_PX
    assert max_err(out.poses[valid][..., 2], g["model_poses"][..., 2]) <= SCORE_ATOL
    assert max_err(out.scores[valid], g["model_scores"]) <= SCORE_ATOL
    np.testing.assert_array_equal(out.centers[valid][:, :2], g["model_centers"][:, :2])
    assert max_err(out.centers[valid][:, 2], g["model_centers"][:, 2]) <= SCORE_ATOL
    assert max_err(out.mesh[valid], g["model_allposes"]) <= KEYPOINT_ATOL_PX
    # Invalid slots score <= 0 or sit below the center threshold.
    assert np.all((out.scores[~valid] <= 0) | (out.centers[~valid, 2] < 0.01))


@pytest.mark.parametrize("fixture", [FLIP, NOFLIP])
def test_end_to_end_results_json(tiny, goldens, predictions, fixture):
    config = tiny[0]
    g, out = goldens[fixture], predictions[fixture]
    info = preprocess.inference_resize(*ORIGINAL_HW, config.test.input_size)
    keypoints, scores, slots = _people(config, out, info)
    np.testing.assert_array_equal(slots, g["nms_keep"])  # valid slots are 0..M-1
    results = postprocess.coco_results(int(goldens[FLIP]["image_id"]), keypoints, scores)
    with open(f"{GOLDEN}/{RESULTS[fixture]}") as f:
        golden_results = json.load(f)
    assert len(golden_results) == NUM_VALID[fixture]
    _assert_results_match(results, golden_results)
    # The JSON equals the stored per-person arrays.
    np.testing.assert_allclose(
        keypoints[..., :2], g["person_keypoints"][..., :2], rtol=0, atol=JSON_XY_ATOL
    )


def test_end_to_end_from_raw_image(tiny, predict_fns, goldens):
    config, _, variables = tiny
    g = goldens[FLIP]
    info = preprocess.inference_resize(*ORIGINAL_HW, config.test.input_size)
    warped = preprocess.warp_test_image(g["image_raw_rgb"], info)
    # OpenCV's warp may round a few values differently on another CPU (golden_arrays).
    golden_arrays.assert_warp_matches(warped, nhwc(g["input"])[0])
    image = preprocess.normalize(warped)
    out = jax.tree_util.tree_map(
        lambda x: np.asarray(x)[0],
        jax.device_get(predict_fns[True](variables, jnp.asarray(image[None]))),
    )
    keypoints, scores, _ = _people(config, out, info)
    results = postprocess.coco_results(int(g["image_id"]), keypoints, scores)
    with open(f"{GOLDEN}/{RESULTS[FLIP]}") as f:
        _assert_results_match(results, json.load(f))
