"""The TPU planner's parts that need no TPU compiler: HLO op counts and buffer stages, the chip
table, the cache and the max-batch search (on a stand-in compiler), and the one-line error
without libtpu."""

import subprocess
import sys

import pytest

from logocap_jax import errors
from logocap_jax.planning import chips, hlo_report, plan, programs, report

HLO = """HloModule jit_step, is_scheduled=true

%fused_gather (p0: f32[8,4], p1: s32[3,1]) -> f32[3,4] {
  %p0 = f32[8,4]{1,0} parameter(0)
  %p1 = s32[3,1]{1,0} parameter(1)
  ROOT %gather.1 = f32[3,4]{1,0} gather(%p0, %p1), metadata={op_name="j/cmp/gather"}
}

%compare (a: f32[], b: f32[]) -> pred[] {
  %sort.7 = f32[] parameter(0), metadata={op_name="jit(step)/sort"}
  %sort.8 = f32[] parameter(1)
  ROOT %lt = pred[] compare(%sort.7, %sort.8), direction=LT
}

ENTRY %main (param: f32[8,4], idx: s32[3,1]) -> (f32[3,4], f32[8]) {
  %param = f32[8,4]{1,0:T(8,128)} parameter(0), metadata={op_name="state.params"}
  %idx = s32[3,1]{1,0} parameter(1)
  %fusion.3 = f32[3,4]{1,0} fusion(%param, %idx), calls=%fused_gather, metadata={op_name="j/cmp/g"}
  %conv.2 = f32[8,4]{1,0} convolution(%param, %param), metadata={op_name="j/backbone/stage2.0/c"}
  %conv.2.remat2 = f32[8,4]{1,0} convolution(%param, %param), metadata={op_name="j/backbone/c"}
  %sort.14 = (f32[8]{0}, s32[8]{0}) sort(%param, %idx), metadata={op_name="j/local_kems/s"}
  %cc = f32[8]{0} custom-call(%param), custom_call_target="xla_python_cpu_callback"
  %scatter.5 = f32[8,4]{1,0} scatter(%param, %idx, %fusion.3), metadata={op_name="j/optimizer/s"}
  ROOT %tuple = (f32[3,4]{1,0}, f32[8]{0}) tuple(%fusion.3, %cc)
}
"""

BUFFER_ASSIGNMENT = """BufferAssignment:
allocation 0: size 2048, parameter 0, shape |f32[8,4]| at ShapeIndex {}:
 value: <1 param @0> (size=2048,offset=0): f32[8,4]{1,0:T(8,128)}
allocation 1: size 4608, preallocated-temp:
 value: <2 conv.2 @0> (size=4096,offset=0): f32[8,4]{1,0}
 value: <3 fusion.3 @0> (size=1024,offset=0): f32[3,4]{1,0}
 value: <4 sort.14{0} @0> (size=512,offset=4096): f32[8]{0}
allocation 2: size 8192, color 1, preallocated-temp:
 value: <5 scatter.5 @1> (size=8192,offset=0): f32[8,4]{1,0}
"""


def test_op_counts_include_fused_computations_and_callbacks():
    counts = hlo_report.op_counts(HLO)
    assert counts == {
        "gather": 1,
        "scatter": 1,
        "sort": 1,
        "while": 0,
        "custom-call": 1,
        "host-callback": 1,
        "rematerialized": 1,
    }


def test_peak_buffers_are_the_temporaries_largest_places_by_stage(tmp_path):
    path = tmp_path / "module_0001.jit_step.after_optimizations-buffer-assignment.txt"
    path.write_text(BUFFER_ASSIGNMENT)
    buffers = hlo_report.peak_buffers(str(tmp_path), HLO)
    # Parameters and the on-chip (color 1) temporaries are not HBM temporaries.
    assert [(b["name"], b["bytes"], b["stage"], b["sharing"]) for b in buffers] == [
        ("conv.2", 4096, "backbone", 2),
        ("sort.14", 512, "local KEMs", 1),
    ]
    assert buffers[0]["shape"] == "f32[8,4]{1,0}"
    assert len(hlo_report.peak_buffers(str(tmp_path), HLO, count=1)) == 1


def test_custom_call_targets():
    assert hlo_report.custom_call_targets(HLO) == {"xla_python_cpu_callback": 1}


@pytest.mark.parametrize(
    "op_name, stage",
    [
        ("jit(train_step)/optimizer/add", "optimiser"),
        ("jit(train_step)/transpose(jvp(LogoCap))/joints_mlp/conv", "CMP"),
        ("jit(train_step)/transpose(jvp(logo_ca))/mul", "LOGO-CA"),
        ("jit(train_step)/logo_ca_like/mul", "other"),
        ("jit(train_step)/jvp(LogoCap)/transition_cls/0/conv", "heads"),
        ("jit(predict)/backbone/LogoCap/backbone/stage3.1/conv", "backbone"),
        ("jit(train_step)/losses/sub", "losses"),
        ("", "other"),
    ],
)
def test_stage_of(op_name, stage):
    assert hlo_report.stage_of(op_name) == stage


def test_chip_table_and_roofline():
    v5e = chips.chip_of("v5e:2x2")
    assert v5e.hbm_bytes == 16 * 2**30 and v5e.peak_flops == 197e12
    assert v5e.compute_seconds(197e12) == pytest.approx(1.0)
    assert v5e.hbm_seconds(819e9) == pytest.approx(1.0)
    assert chips.chip_of("v4:2x2x1").chip_config == "megacore"
    with pytest.raises(errors.ConfigError, match="unknown TPU chip 'v9'"):
        chips.chip_of("v9:2x2")


def _fake_compiler(monkeypatch, fixed=2 * 2**30, per_example=2**30):
    """compile_plan stand-in: memory fixed + per_example x batch, counting its calls."""
    calls = []

    def compile_plan(config, topology, per_chip_batch, program="train", **options):
        calls.append(per_chip_batch)
        total = fixed + per_example * per_chip_batch
        return {
            "program": program,
            "per_chip_batch": per_chip_batch,
            "hbm_bytes": 16 * 2**30,
            "argument_bytes": fixed,
            "total_bytes": total,
            "fits": total <= 16 * 2**30,
        }

    monkeypatch.setattr(plan, "compile_plan", compile_plan)
    monkeypatch.setattr(
        plan, "plan_key", lambda config, topology, batch, program, effort: str(batch)
    )
    return calls


@pytest.mark.parametrize("start", [1, 12, 30])
def test_max_batch_finds_the_largest_fitting_batch(monkeypatch, start):
    calls = _fake_compiler(monkeypatch)
    best, tried = plan.max_batch(None, "v5e:2x2", start=start, cache=plan.Cache(None))
    assert best == 14  # 2 GiB + 14 x 1 GiB = 16 GiB.
    assert tried[14]["fits"] and not tried[15]["fits"]
    assert len(calls) <= 4


def test_cache_returns_the_stored_plan_without_compiling(monkeypatch, tmp_path):
    calls = _fake_compiler(monkeypatch)
    path = str(tmp_path / "plans.json")
    first = plan.plan(None, "v5e:2x2", 3, cache=plan.Cache(path))
    again = plan.plan(None, "v5e:2x2", 3, cache=plan.Cache(path))
    assert calls == [3]
    assert not first["cached"] and again["cached"]
    assert again["total_bytes"] == first["total_bytes"]


def test_without_libtpu_the_error_says_to_install_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "libtpu", None)
    with pytest.raises(errors.MissingDependencyError, match=r'pip install -e "\.\[tpu\]"'):
        programs.require_libtpu()


@pytest.mark.slow
def test_plan_command_without_libtpu_fails_in_one_line(tmp_path):
    # sys.modules["libtpu"] = None makes the import fail as in an environment without it.
    code = (
        "import sys; sys.modules['libtpu'] = None; sys.argv = ['plan', '--config', 'tiny', "
        f"'--cache', {str(tmp_path / 'c.json')!r}]; "
        "from logocap_jax.commands import plan; plan.entry_point()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install -e ".[tpu]"' in lines[0], result.stderr


def test_report_lists_every_figure_of_a_plan():
    gib = 2**30
    result = {
        "program": "train",
        "topology": "v5e:2x2",
        "chip": "v5e",
        "chips": 4,
        "per_chip_batch": 12,
        "hbm_bytes": 16 * gib,
        "fits": True,
        "compile_seconds": 600.0,
        "argument_bytes": gib // 2,
        "temp_bytes": 13 * gib,
        "output_bytes": gib // 2,
        "alias_bytes": gib // 2,
        "total_bytes": 27 * gib // 2,
        "flops": 4.7e12,
        "bytes_accessed": 1e10,
        "roofline_seconds": 0.0239,
        "compute_seconds": 0.0239,
        "hbm_seconds": 0.0122,
        "examples_per_second": 2008.0,
        "op_counts": {"gather": 24, "scatter": 10, "host-callback": 0},
        "custom_call_targets": {"TopK": 1},
        "peak_buffers": [
            {"bytes": gib, "stage": "CMP", "sharing": 3, "shape": "f32[8]", "op_name": "j/cmp/g"}
        ],
    }
    text = report.format_plan(result)
    for words in (
        "temporaries 13.00 GiB",
        "13.50 GiB of 16.00 GiB HBM: 2.50 GiB spare",
        "4,700 GFLOP",
        "23.9 ms per step, 2,008 examples/s",
        "gather 24, scatter 10, host-callback 0",
        "TopK 1",
        "CMP        x3",
    ):
        assert words in text, (words, text)
    assert "recomputes" not in text
    recomputing = dict(result, op_counts={**result["op_counts"], "rematerialized": 51})
    assert "XLA recomputes 51 instructions" in report.format_plan(recomputing)
    assert "largest per-chip batch that fits: 14" in report.format_search(
        14, {14: dict(result, total_bytes=15 * gib), 15: {"fits": False}}
    )
