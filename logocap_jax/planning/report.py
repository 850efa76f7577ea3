"""Plain-text reports of plans (`plan.plan`), as the plan command prints them."""

from logocap_jax.planning import chips as chips_lib

GIB = chips_lib.GIB


def _gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


def _short_op_name(op_name: str, width: int = 70) -> str:
    return op_name if len(op_name) <= width else "..." + op_name[-(width - 3) :]


def format_plan(plan: dict, *, title: str = "") -> str:
    """The figures of one plan, one per line, per chip."""
    batch, chips = plan["per_chip_batch"], plan["chips"]
    name = "training step" if plan["program"] == "train" else "inference program"
    cached = " (cached)" if plan.get("cached") else ""
    lines = [
        f"{title}{name} on {plan['topology']} ({chips} chips), {batch} per chip{cached}",
        f"  compile time: {plan['compile_seconds']:.0f} s",
    ]
    if plan.get("effort", 0.0) != 0.0:
        lines.append(
            f"  XLA optimisation effort {plan['effort']:g}: a less optimised program than a run's"
        )
    if not plan["fits"] and "total_bytes" not in plan:
        lines.append(f"  does not fit in {_gib(plan['hbm_bytes'])} of HBM: {plan['error']}")
        return "\n".join(lines)
    spare = plan["hbm_bytes"] - plan["total_bytes"]
    lines += [
        f"  memory per chip: arguments {_gib(plan['argument_bytes'])}, temporaries "
        f"{_gib(plan['temp_bytes'])}, outputs {_gib(plan['output_bytes'])} (aliased with "
        f"arguments {_gib(plan['alias_bytes'])})",
        f"  total {_gib(plan['total_bytes'])} of {_gib(plan['hbm_bytes'])} HBM: "
        + (f"{_gib(spare)} spare" if spare >= 0 else f"{_gib(-spare)} over"),
        f"  per chip and step: {plan['flops'] / 1e9:,.0f} GFLOP, "
        f"{plan['bytes_accessed'] / 1e9:,.1f} GB accessed",
        f"  roofline on {plan['chip']}: {plan['roofline_seconds'] * 1e3:,.1f} ms per step, "
        f"{plan['examples_per_second']:,.0f} examples/s on {chips} chips (compute bound "
        f"{plan['compute_seconds'] * 1e3:,.1f} ms at peak bf16 FLOP/s, memory bound "
        f"{plan['hbm_seconds'] * 1e3:,.1f} ms at HBM bandwidth)",
        "  in the optimised TPU program: "
        + ", ".join(f"{op} {count}" for op, count in plan["op_counts"].items()),
    ]
    if plan["op_counts"].get("rematerialized"):
        lines.append(
            f"  XLA recomputes {plan['op_counts']['rematerialized']} instructions to fit the "
            "chip's memory; the FLOPs and bytes include the recomputation"
        )
    lines += [
        "  custom calls by target: "
        + ", ".join(f"{name} {count}" for name, count in plan["custom_call_targets"].items()),
        "  largest buffers of the temporaries (bytes, stage, values sharing the place, the "
        "largest value and its op):",
    ]
    for buffer in plan["peak_buffers"]:
        lines.append(
            f"    {_gib(buffer['bytes']):>9}  {buffer['stage']:<10} x{buffer['sharing']:<3} "
            f"{buffer['shape']}  {_short_op_name(buffer['op_name'])}"
        )
    return "\n".join(lines)


def format_search(best: int, tried: dict) -> str:
    """The outcome of `plan.max_batch`: the largest fitting batch and every batch tried."""
    lines = [f"largest per-chip batch that fits: {best}"]
    for batch in sorted(tried):
        result = tried[batch]
        memory = _gib(result["total_bytes"]) if "total_bytes" in result else "over"
        verdict = "fits" if result["fits"] else "does not fit"
        lines.append(f"  {batch} per chip: {memory}, {verdict}")
    return "\n".join(lines)
