"""The ablation runner, end to end on 8 fake CPU devices: two CMP variants x 2 steps of the mini
recipe (at 128 px), then a rerun extended to 3 steps.

One variant is written in the test as a single file outside the package (labcmp/window_mlp.py,
reached through PYTHONPATH, no other edit); the other is a built-in with a per-variant override.
Both train through `trainer.train_and_evaluate` with the real sharded train step. Compiled
programs are shared with the rerun through JAX's persistent cache.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import jax
import numpy as np
import pytest
from cmp_variant_cases import WINDOW_MLP

from logocap_jax import config_utils, errors
from logocap_jax.training import ablation
from logocap_jax.weights import convert

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
LABELS = ("skeleton_graph", "mlp")
SIDE, CHANNELS, JOINTS, SLOTS, HIDDEN = 11, 17 * 8, 17, 30, 8


def _command(workdir, data_dir, steps):
    return [
        sys.executable,
        "-m",
        "logocap_jax.commands.ablate",
        "--config=configs/mini.py",
        f"--workdir={workdir}",
        "--variants=skeleton_graph,mlp=labcmp.window_mlp",
        f"--steps={steps}",
        "--set=skeleton_graph:model.cmp_options.rounds=1",
        f"--set=mlp:model.cmp_options.hidden={HIDDEN}",
        "--timing_repeats=2",
        "--config.train.global_batch_size=8",
        "--config.train.log_every_steps=1",
        "--config.train.eval_every_steps=2",
        "--config.data.input_size=128",
        "--config.data.output_size=32",
        "--config.test.input_size=128",
        f"--config.data.data_dir={data_dir}",
    ]


def _run(tmp_path, steps):
    python_path = os.pathsep.join([str(ROOT), str(tmp_path / "variants")])
    env = dict(
        os.environ,
        PYTHONPATH=python_path,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    command = _command(tmp_path / "ablation", tmp_path / "tfds", steps)
    process = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
    )
    assert process.returncode == 0, process.stderr[-5000:]
    return process.stdout


def _metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ablate")
    (tmp_path / "variants" / "labcmp").mkdir(parents=True)
    (tmp_path / "variants" / "labcmp" / "window_mlp.py").write_text(WINDOW_MLP)
    first = _run(tmp_path, 2)
    workdir = tmp_path / "ablation"
    report = json.loads((workdir / "ablation.json").read_text())
    metrics = {label: _metrics(workdir / label) for label in LABELS}
    again = _run(tmp_path, 2)
    unchanged = all(_metrics(workdir / label) == metrics[label] for label in LABELS)
    extended = _run(tmp_path, 3)
    return dict(
        workdir=workdir,
        first=first,
        report=report,
        metrics=metrics,
        again=again,
        unchanged=unchanged,
        extended=extended,
        final=json.loads((workdir / "ablation.json").read_text()),
    )


def test_every_variant_trained_and_evaluated(runs):
    report = runs["report"]
    assert report["devices"] == 8 and report["steps"] == 2
    assert [r["label"] for r in report["variants"]] == list(LABELS)
    assert [r["variant"] for r in report["variants"]] == ["skeleton_graph", "labcmp.window_mlp"]
    for record in report["variants"]:
        assert record["final_step"] == 2
        assert [row["step"] for row in record["train"]] == [1, 2]
        assert all(np.isfinite(v) for v in record["final_loss"].values())
        assert record["final_loss"]["total"] < record["train"][0]["total"]
        assert [e["step"] for e in record["evaluations"]] == [0, 2]
        assert all(0 <= e["AP"] <= 100 and 0 <= e["AP50"] <= 100 for e in record["evaluations"])


def test_same_initialisation_and_batches(runs):
    """At step 1 only the CMPs differ: the map losses and selected instances are identical."""
    rows = [next(r for r in runs["metrics"][label] if r["step"] == 1) for label in LABELS]
    for key in ("heatmaps", "offsets", "selected_instances"):
        np.testing.assert_allclose(rows[0][key], rows[1][key], rtol=1e-6, err_msg=key)


def test_overrides_reach_each_variant(runs):
    report = {r["label"]: r for r in runs["report"]["variants"]}
    assert report["skeleton_graph"]["options"] == {"width": 32, "rounds": 1, "spatial_kernel": 3}
    assert report["mlp"]["options_set"] == {"hidden": HIDDEN}
    recorded = json.loads((runs["workdir"] / "skeleton_graph" / "config.json").read_text())
    assert recorded["model"]["cmp_options"] == {"rounds": 1}


def test_costs(runs):
    report = {r["label"]: r for r in runs["report"]["variants"]}
    mlp = report["mlp"]
    inputs, outputs = SIDE * SIDE * CHANNELS, SIDE * SIDE * JOINTS
    assert mlp["cmp_parameters"] == inputs * HIDDEN + HIDDEN + HIDDEN * outputs + outputs
    # XLA counts 2 FLOPs per multiply-add of the two matrix products, plus the biases and ReLU.
    products = 2 * SLOTS * (inputs * HIDDEN + HIDDEN * outputs)
    assert products <= mlp["cmp_flops"] <= 1.1 * products
    config = config_utils.load_config(str(ROOT / "configs" / "mini.py"))
    config.model.cmp_variant, config.model.cmp_options = "skeleton_graph", {"rounds": 1}
    template = convert.model_template(config_utils.build_model(config))["params"]["joints_mlp"]
    count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(template))
    assert report["skeleton_graph"]["cmp_parameters"] == count
    for record in report.values():
        assert record["local_kams_ms"] > 0 and (record["slots"], record["window"]) == (SLOTS, SIDE)


def test_report_files(runs):
    workdir = runs["workdir"]
    text = (workdir / "ablation.md").read_text()
    assert "| skeleton_graph | rounds=1 |" in text and "| mlp (labcmp.window_mlp) |" in text
    assert "| variant | step 0 | step 2 |" in text
    image = cv2.imread(str(workdir / "ablation.png"))
    assert image is not None and image.shape == (400, 1100, 3)
    assert image.std() > 10  # lines and text, not a blank canvas


def test_rerun_skips_finished_variants(runs):
    assert "training" in runs["first"] and "training" not in runs["again"]
    assert runs["unchanged"]


def test_extended_run_continues_each_variant(runs):
    assert runs["extended"].count("from step 2 to 3") == 2
    for label in LABELS:
        rows = _metrics(runs["workdir"] / label)
        train = [r["step"] for r in rows if r["split"] == "train"]
        assert train == [1, 2, 3]  # steps 1 and 2 not redone
        assert [r["step"] for r in rows if r["split"] == "eval"] == [0, 2, 3]
        assert rows[: len(runs["metrics"][label])] == runs["metrics"][label]
    assert all(r["final_step"] == 3 for r in runs["final"]["variants"])


def test_variant_entries_and_overrides_are_parsed():
    variants = ablation.parse_variants(["conv", "deep=skeleton_graph", "my_lab.window_mlp"])
    assert variants == [
        ("conv", "conv"),
        ("deep", "skeleton_graph"),
        ("my_lab.window_mlp", "my_lab.window_mlp"),
    ]
    with pytest.raises(ValueError, match="Repeated labels"):
        ablation.parse_variants(["conv", "conv"])
    overrides = ablation.parse_overrides(
        ["deep:model.cmp_options.rounds=4", "conv:train.learning_rate=1e-3", "deep:x.y=a:b=c"],
        ["conv", "deep"],
    )
    assert overrides == {
        "conv": ["train.learning_rate=1e-3"],
        "deep": ["model.cmp_options.rounds=4", "x.y=a:b=c"],
    }
    with pytest.raises(ValueError, match="names no variant"):
        ablation.parse_overrides(["other:train.seed=1"], ["conv"])
    with pytest.raises(ValueError, match="expected LABEL:FIELD=VALUE"):
        ablation.parse_overrides(["conv:train.seed"], ["conv"])


def test_variant_configs():
    base = config_utils.load_config(str(ROOT / "configs" / "mini.py")).lock()
    conv = ablation.variant_config(base, "conv", [], steps=5, init_checkpoint="ckpt", cmp_only=True)
    # The config's own variant keeps its options; the runner's options are set.
    assert conv.model.cmp_options.widths == (32, 16, 8)
    assert (conv.train.num_steps, conv.train.init_checkpoint) == (5, "ckpt")
    assert conv.train.init_exclude == conv.train.trainable_modules == ("joints_mlp",)
    graph = ablation.variant_config(
        base,
        "skeleton_graph",
        ["model.cmp_options.rounds=2", "train.seed=3"],
        steps=5,
        init_checkpoint="",
        cmp_only=False,
    )
    assert graph.model.cmp_options.to_dict() == {"rounds": 2} and graph.train.seed == 3
    assert base.train.seed == 0 and base.model.cmp_variant == "conv"
    with pytest.raises(errors.ConfigError, match="'widht'.*'skeleton_graph'"):
        ablation.variant_config(
            base,
            "skeleton_graph",
            ["model.cmp_options.widht=2"],
            steps=5,
            init_checkpoint="",
            cmp_only=False,
        )
    with pytest.raises(errors.ConfigError, match="no config key 'train.sead'"):
        ablation.variant_config(
            base, "conv", ["train.sead=2"], steps=5, init_checkpoint="", cmp_only=False
        )
    with pytest.raises(errors.ConfigError, match="invalid literal for int"):
        ablation.variant_config(
            base,
            "skeleton_graph",
            ["model.cmp_options.rounds=two"],
            steps=5,
            init_checkpoint="",
            cmp_only=False,
        )


def test_a_work_directory_keeps_its_config(tmp_path):
    config = config_utils.load_config(str(ROOT / "configs" / "mini.py"))
    ablation.check_same_config(config, str(tmp_path / "conv"))
    config.train.num_steps = 1000  # extending the run is a resume
    ablation.check_same_config(config, str(tmp_path / "conv"))
    config.train.learning_rate = 1e-3
    with pytest.raises(ValueError, match=r"another config \(fields \['train.learning_rate'\]"):
        ablation.check_same_config(config, str(tmp_path / "conv"))
