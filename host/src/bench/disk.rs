//! A probe of the disk the database commits to: while a run goes, a thread
//! writes a small block to a file beside the data and waits for it to be
//! flushed (`fdatasync`), a hundred times a second, and keeps the latencies.
//!
//! Every durable commit waits for such a flush, in either design. A virtual
//! machine's disk may stall for hundreds of milliseconds at times; a run
//! that met such a stall says more about the disk than about the design, and
//! the probe's figures printed beside it tell the reader which runs did.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// How often the probe flushes.
const EVERY: Duration = Duration::from_millis(10);

/// What it writes each time: one page.
const BLOCK: usize = 4096;

/// Pages of its file, written in turn.
const BLOCKS: u64 = 256;

/// How its file is named, before the process id.
const PREFIX: &str = "allot-disk-probe-";

/// The flushes of one run.
pub struct DiskFigures {
    /// Flush latencies in µs.
    latency: Histogram<u64>,
}

impl Default for DiskFigures {
    fn default() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
        }
    }
}

impl DiskFigures {
    /// Flushes measured.
    pub fn count(&self) -> u64 {
        self.latency.len()
    }

    /// A quantile of the flush latency, in ms.
    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// The longest flush, in ms.
    pub fn max_ms(&self) -> f64 {
        self.latency.max() as f64 / 1000.0
    }

    /// Flushes that took longer than `ms`.
    pub fn over(&self, ms: f64) -> u64 {
        let limit = (ms * 1000.0) as u64;
        self.latency
            .iter_recorded()
            .filter(|v| v.value_iterated_to() > limit)
            .map(|v| v.count_at_value())
            .sum()
    }

    /// Adds another run's flushes.
    pub fn add(&mut self, other: &DiskFigures) {
        self.latency
            .add(&other.latency)
            .expect("histograms of the same bounds");
    }
}

/// The probe thread; it stops, and removes its file, when dropped.
pub struct DiskProbe {
    figures: Arc<Mutex<DiskFigures>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl DiskProbe {
    /// Starts probing with a file in `dir`, written in full and flushed
    /// first, so that the flushes measured write data, not the file's growth.
    /// Files a probe left behind (its process killed) are removed.
    pub fn start(dir: &Path) -> std::io::Result<Self> {
        for entry in std::fs::read_dir(dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(PREFIX) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let path = dir.join(format!("{PREFIX}{}", std::process::id()));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        file.write_all(&vec![0; BLOCKS as usize * BLOCK])?;
        file.sync_all()?;
        let figures = Arc::new(Mutex::new(DiskFigures::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("disk-probe".into())
            .spawn({
                let (figures, stop) = (figures.clone(), stop.clone());
                move || probe(file, &figures, &stop)
            })?;
        Ok(Self {
            figures,
            stop,
            thread: Some(thread),
            path,
        })
    }

    /// The flushes since the last call, and a fresh start.
    pub fn take(&self) -> DiskFigures {
        let mut figures = self.figures.lock().expect("probe lock");
        std::mem::take(&mut *figures)
    }
}

impl Drop for DiskProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn probe(mut file: File, figures: &Mutex<DiskFigures>, stop: &AtomicBool) {
    let block = [0x5a_u8; BLOCK];
    let mut next = Instant::now();
    let mut offset = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // Overwrites in place, as PostgreSQL's WAL does in its segments.
        let started = Instant::now();
        let flushed = file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| file.write_all(&block))
            .and_then(|_| file.sync_data());
        if let Err(error) = flushed {
            eprintln!("the disk probe stopped: {error}; later runs show no flushes");
            return;
        }
        let took = started.elapsed().as_micros().max(1) as u64;
        figures
            .lock()
            .expect("probe lock")
            .latency
            .saturating_record(took);
        offset = (offset + BLOCK as u64) % (BLOCKS * BLOCK as u64);
        next += EVERY;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_measures_flushes_and_cleans_up() {
        let dir = std::env::temp_dir().join(format!("allot-probe-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let probe = DiskProbe::start(&dir).unwrap();
        let mut first = DiskFigures::default();
        let deadline = Instant::now() + Duration::from_secs(20);
        while first.count() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            first.add(&probe.take());
        }
        assert!(first.count() >= 3, "flushes measured: {}", first.count());
        assert!(first.ms(0.5) > 0.0 && first.max_ms() >= first.ms(0.5));
        assert_eq!(first.over(first.max_ms() + 1.0), 0);
        assert_eq!(first.over(0.0), first.count());
        let path = probe.path.clone();
        assert!(path.exists());
        drop(probe);
        assert!(!path.exists(), "the probe's file is removed");
        // A file left behind by a probe that was killed goes at the next start.
        let left = dir.join(format!("{PREFIX}1"));
        std::fs::write(&left, b"left behind").unwrap();
        drop(DiskProbe::start(&dir).unwrap());
        assert!(!left.exists(), "a probe's file left behind is removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
