#!/usr/bin/env bash
# Needs the target and a `size` tool: `rustup target add thumbv7em-none-eabihf` and
# `rustup component add llvm-tools` (its llvm-size is found in the toolchain), or llvm-size /
# arm-none-eabi-size on the PATH.
# Exits 1 when .text + .rodata (code and its constant tables) exceed LIMIT bytes (default 20480:
# 20 KiB with every f32 and int8 kernel linked), or when any panicking path is linked (the
# runtime's promise: validate first, then run, never panic; a division by a divisor the
# compiler cannot prove non-zero, or an index it cannot prove in bounds, links one), so CI can
# run it; or when compiler_builtins' memcpy or memset is linked (about 1 KB: see below).
# Print paoding-runtime's code size for a Cortex-M4F/M7 (thumbv7em-none-eabihf, opt-level "s",
# LTO): a bare image whose exports validate a blob and run it (f32 or int8 input and output), so
# every kernel is linked.
# Usage: paoding-runtime/size-check/measure.sh [target]   (default thumbv7em-none-eabihf)
set -euo pipefail
cd "$(dirname "$0")"
target="${1:-thumbv7em-none-eabihf}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --target "$target" -q \
  --config "target.$target.rustflags=['-C','link-arg=--gc-sections','-C','link-arg=-e_start']"
elf="$CARGO_TARGET_DIR/$target/release/paoding-runtime-size-check"
# rustup's llvm-tools first (the same LLVM as the compiler), then whatever the PATH offers.
size="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-size"
if [ ! -x "$size" ]; then
  if command -v llvm-size >/dev/null; then size=llvm-size
  elif command -v arm-none-eabi-size >/dev/null; then size=arm-none-eabi-size
  else echo "no llvm-size: run 'rustup component add llvm-tools'" >&2; exit 2; fi
fi
# The panic machinery is linked only if some path reaches it (the image has no other user).
nm="${size%llvm-size}llvm-nm"
[ "$size" = arm-none-eabi-size ] && nm=arm-none-eabi-nm
if command -v "$nm" >/dev/null || [ -x "$nm" ]; then
  if "$nm" -C "$elf" | grep -q 'core::panicking'; then
    echo "a panicking path is linked into paoding-runtime ($target): find its caller with" >&2
    echo "  llvm-objdump -d $elf | grep -B40 panicking" >&2
    exit 1
  fi
  # compiler_builtins' copy and fill routines are about 1 KB of flash here: the runtime copies
  # and fills with its own loops (kernels::copy, fill, splat, zeroed) and keeps every value it
  # moves (Model, the checks' dimensions, the records) small or aligned enough to be moved
  # with load- and store-multiples, so nothing it links calls them.
  if "$nm" "$elf" | grep -qE ' (__aeabi_mem|memcpy|memset|memmove)'; then
    echo "paoding-runtime links memcpy/memset ($target): find the caller with" >&2
    echo "  llvm-objdump -d $elf | grep -B20 'bl.*__aeabi_mem'" >&2
    exit 1
  fi
else
  echo "no nm next to $size: cannot check for panicking paths" >&2; exit 2
fi
"$size" -A "$elf" | grep -E '^\.(text|rodata|data|bss)\b' || true
text=$("$size" -A "$elf" | awk '$1==".text"{print $2}')
rodata=$("$size" -A "$elf" | awk '$1==".rodata"{s+=$2} END{print s+0}')
limit="${LIMIT:-20480}"
echo "paoding-runtime code size ($target, opt-level s): .text ${text} B ($(( (text + 1023) / 1024 )) KiB), .rodata ${rodata} B"
total=$(( text + rodata ))
echo "paoding-runtime code + constants: ${total} bytes (limit ${limit})"
if [ "$total" -gt "$limit" ]; then
  echo "paoding-runtime code is over the limit by $(( total - limit )) bytes" >&2
  exit 1
fi
