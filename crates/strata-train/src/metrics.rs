//! Metrics as jsonl (one object per step) and the loss curve drawn as a PNG.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{io_err, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepMetrics {
    pub step: usize,
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f32>,
    /// Validation loss of each mixture component (when evaluated).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub val_losses: BTreeMap<String, f32>,
    /// Training tokens seen so far, all components together.
    #[serde(default)]
    pub tokens_seen: usize,
    /// Each mixture component's tokens seen so far and share of all tokens seen.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mixture: BTreeMap<String, ComponentStat>,
    /// Peak resident memory of the process so far, MiB.
    #[serde(default)]
    pub peak_rss_mib: f64,
    /// The ranks training together (data-parallel runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranks: Option<usize>,
    /// Seconds of this step spent in collective operations on rank 0, waiting for the other ranks included
    /// (data-parallel runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ComponentStat {
    pub tokens: usize,
    pub share: f64,
}

/// Peak resident set size of this process (Linux `VmHWM`), in bytes; 0 where unknown.
#[must_use]
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// An append-only metrics.jsonl. Opening it for a resumed run drops the lines after the checkpoint step,
/// so the file matches the run's history exactly.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// # Errors
    /// On an I/O failure.
    pub fn open(path: &Path, keep_through_step: usize) -> Result<Self> {
        let kept: Vec<StepMetrics> = read(path)
            .into_iter()
            .filter(|m| m.step <= keep_through_step)
            .collect();
        let mut body = String::new();
        for m in &kept {
            body.push_str(&serde_json::to_string(m).unwrap_or_default());
            body.push('\n');
        }
        strata_store::write_atomic(path, body.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// # Errors
    /// On an I/O failure.
    pub fn append(&mut self, m: &StepMetrics) -> Result<()> {
        let mut line = serde_json::to_string(m).unwrap_or_default();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(io_err(&self.path))
    }
}

/// Every parseable line of a metrics file (none if it does not exist).
#[must_use]
pub fn read(path: &Path) -> Vec<StepMetrics> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_truncates_later_lines_and_plot_writes_png() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("metrics.jsonl");
        let row = |step| StepMetrics {
            step,
            loss: 5.0 - step as f32 * 0.1,
            lr: 1e-3,
            grad_norm: 1.0,
            tokens_per_s: 10.0,
            val_loss: (step % 2 == 0).then_some(4.0),
            val_losses: BTreeMap::new(),
            tokens_seen: step * 10,
            mixture: BTreeMap::new(),
            peak_rss_mib: 1.0,
            ranks: None,
            comm_s: None,
        };
        let mut log = MetricsLog::open(&p, 0).unwrap();
        for s in 1..=6 {
            log.append(&row(s)).unwrap();
        }
        drop(log);
        let mut log = MetricsLog::open(&p, 4).unwrap();
        log.append(&row(5)).unwrap();
        assert_eq!(
            read(&p).iter().map(|m| m.step).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        let png = d.path().join("loss.png");
        crate::plot_loss(&p, &png).unwrap();
        // decoded: the train curve (blue) falls left to right, the two val points (red) lie below it
        let mut reader = png::Decoder::new(std::fs::File::open(&png).unwrap())
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (800, 500));
        let ch = info.line_size / info.width as usize;
        // the plot area (margins: 30 top, 40 bottom, 80 left, 30 right), below the legend
        let pixels = |rgb: [u8; 3]| -> Vec<(usize, usize)> {
            (30..460usize)
                .flat_map(|y| (80..770usize).map(move |x| (x, y)))
                .filter(|&(x, y)| {
                    let i = y * info.line_size + x * ch;
                    buf[i..i + 3] == rgb
                })
                .collect()
        };
        let mean_y = |px: &[(usize, usize)]| {
            px.iter().map(|p| p.1 as f64).sum::<f64>() / px.len().max(1) as f64
        };
        let blue = pixels([0, 0, 255]);
        let red = pixels([255, 0, 0]);
        assert!(
            blue.len() > 300 && red.len() > 20,
            "{} {}",
            blue.len(),
            red.len()
        );
        let (left, right): (Vec<_>, Vec<_>) = blue.iter().partition(|p| p.0 < 425);
        assert!(
            mean_y(&left) + 50.0 < mean_y(&right),
            "{} {}",
            mean_y(&left),
            mean_y(&right)
        );
        assert!(mean_y(&red) > mean_y(&blue) + 100.0);
    }
}
