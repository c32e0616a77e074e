//! What a long command is doing, on stderr when it is a terminal (and the command does not
//! print JSON): one line naming the phase — importing, synthesizing probes (step k of n),
//! searching (size evaluations), pruning and refitting, measuring fidelity, sweeping (model k
//! of n) — with a bar where the phase has a known length. Build scripts and tests pass
//! [`Progress::hidden`].

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// The progress line of one command.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// Shows nothing.
    pub fn hidden() -> Self {
        Progress {
            bar: ProgressBar::hidden(),
        }
    }

    /// On stderr when `wanted` and stderr is a terminal, else hidden.
    pub fn on_stderr(wanted: bool) -> Self {
        if !(wanted && std::io::stderr().is_terminal()) {
            return Self::hidden();
        }
        let bar = ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress { bar }
    }

    /// What the line is about (a board's name while fitting it).
    pub fn set_prefix(&self, prefix: &str) {
        self.bar.set_prefix(prefix.to_string());
    }

    /// A phase of unknown length.
    pub fn phase(&self, what: &str) {
        self.bar
            .set_style(style("{prefix} {spinner} {msg} {elapsed}"));
        self.bar.set_message(what.to_string());
    }

    /// A phase of `total` steps, `done` of them done.
    pub fn steps(&self, what: &str, done: usize, total: usize) {
        // Position and length first: a draw in between never shows the last phase's
        // position against this one's length.
        self.bar.set_position(done as u64);
        self.bar.set_length(total as u64);
        self.bar
            .set_style(style("{prefix} {msg} [{bar:30}] {pos}/{len} {elapsed}"));
        self.bar.set_message(what.to_string());
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .progress_chars("=> ")
}
