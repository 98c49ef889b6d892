//! The live progress display of a sweep's jobs, shared by the local runner and `ablate sweep
//! watch`.

use ablate_proto::v1::{self, JobState};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// The live progress display: one line per job, redrawn in place on a terminal, printed
/// every 15 s otherwise (logs, CI).
pub struct Display {
    tty: bool,
    t0: Instant,
    last_plain: Option<Instant>,
    drawn: usize,
    width: usize,
}

impl Display {
    pub fn new(width: usize) -> Self {
        Self { tty: std::io::stderr().is_terminal(), t0: Instant::now(), last_plain: None, drawn: 0, width }
    }

    pub fn line(&self, name: &str, job: &v1::Job, last: Option<&v1::MetricPoint>) -> String {
        let total = job.total_steps.max(1);
        let step = job.step.min(total);
        let filled = (20 * step / total) as usize;
        let bar = format!("{}{}", "#".repeat(filled), ".".repeat(20 - filled));
        // the flow-matching MSE, comparable across arms (and what the results' "final loss"
        // averages); the total adds arm-specific terms such as REPA's negative cosine
        let loss = last.map(|p| format!("loss {:.4}", p.mse)).unwrap_or_default();
        let eta = match (last, job.state()) {
            (Some(p), JobState::Running) if p.step_seconds > 0.0 => {
                let s = (total - step) as f64 * p.step_seconds;
                format!("ETA {}:{:02}", (s / 60.0) as u64, (s % 60.0) as u64)
            }
            _ => String::new(),
        };
        let why = if job.state() == JobState::Failed { format!(": {}", job.reason) } else { String::new() };
        format!("{name:<w$} [{bar}] {step:>5}/{total:<5} {loss:<12} {eta:<10} {}{why}", job.state().label(), w = self.width)
    }

    pub fn draw(&mut self, lines: &[String], done: bool) {
        if self.tty {
            let mut err = std::io::stderr().lock();
            if self.drawn > 0 {
                let _ = write!(err, "\x1b[{}A", self.drawn);
            }
            for l in lines {
                let _ = writeln!(err, "\x1b[K{l}");
            }
            self.drawn = lines.len();
        } else if done || self.last_plain.is_none_or(|t| t.elapsed() > Duration::from_secs(15)) {
            eprintln!("[{:>5.0}s]", self.t0.elapsed().as_secs_f64());
            for l in lines {
                eprintln!("  {l}");
            }
            self.last_plain = Some(Instant::now());
        }
    }
}
