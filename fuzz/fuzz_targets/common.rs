//! What every target shares: the time limit per input, in CPU time.

/// CPU time this thread has used, in seconds. The limit is on CPU, not wall-clock, time: the
/// long runs are at nice 19 on a machine shared with other work, where a starved process can
/// wait for seconds on an input that takes milliseconds (libFuzzer's own `-timeout` is
/// wall-clock and is left, longer, to catch hangs).
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Run one input through `f`; more than a second of CPU is a failure (a panic, which
/// libFuzzer saves as a crash; fuzz/long-run.sh counts it as a timeout).
pub fn within_a_cpu_second(f: impl FnOnce()) {
    let start = thread_cpu_seconds();
    f();
    let used = thread_cpu_seconds() - start;
    assert!(used <= 1.0, "TIMEOUT: one input took {used:.2} s of CPU");
}
