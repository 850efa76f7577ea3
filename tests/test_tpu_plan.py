"""Deviceless TPU compilation (the `tpu` extra): the tiny config's training step and inference
program compile for a v5e:2x2 slice over the `data` mesh, and the planner reports them.

The tiny config runs every operation of the W32 model (same code path, fewer channels); the
input is cut to 64 x 64 and XLA's optimisation effort lowered, so that both programs compile in
a couple of minutes on 2 cores. One compile of each program serves all tests.
"""

import pytest

from logocap_jax import config_utils
from logocap_jax.planning import plan, report

pytestmark = pytest.mark.slow
pytest.importorskip("libtpu", reason='TPU compilation needs libtpu: pip install -e ".[tpu]"')

TOPOLOGY = "v5e:2x2"
SIZE = 64
# XLA's lowest optimisation effort: the same program compiles much faster (benchmarks.md).
EFFORT = -1.0


@pytest.fixture(scope="module")
def tiny_plans():
    config = config_utils.load_config("tiny")
    config.data.input_size, config.data.output_size = SIZE, SIZE // 4
    config.test.input_size = SIZE
    return {
        program: plan.compile_plan(config, TOPOLOGY, 1, program, effort=EFFORT)
        for program in plan.PROGRAMS
    }


@pytest.mark.parametrize("program", plan.PROGRAMS)
def test_program_compiles_for_the_slice_and_fits(tiny_plans, program):
    result = tiny_plans[program]
    assert result["chips"] == 4 and result["chip"] == "v5e"
    assert result["fits"]
    for key in ("argument_bytes", "temp_bytes", "output_bytes", "total_bytes", "flops"):
        assert result[key] > 0, key
    assert 0 < result["total_bytes"] < result["hbm_bytes"]
    assert result["roofline_seconds"] > 0 and result["examples_per_second"] > 0


def test_training_step_holds_the_stages_and_counts_its_ops(tiny_plans):
    result = tiny_plans["train"]
    assert set(result["op_counts"]) == {
        *plan.hlo_report.COUNTED_OPS,
        "host-callback",
        "rematerialized",
    }
    # The train step has no host callbacks: one would stall every step on the host.
    assert result["op_counts"]["host-callback"] == 0
    stages = {buffer["stage"] for buffer in result["peak_buffers"]}
    assert stages - {"other", "argument"}, result["peak_buffers"]


def test_report_prints_memory_flops_and_op_counts(tiny_plans):
    text = report.format_plan(tiny_plans["train"])
    print(text)
    for words in ("memory per chip", "GFLOP", "roofline", "gather", "scatter", "sort", "while"):
        assert words in text, words
