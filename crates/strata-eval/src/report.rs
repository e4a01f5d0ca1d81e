//! `strata report NAME`: the chain that led to a model or adapter (its parents back to an imported or
//! freshly trained model), each step × each evaluation stored in the registry (`strata eval`), with the
//! change against the step's parent and the forgetting guard's verdict; as a table and a PNG.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use strata_store::{EvalRecord, Kind, Manifest, Store};

use strata_train::Result;

/// One step of a chain.
#[derive(Debug, Clone)]
pub struct Step {
    pub kind: Kind,
    pub name: String,
    /// "passed" / "failed" when the step had a guard.
    pub guard: Option<String>,
    pub evals: Vec<EvalRecord>,
}

fn manifest_of(store: &Store, name: &str) -> Result<Manifest> {
    Ok(store.manifest(store.kind_of(name), name)?)
}

/// The step a manifest was made from: the parent of a fine-tuning, the adapter a merged model came from.
fn parent_of(m: &Manifest) -> Option<String> {
    m.config["init"]["parent"]
        .as_str()
        .or_else(|| m.config["adapter"].as_str())
        .map(String::from)
}

/// The chain ending at `name`, root first.
///
/// # Errors
/// When an artifact of the chain is missing.
pub fn chain(store: &Store, name: &str) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    let mut cur = Some(name.to_string());
    while let Some(n) = cur {
        if steps.iter().any(|s: &Step| s.name == n) {
            break; // a cycle cannot be built, but never loop
        }
        let m = manifest_of(store, &n)?;
        let guard = m.counts.get("guard").map(|g| {
            if g["passed"] == true {
                "passed"
            } else {
                "failed"
            }
            .to_string()
        });
        steps.push(Step {
            kind: m.kind,
            evals: store.registry().evals(m.kind, &n)?,
            name: n,
            guard,
        });
        cur = parent_of(&m);
    }
    steps.reverse();
    Ok(steps)
}

/// The evaluations shown: every (eval, metric) with metric `ppl` or `acc` that some step has.
#[must_use]
pub fn columns(steps: &[Step]) -> Vec<(String, String)> {
    let set: BTreeSet<(String, String)> = steps
        .iter()
        .flat_map(|s| &s.evals)
        .filter(|e| e.metric == "ppl" || e.metric == "acc")
        .map(|e| (e.eval.clone(), e.metric.clone()))
        .collect();
    set.into_iter().collect()
}

fn value<'a>(s: &'a Step, (eval, metric): &(String, String)) -> Option<&'a EvalRecord> {
    s.evals
        .iter()
        .find(|e| &e.eval == eval && &e.metric == metric)
}

/// The table: one row per step, one column per evaluation (perplexity with its change against the
/// parent in %, accuracy with its 95% interval and its change in points), and the guard's verdict.
#[must_use]
pub fn table(steps: &[Step]) -> String {
    let cols = columns(steps);
    let mut out = format!("{:<18}{:<9}", "step", "guard");
    for (eval, _) in &cols {
        let _ = write!(out, "{eval:>34}");
    }
    out.push('\n');
    out.push_str(&"-".repeat(27 + 34 * cols.len()));
    out.push('\n');
    for (i, s) in steps.iter().enumerate() {
        let _ = write!(
            out,
            "{:<18}{:<9}",
            s.name,
            s.guard.as_deref().unwrap_or("-")
        );
        for c in &cols {
            let cell = match value(s, c) {
                None => "-".to_string(),
                Some(e) => {
                    let before = i.checked_sub(1).and_then(|p| value(&steps[p], c));
                    if c.1 == "ppl" {
                        let d = before.map_or(String::new(), |b| {
                            format!(" ({:+.1}%)", 100.0 * (e.value / b.value - 1.0))
                        });
                        format!("{:.2}{d}", e.value)
                    } else {
                        let ci = match (e.lo, e.hi) {
                            (Some(lo), Some(hi)) => format!(" [{lo:.3}, {hi:.3}]"),
                            _ => String::new(),
                        };
                        let d = before
                            .map_or(String::new(), |b| format!(" ({:+.3})", e.value - b.value));
                        format!("{:.3}{ci}{d}", e.value)
                    }
                }
            };
            let _ = write!(out, "{cell:>34}");
        }
        out.push('\n');
    }
    out
}

/// Writes the report as a PNG: one panel per evaluation, the steps along x.
///
/// # Errors
/// When the PNG cannot be written.
pub fn plot(steps: &[Step], out: &Path) -> Result<()> {
    let cols = columns(steps);
    let series: Vec<strata_train::plot::Series> = cols
        .iter()
        .map(|c| {
            let label = format!(
                "{} {}",
                c.1,
                c.0.split_once(':').map_or(c.0.as_str(), |x| x.1)
            );
            let v = steps
                .iter()
                .map(|s| value(s, c).map(|e| (e.value, e.lo.zip(e.hi))))
                .collect();
            (label, v)
        })
        .collect();
    let names: Vec<String> = steps
        .iter()
        .map(|s| match s.guard.as_deref() {
            Some("failed") => format!("{} (guard failed)", s.name),
            _ => s.name.clone(),
        })
        .collect();
    strata_train::plot::plot_panels(&series, &names, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(eval: &str, metric: &str, value: f64, ci: Option<(f64, f64)>) -> EvalRecord {
        EvalRecord {
            kind: Kind::Model,
            name: String::new(),
            sha256: String::new(),
            eval: eval.into(),
            metric: metric.into(),
            value,
            lo: ci.map(|c| c.0),
            hi: ci.map(|c| c.1),
            n: 500,
        }
    }

    fn steps() -> Vec<Step> {
        vec![
            Step {
                kind: Kind::Model,
                name: "smol".into(),
                guard: None,
                evals: vec![
                    rec("ppl:general", "ppl", 20.0, None),
                    rec("task:pubmedqa", "acc", 0.4, Some((0.36, 0.44))),
                    rec("task:pubmedqa", "chance", 0.333, None),
                ],
            },
            Step {
                kind: Kind::Adapter,
                name: "medical".into(),
                guard: Some("passed".into()),
                evals: vec![
                    rec("ppl:general", "ppl", 20.5, None),
                    rec("task:pubmedqa", "acc", 0.5, Some((0.46, 0.54))),
                ],
            },
        ]
    }

    #[test]
    fn the_table_shows_changes_against_the_parent() {
        let t = table(&steps());
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].contains("ppl:general") && lines[0].contains("task:pubmedqa"),
            "{t}"
        );
        assert!(
            !lines[0].contains("chance"),
            "only ppl and acc are columns: {t}"
        );
        assert!(
            lines[2].starts_with("smol")
                && lines[2].contains("20.00")
                && lines[2].contains("0.400 [0.360, 0.440]")
        );
        // 20 → 20.5 is +2.5%; 0.4 → 0.5 is +0.100
        assert!(
            lines[3].contains("passed")
                && lines[3].contains("20.50 (+2.5%)")
                && lines[3].contains("(+0.100)"),
            "{t}"
        );
    }

    #[test]
    fn the_png_has_a_panel_per_evaluation_with_its_points() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.png");
        plot(&steps(), &p).unwrap();
        let dec = png::Decoder::new(std::fs::File::open(&p).unwrap());
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (800, 2 * 190 + 20 * 2 + 20));
        let ch = info.line_size / info.width as usize;
        let blue_in = |y0: usize, y1: usize| {
            (y0..y1)
                .flat_map(|y| (0..info.width as usize).map(move |x| (x, y)))
                .filter(|&(x, y)| {
                    let i = y * info.line_size + x * ch;
                    buf[i] == 0 && buf[i + 1] == 0 && buf[i + 2] == 255
                })
                .count()
        };
        // each panel holds its series (blue dots and line)
        assert!(blue_in(0, 190) > 100 && blue_in(190, 380) > 100);
        // the accuracy panel draws the intervals in red
        let red = (190..380)
            .flat_map(|y| (0..800usize).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let i = y * info.line_size + x * ch;
                buf[i] == 255 && buf[i + 1] == 0 && buf[i + 2] == 0
            })
            .count();
        assert!(red > 50, "{red}");
    }
}
