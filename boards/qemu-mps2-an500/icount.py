#!/usr/bin/env python3
"""Exact instructions executed per function, from a QEMU execution trace.

Usage (from boards/qemu-mps2-an500, after `cargo build --release`):

    ELF=target/thumbv7em-none-eabihf/release/paoding-qemu-mps2-an500
    qemu-system-arm -M mps2-an500 -cpu cortex-m7 -nographic \
        -semihosting-config enable=on,target=native -icount shift=0 \
        -kernel $ELF -d exec,nochain,in_asm -D /tmp/qemu.log > /dev/null
    python3 icount.py $ELF /tmp/qemu.log [--top N]

`in_asm` logs every translated block with its instructions, `exec` every block executed
(`nochain` makes QEMU log each execution instead of chaining blocks silently), so the count is
exact, unlike the sampling profiler (feature `profile`). The firmware validates each model,
then runs it on every sample: the trace is split into one section per model at each call of
the firmware's `next_model` (just before validation), and within it into validation and inference at the first
convolution, dense or pooling kernel, which is how the firmware orders its work. Counts are
totals over the section (divide the inference counts by the number of samples).

With `--layers OUT`, where OUT is the firmware test's output (`cargo test -p paoding-tests
--test firmware_qemu -- --ignored --nocapture > OUT`, whose `nodes [...]` lines give each
model's operators and MACs in order), it also prints every layer's instructions in one
inference and per MAC: the executor decodes each node (`Reader::node_into`) just before
running it, so the trace splits into nodes there. A layer's count is the runtime's own
instructions from its node's decoding to the next node's, in the second-to-last inference
(the last one's would end in the firmware's output code). A model stored as int8 with f32
input and output has a Quantize node first and a Dequantize node last, which the test's list
(the f32 graph's operators) does not name.

Needs `llvm-nm` (rustup's llvm-tools, or on the PATH) for the symbol table.
"""
import argparse
import bisect
import collections
import glob
import os
import re
import shutil
import subprocess


def llvm_nm():
    found = glob.glob(os.path.expanduser("~/.rustup/toolchains/*/lib/rustlib/*/bin/llvm-nm"))
    return found[0] if found else shutil.which("llvm-nm") or "llvm-nm"


def symbols(elf):
    out = subprocess.run([llvm_nm(), "-n", "-C", "--defined-only", elf],
                         capture_output=True, text=True, check=True).stdout
    syms = []
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in "tT":
            syms.append((int(parts[0], 16), re.sub(r"::h[0-9a-f]{16}$", "", parts[2])))
    syms.sort()
    return syms


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("elf")
    ap.add_argument("log")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--hot", metavar="FUNCTION",
                    help="also print the most executed instruction addresses of the functions "
                         "whose name contains FUNCTION (for `llvm-objdump -d`)")
    ap.add_argument("--model", type=int, metavar="N",
                    help="with --hot, count only model N's inferences")
    ap.add_argument("--layers", metavar="TEST_OUTPUT",
                    help="also print each layer's instructions per inference and per MAC, the "
                         "layers and their MACs read from the firmware test's output")
    args = ap.parse_args()
    syms = symbols(args.elf)
    addrs = [a for a, _ in syms]

    def name(addr):
        return syms[max(bisect.bisect_right(addrs, addr) - 1, 0)][1]

    validation = {a for a, n in syms if n.endswith("next_model")}
    kernels = {a for a, n in syms
               if re.search(r"kernels::(conv::conv2d|qconv::qconv2d|pool::pool)$", n)}
    node_starts = {a for a, n in syms if n.endswith("decode::Reader::node_into")}
    runs = {a for a, n in syms if n.endswith("model::Model::run_raw")}
    segments = []  # per model, per inference, one Counter per node decoded while running it

    blocks = {}  # start address -> Counter of function names over its instructions
    block = None
    sections = []  # [validation Counter, inference Counter] per model
    phase = None
    hot = collections.Counter()  # instruction address -> executions, with --hot
    with open(args.log, errors="replace") as log:
        for line in log:
            if line.startswith("IN:"):
                block = []
            elif block is not None and line.startswith("0x"):
                block.append(int(line[2:10], 16))
            elif line.startswith("Trace"):
                if block:
                    blocks[block[0]] = (collections.Counter(name(a) for a in block),
                                        [a for a in block if args.hot and args.hot in name(a)])
                block = None
                pc = int(line.split("[", 1)[1].split("/")[1], 16)
                if pc in validation:
                    sections.append([collections.Counter(), collections.Counter()])
                    segments.append([])
                    phase = 0
                elif pc in kernels and phase == 0:
                    phase = 1
                if pc in runs and sections:
                    segments[-1].append([])
                if pc in node_starts and segments and segments[-1]:
                    segments[-1][-1].append(collections.Counter())
                if sections and pc in blocks:
                    sections[-1][phase].update(blocks[pc][0])
                    if segments[-1] and segments[-1][-1]:
                        segments[-1][-1][-1].update(blocks[pc][0])
                    if args.model is None or (len(sections) - 1 == args.model and phase == 1):
                        hot.update(blocks[pc][1])
    for i, (valid, infer) in enumerate(sections):
        for label, counts in (("validation", valid), ("inference", infer)):
            print(f"model {i} {label}: {sum(counts.values())} instructions")
            for fn, n in counts.most_common(args.top):
                print(f"  {n:10d}  {fn[:100]}")
    if args.layers:
        print_layers(args.layers, segments)
    if args.hot:
        print(f"hottest instructions of *{args.hot}*:")
        for a, n in hot.most_common(args.top * 4):
            print(f"  {n:10d}  {a:#x}")


def print_layers(test_output, segments):
    """Each model's layers (from the test output's `nodes [...]` lines, in model order) with
    their instructions in one inference, from the trace's node segments."""
    models = []
    with open(test_output, errors="replace") as out:
        for line in out:
            m = re.search(r"nodes (\[.*\])\s*$", line)
            if m:
                models.append(re.findall(r'\("([^"]*)", (\d+)\)', m.group(1)))
    # The firmware test prints every model once per core; the first core's come first.
    for i, inferences in enumerate(segments):
        if i >= len(models) or not inferences:
            continue
        nodes = list(models[i])
        run = inferences[-2] if len(inferences) >= 2 else inferences[-1]
        if len(run) == len(nodes) + 2:
            nodes = [("Quantize", "0")] + nodes + [("Dequantize", "0")]
        if len(run) != len(nodes):
            print(f"model {i}: {len(run)} nodes run, {len(nodes)} listed: not matched")
            continue
        print(f"model {i} layers (one inference):")
        print(f"  {'layer':<28} {'MACs':>9} {'instructions':>13} {'per MAC':>8}")
        for k, ((op, macs), counts) in enumerate(zip(nodes, run)):
            own = sum(c for fn, c in counts.items() if fn.startswith("paoding_runtime"))
            per = f"{own / int(macs):8.2f}" if int(macs) else " " * 8
            print(f"  {k:>2} {op:<25} {int(macs):>9} {own:>13} {per}")


if __name__ == "__main__":
    main()
