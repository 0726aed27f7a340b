//! The progress bar on stderr: drawn only when stderr is a terminal, silent otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::{Phase, Tick};

/// Shows run progress; a no-op when hidden.
pub struct Progress {
    bar: ProgressBar,
    last: Option<(Duration, u64)>,
}

impl Progress {
    /// A bar on stderr if it is a terminal and `quiet` is off; hidden otherwise.
    pub fn new(quiet: bool) -> Self {
        let visible = !quiet && std::io::stderr().is_terminal();
        let bar = if visible {
            let bar = ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{spinner} {prefix:>9} [{bar:30}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar
        } else {
            ProgressBar::hidden()
        };
        Self { bar, last: None }
    }

    pub fn update(&mut self, tick: Tick) {
        if self.bar.is_hidden() {
            return;
        }
        let permille = if tick.total.is_zero() {
            1000.0
        } else {
            (tick.elapsed.as_secs_f64() / tick.total.as_secs_f64() * 1000.0).min(1000.0)
        };
        // In 0..=1000 by construction.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        self.bar.set_position(permille as u64);
        self.bar.set_prefix(match tick.phase {
            Phase::Warmup => "warm-up",
            Phase::Measuring => "measuring",
            Phase::Draining => "draining",
        });
        let rate = match self.last {
            Some((at, outcomes)) if tick.elapsed > at => {
                #[allow(clippy::cast_precision_loss)]
                let delta = tick.outcomes.saturating_sub(outcomes) as f64;
                delta / (tick.elapsed - at).as_secs_f64()
            }
            _ => 0.0,
        };
        self.last = Some((tick.elapsed, tick.outcomes));
        self.bar.set_message(format!(
            "{:.0}/{:.0}s  {rate:.0} req/s  {} errors",
            tick.elapsed.as_secs_f64(),
            tick.total.as_secs_f64(),
            tick.errors
        ));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
