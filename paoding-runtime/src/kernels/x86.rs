//! x86-64 only: the vector state the kernels start from.
//!
//! The runtime is compiled for baseline x86-64, so its kernels use SSE instructions. Code run
//! before them in the same thread that leaves the upper halves of the AVX registers in use
//! without `vzeroupper` (hand-written AVX-512 kernels such as tract's, which the CLI and the
//! benchmarks run in the same process) makes every later SSE instruction on Intel cores wait
//! on those halves: measured here, the same model ran 2.2 times slower after a tract run.
//! Clearing them once per inference costs one instruction. The host's convolution tiles
//! also run in AVX where it exists ([`has_avx`]), the int8 ones in AVX2 ([`has_avx2`]): never FMA, whose fused rounding would not
//! be the device's.

use core::sync::atomic::{AtomicU8, Ordering};

/// What the CPU and the OS support: 0 not known yet, else 1 + [`AVX`] + [`AVX2`] bits.
static SUPPORT: AtomicU8 = AtomicU8::new(0);
const AVX: u8 = 2;
const AVX2: u8 = 4;

/// The [`SUPPORT`] bits (asked once, then remembered).
fn support() -> u8 {
    let mut s = SUPPORT.load(Ordering::Relaxed);
    if s == 0 {
        s = 1;
        if supports_avx() {
            s |= AVX;
            // CPUID leaf 7 (if there is one), EBX bit 5.
            if core::arch::x86_64::__cpuid(0).eax >= 7
                && core::arch::x86_64::__cpuid_count(7, 0).ebx & (1 << 5) != 0
            {
                s |= AVX2;
            }
        }
        SUPPORT.store(s, Ordering::Relaxed);
    }
    s
}

/// Whether the CPU and the OS support AVX.
pub(crate) fn has_avx() -> bool {
    support() & AVX != 0
}

/// Whether the CPU and the OS support AVX2.
pub(crate) fn has_avx2() -> bool {
    support() & AVX2 != 0
}

/// Clear the upper halves of the vector registers (`vzeroupper`) where AVX exists.
pub(crate) fn clear_upper_vector_state() {
    if has_avx() {
        // SAFETY: the CPU has AVX and the OS saves its registers; every vector register the
        // caller could hold is declared clobbered (vzeroupper keeps the low 128 bits anyway).
        unsafe {
            core::arch::asm!(
                "vzeroupper",
                clobber_abi("C"),
                options(nomem, nostack, preserves_flags)
            )
        };
    }
}

/// AVX on the CPU (CPUID leaf 1, ECX bit 28) and enabled by the OS: XSAVE in use (bit 27)
/// and the XMM and YMM states in XCR0.
fn supports_avx() -> bool {
    let leaf1 = core::arch::x86_64::__cpuid(1);
    if leaf1.ecx & (1 << 28) == 0 || leaf1.ecx & (1 << 27) == 0 {
        return false;
    }
    let (lo, _hi): (u32, u32);
    // SAFETY: OSXSAVE is set, so the OS enabled XGETBV; register 0 is XCR0.
    unsafe {
        core::arch::asm!(
            "xgetbv",
            in("ecx") 0,
            out("eax") lo,
            out("edx") _hi,
            options(nomem, nostack, preserves_flags)
        )
    };
    lo & 0b110 == 0b110
}
