//! A bare image exporting one C function that validates a blob and runs it: everything the
//! runtime needs is linked, nothing else (no allocator, no formatting). `measure.sh` builds it
//! for thumbv7em-none-eabihf with opt-level "s" and prints the size of `.text`.
#![no_std]
#![no_main]

use paoding_runtime::Model;

/// Validate `blob` and run it; 0 on success, 1 on any error.
///
/// # Safety
/// Each pointer must be valid for its length.
#[no_mangle]
pub unsafe extern "C" fn paoding_run(
    blob: *const u8,
    blob_len: usize,
    input: *const f32,
    input_len: usize,
    arena: *mut f32,
    arena_len: usize,
    output: *mut f32,
    output_len: usize,
) -> i32 {
    // SAFETY: the caller guarantees each pointer is valid for its length.
    let (blob, input, arena, output) = unsafe {
        (
            core::slice::from_raw_parts(blob, blob_len),
            core::slice::from_raw_parts(input, input_len),
            core::slice::from_raw_parts_mut(arena, arena_len),
            core::slice::from_raw_parts_mut(output, output_len),
        )
    };
    match Model::from_bytes(blob).and_then(|m| m.run(input, arena, output)) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// Entry point (never called on the host; the linker keeps what it reaches).
#[no_mangle]
pub extern "C" fn _start() -> ! {
    // Reach `paoding_run` through a volatile read so it is linked and not inlined away.
    let f: unsafe extern "C" fn(*const u8, usize, *const f32, usize, *mut f32, usize, *mut f32, usize) -> i32 =
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
