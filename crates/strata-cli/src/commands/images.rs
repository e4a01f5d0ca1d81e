//! Images from the command line: `strata acquire` and `strata preprocess` on images, `strata deid dicom`,
//! `strata domain ultrasound-images` and `strata show`.

use std::process::ExitCode;

use strata_image::acquire::{acquire_images, image_inputs, ImageAcquireConfig, ImageInputs};
use strata_image::deid::{deid_tree, DicomDeid, Rect};
use strata_image::stages::{preprocess_images, ImageStages};
use strata_store::{Kind, Store};

use crate::cli::{AcquireArgs, DeidDicomArgs, ImageStageArgs, PreprocessArgs, ShowArgs};

/// The key of patient and study pseudonyms (`STRATA_DEID_SECRET`; empty when unset).
pub(crate) fn secret() -> String {
    std::env::var("STRATA_DEID_SECRET").unwrap_or_default()
}

pub fn acquire(store: &Store, a: &AcquireArgs, found: &ImageInputs) -> anyhow::Result<ExitCode> {
    if a.phase.is_some() || a.tasks.is_some() {
        anyhow::bail!("--phase/--tasks are for text sources; an image dataset is read in one run");
    }
    let cfg = ImageAcquireConfig {
        inputs: a.inputs.clone(),
        frame_step: a.frame_step.max(1),
        max_pixels: a.max_pixels,
        labels: a.labels.clone(),
        secret: secret(),
    };
    let (_, c) = acquire_images(store, &a.name, &cfg, found, "strata acquire")?;
    println!(
        "dataset {} (images): {} images from {} files ({} DICOM), {} quarantined",
        a.name, c.images, c.files, c.dicom_files, c.quarantined
    );
    if c.quarantined > 0 {
        println!(
            "quarantine: {}",
            store
                .dir(Kind::Dataset, &a.name)
                .join("quarantine/quarantine.jsonl")
                .display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_size(s: &str) -> anyhow::Result<(u32, u32)> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| anyhow::anyhow!("--resize {s:?}: expected WxH, e.g. 224x224"))?;
    let (w, h): (u32, u32) = (w.trim().parse()?, h.trim().parse()?);
    if w == 0 || h == 0 {
        anyhow::bail!("--resize {s:?}: width and height must be positive");
    }
    Ok((w, h))
}

/// The text stages asked for on an image dataset (they would do nothing to it).
fn text_flags(p: &PreprocessArgs) -> Vec<&'static str> {
    [
        (p.gopher, "--gopher"),
        (p.minhash, "--minhash"),
        (p.pii.is_some(), "--pii"),
        (!p.languages.is_empty(), "--languages"),
        (p.c4, "--c4"),
        (p.fineweb, "--fineweb"),
        (p.char_quality, "--char-quality"),
        (!p.eval_sets.is_empty(), "--eval-set"),
        (p.parquet, "--parquet"),
        (
            p.phase.is_some() || p.task.is_some() || p.tasks.is_some(),
            "--phase/--task/--tasks",
        ),
    ]
    .into_iter()
    .filter_map(|(on, flag)| on.then_some(flag))
    .collect()
}

/// The image stages asked for on a text dataset.
pub fn image_flags(a: &ImageStageArgs) -> Vec<&'static str> {
    [
        (a.phash_dedup, "--phash-dedup"),
        (a.split_by_patient, "--split-by-patient"),
        (a.resize.is_some(), "--resize"),
    ]
    .into_iter()
    .filter_map(|(on, flag)| on.then_some(flag))
    .collect()
}

pub fn preprocess(store: &Store, p: &PreprocessArgs) -> anyhow::Result<ExitCode> {
    let text = text_flags(p);
    if !text.is_empty() {
        anyhow::bail!(
            "{} is an image dataset: {} are text stages (images take --phash-dedup, --split-by-patient, --resize, \
             --image-max-pixels, --min-std)",
            p.input,
            text.join(", ")
        );
    }
    let (input, output, a) = (&p.input, &p.output, &p.images);
    let cfg = ImageStages {
        max_pixels: a.image_max_pixels,
        min_std: a.min_std,
        dedup: a.phash_dedup.then_some(a.phash_distance),
        split: a
            .split_by_patient
            .then_some((a.val_fraction, a.test_fraction)),
        leak_distance: a.phash_distance,
        resize: a.resize.as_deref().map(parse_size).transpose()?,
    };
    let (_, c) = preprocess_images(store, input, output, &cfg, "strata preprocess")?;
    println!(
        "{input} → {output} (images): {} in, {} out; dropped: {} undecodable, {} over the pixel limit, {} blank, \
         {} near-duplicates, {} leaks between splits",
        c.input, c.output, c.undecodable, c.over_pixel_limit, c.blank, c.near_duplicates, c.leaks
    );
    if !c.splits.is_empty() {
        let mut s: Vec<_> = c.splits.iter().collect();
        s.sort();
        let s: Vec<String> = s.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "splits: {}; patients in two splits: {}",
            s.join(", "),
            c.patients_in_two_splits
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_rect(s: &str) -> anyhow::Result<Rect> {
    let v: Vec<u32> = s
        .split(',')
        .map(|p| p.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("--blank {s:?}: expected X0,Y0,X1,Y1 (pixels)"))?;
    match v.as_slice() {
        [x0, y0, x1, y1] if x0 <= x1 && y0 <= y1 => Ok([*x0, *y0, *x1, *y1]),
        _ => anyhow::bail!("--blank {s:?}: expected X0,Y0,X1,Y1 with X0 ≤ X1 and Y0 ≤ Y1"),
    }
}

/// The DICOM de-identifier of `strata deid dicom` and the demo: kept descriptors go through the text
/// de-identifier in surrogate mode, with the lexicon at `lexicon` or the rule-only mode (`none`).
fn dicom_deid(
    lexicon: &std::path::Path,
    secret: &str,
    blank: Vec<Rect>,
    max_pixels: u64,
) -> anyhow::Result<DicomDeid> {
    let rules_only = lexicon.as_os_str() == "none";
    if !rules_only && !lexicon.is_dir() {
        anyhow::bail!(
            "no PII lexicon at {} for the kept descriptors (build it with scripts/fetch-data.sh --lexicon, or \
             pass --lexicon none for the rule-only mode)",
            lexicon.display()
        );
    }
    let text = strata_deid::Deid::new(&strata_deid::PiiRedact {
        mode: strata_deid::PiiMode::Surrogate,
        lexicon: (!rules_only).then(|| lexicon.to_path_buf()),
        rules_only,
        ..strata_deid::PiiRedact::default()
    })?
    .with_secret(secret);
    Ok(DicomDeid {
        secret: secret.to_string(),
        text,
        blank,
        max_pixels,
    })
}

pub fn deid_dicom(a: &DeidDicomArgs) -> anyhow::Result<ExitCode> {
    if a.secret.is_empty() {
        eprintln!(
            "warning: no secret (--secret or STRATA_DEID_SECRET): new UIDs, pseudonyms and date offsets can be \
             recomputed by anyone who knows the originals"
        );
    }
    let blank = a
        .blank
        .iter()
        .map(|s| parse_rect(s))
        .collect::<anyhow::Result<_>>()?;
    let cfg = dicom_deid(&a.lexicon, &a.secret, blank, a.max_pixels)?;
    let t = std::time::Instant::now();
    let r = deid_tree(&cfg, &a.input, &a.output)?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{} → {}: {} of {} files de-identified{} ({:.0} files/s); {} attributes removed, {} replaced, {} UIDs, \
         {} dates moved, {} private/overlay removed, {} pixels blanked; {} quarantined",
        a.input.display(),
        a.output.display(),
        r.written,
        r.files,
        if r.skipped > 0 { format!(", {} already there (skipped)", r.skipped) } else { String::new() },
        r.written as f64 / secs.max(1e-9),
        r.removed,
        r.replaced,
        r.uids,
        r.dates,
        r.private,
        r.pixels_blanked,
        r.quarantined
    );
    if r.quarantined > 0 {
        println!(
            "quarantine: {}",
            a.output.join("quarantine.jsonl").display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn simulate(
    out: &std::path::Path,
    count: usize,
    seed: u64,
    size: u32,
    dicom: bool,
    frames: usize,
) -> anyhow::Result<ExitCode> {
    if !(32..=2048).contains(&size) {
        anyhow::bail!("--size {size}: between 32 and 2048 pixels");
    }
    let c = strata_image::sim::generate(out, count, seed, size, dicom, frames)?;
    println!(
        "ultrasound images → {}: {} {} of {} patients, with {}",
        out.display(),
        c.images,
        if dicom { "DICOM files" } else { "PNG images" },
        c.patients,
        if dicom {
            "reports.jsonl"
        } else {
            "labels.jsonl"
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub fn show(store: &Store, a: &ShowArgs) -> anyhow::Result<ExitCode> {
    let dir = store.require(Kind::Dataset, &a.dataset)?;
    let m = store.manifest(Kind::Dataset, &a.dataset)?;
    let counts: Vec<String> = m.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "dataset {} ({}): {}",
        a.dataset,
        &m.sha256[..12.min(m.sha256.len())],
        counts.join(" ")
    );
    if !strata_image::dataset::is_image_dataset(&dir) {
        if a.png.is_some() {
            anyhow::bail!(
                "{} is a text dataset: --png draws image datasets",
                a.dataset
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let recs = strata_image::dataset::read_records(&dir)?;
    let mut labels: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    let mut splits: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for r in &recs {
        for l in &r.labels {
            *labels.entry(l.clone()).or_default() += 1;
        }
        *splits
            .entry(r.split.clone().unwrap_or_else(|| "-".into()))
            .or_default() += 1;
    }
    let fmt = |m: &std::collections::BTreeMap<String, usize>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "{} images; labels: {}; splits: {}",
        recs.len(),
        fmt(&labels),
        fmt(&splits)
    );
    if let Some(png) = &a.png {
        let n = strata_image::sheet::contact_sheet(&dir, png, a.max, a.cols)?;
        println!("contact sheet of {n} images: {}", png.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The demo's image part: simulated B-mode scans → image dataset → dedup and split by patient → contact
/// sheet; simulated ultrasound DICOM → de-identified DICOM. Prints what it did and where the sheet is.
pub fn demo(store: &Store, quick: bool) -> anyhow::Result<()> {
    let (count, size) = if quick { (16, 96) } else { (96, 256) };
    let root = store.root().join("demo-images");
    let png_dir = root.join("scans");
    let c = strata_image::sim::generate(&png_dir, count, 0, size, false, 1)?;
    let cfg = ImageAcquireConfig {
        inputs: vec![png_dir.display().to_string()],
        secret: secret(),
        ..ImageAcquireConfig::default()
    };
    let found = image_inputs(&cfg.inputs)?
        .ok_or_else(|| anyhow::anyhow!("{}: the simulator wrote no images", png_dir.display()))?;
    let (_, a) = acquire_images(store, "us-images", &cfg, &found, "strata demo")?;
    let stages = ImageStages {
        dedup: Some(4),
        split: Some((0.1, 0.1)),
        ..ImageStages::default()
    };
    let (_, s) = preprocess_images(
        store,
        "us-images",
        "us-images-clean",
        &stages,
        "strata demo",
    )?;
    let sheet = store.root().join("us-images.png");
    let dir = store.require(Kind::Dataset, "us-images-clean")?;
    strata_image::sheet::contact_sheet(&dir, &sheet, 48, 8)?;
    let mut splits: Vec<_> = s.splits.iter().collect();
    splits.sort();
    let splits: Vec<String> = splits.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "ultrasound images: {} simulated B-mode scans of {} patients → dataset us-images ({} images) → \
         us-images-clean ({} kept, {} near-duplicates, split by patient: {})",
        c.images,
        c.patients,
        a.images,
        s.output,
        s.near_duplicates,
        splits.join(", ")
    );
    println!("contact sheet: {}", sheet.display());
    let dcm = root.join("dicom");
    strata_image::sim::generate(&dcm, if quick { 4 } else { 16 }, 1, size, true, 3)?;
    let cfg = dicom_deid(
        std::path::Path::new("none"),
        &secret(),
        Vec::new(),
        strata_image::acquire::DEFAULT_MAX_PIXELS,
    )?;
    let out = root.join("dicom-deid");
    let r = deid_tree(&cfg, &dcm.join("dicom"), &out)?;
    println!(
        "ultrasound DICOM: {} cine loops with invented patients → {} de-identified (PS3.15 Annex E; {} UIDs \
         replaced, {} dates moved, burned-in header blanked) in {}",
        r.files,
        r.written,
        r.uids,
        r.dates,
        out.display()
    );
    Ok(())
}
