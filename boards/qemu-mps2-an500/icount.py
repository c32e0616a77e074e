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
    args = ap.parse_args()
    syms = symbols(args.elf)
    addrs = [a for a, _ in syms]

    def name(addr):
        return syms[max(bisect.bisect_right(addrs, addr) - 1, 0)][1]

    validation = {a for a, n in syms if n.endswith("next_model")}
    kernels = {a for a, n in syms
               if re.search(r"kernels::(conv::conv2d|qconv::qconv2d|pool::pool)$", n)}
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
                    phase = 0
                elif pc in kernels and phase == 0:
                    phase = 1
                if sections and pc in blocks:
                    sections[-1][phase].update(blocks[pc][0])
                    if args.model is None or (len(sections) - 1 == args.model and phase == 1):
                        hot.update(blocks[pc][1])
    for i, (valid, infer) in enumerate(sections):
        for label, counts in (("validation", valid), ("inference", infer)):
            print(f"model {i} {label}: {sum(counts.values())} instructions")
            for fn, n in counts.most_common(args.top):
                print(f"  {n:10d}  {fn[:100]}")
    if args.hot:
        print(f"hottest instructions of *{args.hot}*:")
        for a, n in hot.most_common(args.top * 4):
            print(f"  {n:10d}  {a:#x}")


if __name__ == "__main__":
    main()
