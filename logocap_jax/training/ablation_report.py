"""The ablation runner's report: ablation.json, the ablation.md tables and the ablation.png
curves of the variants it trained (training/ablation.py)."""

import json
import os

from logocap_jax.models import cmp_variants
from logocap_jax.training import curves


def _number(value, spec):
    return "-" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    """ablation.md: the cost and final-loss table (CMP options that differ from the variant's
    defaults), then AP / AP50 at each evaluation."""
    records = report["variants"]
    mode = (
        f"only the CMP trained, everything else frozen as loaded from {report['init_checkpoint']}"
        if report["cmp_only"]
        else "all weights trained"
        + (
            f", from {report['init_checkpoint']} (CMP freshly initialised)"
            if report["init_checkpoint"]
            else ""
        )
    )
    cost = records[0] if records else {"slots": "-", "window": "-", "cpu_cores": "-"}
    lines = [
        "# CMP ablation",
        "",
        f"Config `{report['config']}`, {report['steps']} steps per variant on "
        f"{report['devices']} device(s), seed {report['seed']}, {mode}. Costs on one image's "
        f"{cost['slots']} candidate slots of "
        f"{cost['window']} x {cost['window']} local KEMs: CMP parameters, CMP GFLOPs (XLA cost "
        f"analysis), CPU ms of the local KAMs stage (sampling, CMP, clamp; median of "
        f"{report['timing_repeats']} runs on {cost['cpu_cores']} CPU cores). Loss terms at the "
        "last step.",
        "",
        "| variant | CMP options | params | GFLOPs | CPU ms | total | heatmaps | offsets | oks"
        " | refined | AP / AP50 (%) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        defaults = cmp_variants.default_options(r["variant"])
        changed = {k: v for k, v in r["options_set"].items() if v != defaults[k]}
        options = ", ".join(f"{k}={v}" for k, v in changed.items()) or "defaults"
        loss = r["final_loss"] or {}
        last = r["evaluations"][-1] if r["evaluations"] else None
        ap = f"{last['AP']:.1f} / {last['AP50']:.1f}" if last else "-"
        name = r["label"] if r["label"] == r["variant"] else f"{r['label']} ({r['variant']})"
        lines.append(
            f"| {name} | {options} | {r['cmp_parameters']:,} | {r['cmp_flops'] / 1e9:.3g} "
            f"| {r['local_kams_ms']:.1f} | "
            + " | ".join(_number(loss.get(k), ".4g") for k in curves.LOSS_TERMS)
            + f" | {ap} |"
        )
    steps = sorted({e["step"] for r in records for e in r["evaluations"]})
    if steps:
        lines += [
            "",
            "AP / AP50 (%) at each evaluation:",
            "",
            "| variant | " + " | ".join(f"step {s}" for s in steps) + " |",
            "|---|" + "---|" * len(steps),
        ]
        for r in records:
            by_step = {e["step"]: e for e in r["evaluations"]}
            cells = [
                f"{by_step[s]['AP']:.1f} / {by_step[s]['AP50']:.1f}" if s in by_step else "-"
                for s in steps
            ]
            lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    overridden = [r for r in records if r["overrides"]]
    if overridden:
        lines += ["", "Per-variant overrides:", ""]
        lines += [f"- {r['label']}: {', '.join(r['overrides'])}" for r in overridden]
    return "\n".join(lines) + "\n"


def write(report: dict, workdir: str) -> None:
    """ablation.json, ablation.md and ablation.png (total loss and AP of every variant)."""
    with open(os.path.join(workdir, "ablation.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(workdir, "ablation.md"), "w") as f:
        f.write(markdown(report))
    runs = [(r["label"], curves.read_metrics(r["workdir"])) for r in report["variants"]]
    curves.plot(runs, os.path.join(workdir, "ablation.png"), panels=("total", "AP"))
