"""What an optimised XLA program holds: counts of the operations that TPUs run poorly, and the
largest buffers of its temporaries with the stage of the model that makes each.

Both read XLA's text dumps: the optimised HLO module (`Compiled.as_text()`) and its buffer
assignment (`<module>.after_optimizations-buffer-assignment.txt`, written by the compiler
options `dump_options(directory)`).
"""

import dataclasses
import glob
import os
import re

# Opcodes counted by `op_counts`: data-dependent memory access, sorting and loops serialise
# work on a TPU's vector units, custom calls are opaque to XLA, host callbacks stall the step.
COUNTED_OPS = ("gather", "scatter", "sort", "while", "custom-call")
HOST_TRANSFER_OPS = ("send", "recv", "infeed", "outfeed")
# XLA names the copies it makes to recompute a value instead of keeping it `<name>.remat<N>`;
# its TPU compiler makes them when a program would not otherwise fit the chip's memory.
_REMATERIALIZED = re.compile(r"\.remat\d*$")

# Stage of an operation from the names in its op_name metadata (Flax module names and the named
# scopes of forward.training_outputs, trainer.train_step and pipeline.predict_poses, which
# transformations wrap as in 'transpose(jvp(logo_ca))'); the first stage with a match wins.
STAGE_NAMES = (
    ("optimiser", ("optimizer",)),
    ("losses", ("losses",)),
    ("LOGO-CA", ("logo_ca", "global_kams")),
    ("CMP", ("joints_mlp", "cmp", "local_kams")),
    ("local KEMs", ("local_kems",)),
    (
        "heads",
        (
            "transition_cls",
            "transition_reg",
            "transition_embedding",
            "final_layer_cls",
            "final_layer_reg",
        ),
    ),
    ("backbone", ("backbone",)),
)

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = ")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def dump_options(directory: str) -> dict:
    """Compiler options that make XLA write the text dumps this module reads to `directory`."""
    return {"xla_dump_to": directory, "xla_dump_hlo_as_text": True}


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    shape: str
    opcode: str
    op_name: str
    line: str


def _split_type(rest: str) -> tuple[str, str]:
    """(type, remainder) of the text after ' = ': a tuple type in balanced parentheses, or one
    token."""
    if rest.startswith("("):
        depth = 0
        for index, char in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                return rest[: index + 1], rest[index + 1 :].lstrip()
    shape, _, remainder = rest.partition(" ")
    return shape, remainder


def instructions(hlo_text: str) -> list[Instruction]:
    """Every instruction of every computation of an HLO module's text."""
    found = []
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        shape, remainder = _split_type(line[match.end() :])
        opcode = remainder.partition("(")[0]
        op_name = _OP_NAME.search(line)
        found.append(
            Instruction(match.group(1), shape, opcode, op_name.group(1) if op_name else "", line)
        )
    return found


def _is_host_callback(instruction: Instruction) -> bool:
    if instruction.opcode == "custom-call":
        target = re.search(r'custom_call_target="([^"]*)"', instruction.line)
        return bool(target) and "callback" in target.group(1).lower()
    return instruction.opcode in HOST_TRANSFER_OPS and "is_host_transfer=true" in instruction.line


def op_counts(hlo_text: str) -> dict[str, int]:
    """{opcode: count} of COUNTED_OPS in the module (fused computations included), plus
    'host-callback': custom calls into Python and host transfers, and 'rematerialized': the
    instructions XLA recomputes to fit the chip's memory."""
    counts = dict.fromkeys(COUNTED_OPS, 0)
    counts["host-callback"] = 0
    counts["rematerialized"] = 0
    for instruction in instructions(hlo_text):
        if instruction.opcode in counts:
            counts[instruction.opcode] += 1
        if _is_host_callback(instruction):
            counts["host-callback"] += 1
        if _REMATERIALIZED.search(instruction.name):
            counts["rematerialized"] += 1
    return counts


def custom_call_targets(hlo_text: str) -> dict[str, int]:
    """{target: count} of the module's custom calls, most frequent first: most on a TPU are the
    compiler's own (ConcatBitcast, AllocateBuffer, ...), a few come from the program (TopK)."""
    counts = {}
    for instruction in instructions(hlo_text):
        if instruction.opcode == "custom-call":
            target = re.search(r'custom_call_target="([^"]*)"', instruction.line)
            name = target.group(1) if target else "?"
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def stage_of(op_name: str) -> str:
    """The model stage an op_name belongs to (STAGE_NAMES), else 'other'."""
    names = set(re.split(r"[/()]", op_name))
    for stage, stage_names in STAGE_NAMES:
        if names.intersection(stage_names):
            return stage
    return "other"


def _computation_op_names(hlo_text: str) -> dict[str, str]:
    """{computation name: the last non-empty op_name of its instructions}: what a fusion
    without metadata of its own computes (its root comes last)."""
    names, current = {}, None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+) \(", line)
        if header and line.rstrip().endswith("{"):
            current = header.group(1)
            continue
        op_name = _OP_NAME.search(line)
        if current and op_name and op_name.group(1):
            names[current] = op_name.group(1)
    return names


_ALLOCATION = re.compile(r"^allocation \d+: size (\d+)(.*):$")
_VALUE = re.compile(
    r"^ value: <\d+ ([\w.\-]+)(?:\{[\d,]*\})? @\d+> \(size=(\d+),offset=(\d+)\): (.*)$"
)


def temp_slots(dump_dir: str) -> list[dict]:
    """The slots of the program's temporary buffer in HBM, from XLA's buffer assignment dump in
    `dump_dir`: each an offset range that buffers whose lifetimes do not overlap share, with
    its size and the values placed there (name, bytes, shape), largest slot first. The slots
    add up to the temporaries' peak.

    Raises:
      FileNotFoundError: `dump_dir` holds no buffer assignment dump.
    """
    paths = glob.glob(os.path.join(dump_dir, "*after_optimizations-buffer-assignment.txt"))
    if not paths:
        raise FileNotFoundError(f"no XLA buffer assignment dump in {dump_dir}")
    slots, in_temp = {}, False
    with open(max(paths, key=os.path.getsize)) as f:
        for line in f:
            allocation = _ALLOCATION.match(line)
            if allocation:
                # Other colors are on-chip memories (VMEM, SMEM), not HBM.
                flags = allocation.group(2)
                in_temp = "preallocated-temp" in flags and "color" not in flags
                continue
            value = _VALUE.match(line) if in_temp else None
            if value:
                name, size, offset, shape = value.groups()
                slot = slots.setdefault(int(offset), {"bytes": 0, "values": []})
                slot["bytes"] = max(slot["bytes"], int(size))
                slot["values"].append({"name": name, "bytes": int(size), "shape": shape})
    return sorted(slots.values(), key=lambda slot: -slot["bytes"])


def peak_buffers(dump_dir: str, hlo_text: str, count: int = 10) -> list[dict]:
    """The `count` largest slots of the temporary buffer (`temp_slots`), each with the largest
    value placed there: its instruction name, shape and op_name, the stage of the model that
    makes it, and how many values share the slot."""
    by_name = {instruction.name: instruction for instruction in instructions(hlo_text)}
    computations = _computation_op_names(hlo_text)
    report = []
    for slot in temp_slots(dump_dir)[:count]:
        largest = max(slot["values"], key=lambda value: value["bytes"])
        instruction = by_name.get(largest["name"])
        op_name = instruction.op_name if instruction else ""
        called = re.search(r"calls=%?([\w.\-]+)", instruction.line) if instruction else None
        if not op_name and called:
            op_name = computations.get(called.group(1), "")
        report.append(
            {
                "name": largest["name"],
                "shape": largest["shape"],
                "bytes": slot["bytes"],
                "stage": stage_of(op_name),
                "op_name": op_name,
                "sharing": len(slot["values"]),
            }
        )
    return report
