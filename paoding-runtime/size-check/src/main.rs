//! A bare image exporting one C function that validates a blob and runs it, with f32 or int8
//! input and output as the blob says: everything the runtime needs is linked (every f32 and
//! int8 kernel, `Model::run` and `Model::run_i8`), nothing else (no allocator, no formatting).
//! `measure.sh` builds it for thumbv7em-none-eabihf with opt-level "s" and prints the size of
//! `.text`.
#![no_std]
#![no_main]

use paoding_runtime::{Dtype, Model};

/// Validate `blob` and run it; 0 on success, 1 on any error. `input` and `output` hold
/// `input_len` and `output_len` values of the model's io dtype (f32 or int8).
///
/// # Safety
/// Each pointer must be valid for its length in values of the blob's io dtype, and aligned for
/// it.
#[no_mangle]
pub unsafe extern "C" fn paoding_run(
    blob: *const u8,
    blob_len: usize,
    input: *const u8,
    input_len: usize,
    arena: *mut f32,
    arena_len: usize,
    output: *mut u8,
    output_len: usize,
) -> i32 {
    // SAFETY: the caller guarantees each pointer is valid for its length.
    let (blob, arena) = unsafe {
        (
            core::slice::from_raw_parts(blob, blob_len),
            core::slice::from_raw_parts_mut(arena, arena_len),
        )
    };
    let Ok(m) = Model::from_bytes(blob) else {
        return 1;
    };
    // SAFETY: as above, in values of the model's io dtype.
    let r = unsafe {
        match m.io_dtype() {
            Dtype::F32 => m.run(
                core::slice::from_raw_parts(input.cast::<f32>(), input_len),
                arena,
                core::slice::from_raw_parts_mut(output.cast::<f32>(), output_len),
            ),
            Dtype::I8 => m.run_i8(
                core::slice::from_raw_parts(input.cast::<i8>(), input_len),
                arena,
                core::slice::from_raw_parts_mut(output.cast::<i8>(), output_len),
            ),
        }
    };
    match r {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// Entry point (never called on the host; the linker keeps what it reaches).
#[no_mangle]
pub extern "C" fn _start() -> ! {
    // Reach `paoding_run` through a volatile read so it is linked and not inlined away.
    let f: unsafe extern "C" fn(*const u8, usize, *const u8, usize, *mut f32, usize, *mut u8, usize) -> i32 =
        paoding_run;
    let f = unsafe { core::ptr::read_volatile(&f) };
    let r = unsafe {
        f(
            core::ptr::null(),
            0,
            core::ptr::null(),
            0,
            core::ptr::null_mut(),
            0,
            core::ptr::null_mut(),
            0,
        )
    };
    let _ = unsafe { core::ptr::read_volatile(&r) };
    loop {}
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
