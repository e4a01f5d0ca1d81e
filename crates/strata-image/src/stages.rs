//! `strata preprocess` on an image dataset: each stage like the text ones, with counts in `stats.json` and
//! what it drops quarantined with a one-line reason.
//!
//! 1. decode check: the PNG reads and matches its record;
//! 2. pixel limit: width × height over the limit is dropped;
//! 3. blank and constant frames (luminance standard deviation under `min_std`) are dropped;
//! 4. near-duplicates by perceptual hash (Hamming distance ≤ `phash_distance`): the later id of each pair is
//!    dropped, the pairs listed in `dedup_pairs.jsonl`;
//! 5. split by patient: every image of one patient pseudonym lands in one split (train/val/test by a hash of
//!    the pseudonym; images without one are split by their own id);
//! 6. leakage between splits: a val/test image whose near-twin (same threshold) is in train is a leak, as
//!    decontamination is for text; it is dropped from its split and the pairs listed in `leaks.jsonl`;
//! 7. resize (explicit, `--resize WxH`): fit inside and pad (letterbox), the original size in the record.

// Pixel and sample arithmetic: every float → integer cast is of a value rounded and clamped to the target
// range, and every index cast is bounded by an image size (≤ 2^16 per side).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::collections::HashMap;
use std::path::Path;

use image::imageops;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use strata_store::{Kind, Manifest, Store};

use crate::dataset::{read_records, write_image, DatasetWriter, ImageRecord};
use crate::phash::{distance, phash_luma};
use crate::pixels::{Frame, Samples};
use crate::Result;

/// The image stages to run (a pipeline file's `[step.images]` table names only what it changes).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageStages {
    pub max_pixels: u64,
    /// Frames whose luminance standard deviation is below this are blank or constant.
    pub min_std: f64,
    /// Near-duplicate removal at this Hamming distance (None: off).
    pub dedup: Option<u32>,
    /// Split by patient: the val and test shares (None: keep the records' splits).
    pub split: Option<(f64, f64)>,
    /// Hamming distance at which a val/test image is a leak of a train image.
    pub leak_distance: u32,
    /// Resize and pad to width × height.
    pub resize: Option<(u32, u32)>,
}

impl Default for ImageStages {
    fn default() -> Self {
        Self {
            max_pixels: crate::acquire::DEFAULT_MAX_PIXELS,
            min_std: 2.0,
            dedup: None,
            split: None,
            leak_distance: 4,
            resize: None,
        }
    }
}

/// Counts of what each stage kept and dropped.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StageCounts {
    pub input: usize,
    pub undecodable: usize,
    pub over_pixel_limit: usize,
    pub blank: usize,
    pub near_duplicates: usize,
    pub leaks: usize,
    pub output: usize,
    pub splits: HashMap<String, usize>,
    pub patients_in_two_splits: usize,
}

fn split_of(key: &str, val: f64, test: f64) -> &'static str {
    let h = strata_records::hash::hash_bytes(key.as_bytes());
    let u = (h >> 11) as f64 / (1u64 << 53) as f64;
    if u < test {
        "test"
    } else if u < test + val {
        "val"
    } else {
        "train"
    }
}

fn luma_std(l: &[u8]) -> f64 {
    let n = l.len().max(1) as f64;
    let mean = l.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    (l.iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt()
}

/// Pairs (i, j), i < j, of hashes within `d` of each other.
fn close_pairs(hashes: &[u64], d: u32) -> Vec<(usize, usize, u32)> {
    (0..hashes.len())
        .into_par_iter()
        .flat_map_iter(|i| {
            (i + 1..hashes.len()).filter_map(move |j| {
                let k = distance(hashes[i], hashes[j]);
                (k <= d).then_some((i, j, k))
            })
        })
        .collect()
}

/// `src` resized to fit `w` × `h` (Lanczos) and centred on a black canvas of that size.
fn letterbox<P>(src: &image::ImageBuffer<P, Vec<P::Subpixel>>, w: u32, h: u32) -> Vec<P::Subpixel>
where
    P: image::Pixel + 'static,
{
    let scale = (f64::from(w) / f64::from(src.width())).min(f64::from(h) / f64::from(src.height()));
    let nw = ((f64::from(src.width()) * scale).round() as u32).clamp(1, w);
    let nh = ((f64::from(src.height()) * scale).round() as u32).clamp(1, h);
    let (ox, oy) = (i64::from((w - nw) / 2), i64::from((h - nh) / 2));
    let mut canvas = image::ImageBuffer::<P, Vec<P::Subpixel>>::new(w, h);
    imageops::overlay(
        &mut canvas,
        &imageops::resize(src, nw, nh, imageops::FilterType::Lanczos3),
        ox,
        oy,
    );
    canvas.into_raw()
}

fn resize_pad(f: &Frame, w: u32, h: u32) -> Frame {
    let (width, height) = (f.width, f.height);
    let (channels, samples) = match (&f.samples, f.channels) {
        (Samples::U8(d), 3) => {
            let img = image::RgbImage::from_raw(width, height, d.clone()).unwrap_or_default();
            (3, Samples::U8(letterbox(&img, w, h)))
        }
        (Samples::U8(d), _) => {
            let img = image::GrayImage::from_raw(width, height, d.clone()).unwrap_or_default();
            (1, Samples::U8(letterbox(&img, w, h)))
        }
        (Samples::U16(d), c) => {
            let gray: Vec<u16> = d.iter().step_by(usize::from(c)).copied().collect();
            let img =
                image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(width, height, gray)
                    .unwrap_or_default();
            (1, Samples::U16(letterbox(&img, w, h)))
        }
    };
    Frame {
        width: w,
        height: h,
        channels,
        samples,
    }
}

/// Runs the stages over the image dataset `input` into `output`.
///
/// # Errors
/// When the input is not an image dataset, or on an I/O failure.
pub fn preprocess_images(
    store: &Store,
    input: &str,
    output: &str,
    cfg: &ImageStages,
    created_by: &str,
) -> Result<(Manifest, StageCounts)> {
    let in_dir = store.require(Kind::Dataset, input)?;
    let inputs = vec![store.input_ref(Kind::Dataset, input)?];
    let manifest = Manifest::new(Kind::Dataset, output, created_by)
        .with_config(inputs, serde_json::json!({"image_stages": cfg}));
    if let Some(existing) = store.up_to_date(Kind::Dataset, output, &manifest.fingerprint) {
        let c = serde_json::from_value(serde_json::Value::Object(existing.counts.clone()))
            .unwrap_or_default();
        return Ok((existing, c));
    }
    let records = read_records(&in_dir)?;
    let staging = store.staging(Kind::Dataset, output)?;
    let mut w = DatasetWriter::new(&staging)?;
    let mut c = StageCounts {
        input: records.len(),
        ..StageCounts::default()
    };
    let bar = crate::acquire::progress_bar(records.len());
    // 1–3, per image, in parallel
    let checked: Vec<(ImageRecord, Result<(Frame, u64)>)> = records
        .into_par_iter()
        .map(|rec| {
            let r = check_one(&in_dir, &rec, cfg);
            bar.inc(1);
            (rec, r)
        })
        .collect();
    bar.finish_and_clear();
    let mut kept = sort_out(checked, &mut w, &mut c)?;
    kept.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    // 4. near-duplicates: the later id of each close pair goes
    let (mut kept, pairs_log) = match cfg.dedup {
        Some(d) => dedup(kept, d, &mut w, &mut c)?,
        None => (kept, String::new()),
    };
    // 5. split by patient (images without a patient by their own id)
    if let Some((val, test)) = cfg.split {
        for (rec, _, _) in &mut kept {
            let key = if rec.patient.is_empty() {
                &rec.id
            } else {
                &rec.patient
            };
            rec.split = Some(split_of(key, val, test).to_string());
        }
    }
    // 6. leakage: a val/test image close to a train image
    let (kept, leaks_log) = if kept.iter().any(|k| k.0.split.is_some()) {
        leakage(kept, cfg.leak_distance, &mut w, &mut c)?
    } else {
        (kept, String::new())
    };
    // 7. write (resized where asked)
    let mut patient_splits: HashMap<String, std::collections::BTreeSet<String>> = HashMap::new();
    let written: Vec<Result<ImageRecord>> = kept
        .into_par_iter()
        .map(|(mut rec, f, h)| {
            rec.meta.insert("phash".into(), format!("{h:016x}").into());
            if let Some((rw, rh)) = cfg.resize {
                rec.meta.insert(
                    "resized_from".into(),
                    serde_json::json!([f.width, f.height]),
                );
                write_image(&staging, &mut rec, &resize_pad(&f, rw, rh))?;
            } else {
                write_image(&staging, &mut rec, &f)?;
            }
            Ok(rec)
        })
        .collect();
    for r in written {
        let rec = r?;
        if let Some(s) = &rec.split {
            *c.splits.entry(s.clone()).or_default() += 1;
            if !rec.patient.is_empty() {
                patient_splits
                    .entry(rec.patient.clone())
                    .or_default()
                    .insert(s.clone());
            }
        }
        w.add(rec);
    }
    c.patients_in_two_splits = patient_splits.values().filter(|s| s.len() > 1).count();
    for (name, log) in [("dedup_pairs.jsonl", pairs_log), ("leaks.jsonl", leaks_log)] {
        if !log.is_empty() {
            strata_store::write_atomic(staging.join(name), log.as_bytes())?;
        }
    }
    let (n, _) = w.finish()?;
    c.output = n;
    strata_store::write_json_atomic(staging.join("stats.json"), &c)?;
    let mut manifest = manifest;
    if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(&c) {
        manifest.counts = m;
    }
    Ok((store.publish(&staging, manifest)?, c))
}

/// Stages 1–3 for one image: its PNG decoded (and matching its record), within the pixel limit, not blank;
/// with its perceptual hash.
fn check_one(in_dir: &Path, rec: &ImageRecord, cfg: &ImageStages) -> Result<(Frame, u64)> {
    let path = in_dir.join(&rec.file);
    if u64::from(rec.width) * u64::from(rec.height) > cfg.max_pixels {
        return Err(crate::bad(
            &path,
            format!(
                "over_pixel_limit: {}×{} pixels, over the limit of {}",
                rec.width, rec.height, cfg.max_pixels
            ),
        ));
    }
    let f = Frame::read_png(&path).map_err(|e| crate::bad(&path, format!("undecodable: {e}")))?;
    if f.width != rec.width || f.height != rec.height {
        return Err(crate::bad(
            &path,
            format!(
                "undecodable: the PNG is {}×{}, its record says {}×{}",
                f.width, f.height, rec.width, rec.height
            ),
        ));
    }
    let luma = f.luma8();
    let sd = luma_std(&luma);
    if sd < cfg.min_std {
        return Err(crate::bad(
            &path,
            format!(
                "blank: luminance standard deviation {sd:.2} < {}",
                cfg.min_std
            ),
        ));
    }
    let h = phash_luma(&luma, f.width, f.height);
    Ok((f, h))
}

type Item = (ImageRecord, Frame, u64);

/// The images that passed stages 1–3; the others quarantined and counted by reason.
fn sort_out(
    checked: Vec<(ImageRecord, Result<(Frame, u64)>)>,
    w: &mut DatasetWriter,
    c: &mut StageCounts,
) -> Result<Vec<Item>> {
    let mut kept: Vec<Item> = Vec::new();
    for (rec, r) in checked {
        match r {
            Ok((f, h)) => kept.push((rec, f, h)),
            Err(e) => {
                let msg = e.to_string();
                if msg.contains("over_pixel_limit") {
                    c.over_pixel_limit += 1;
                } else if msg.contains("blank:") {
                    c.blank += 1;
                } else {
                    c.undecodable += 1;
                }
                w.reject(&rec.id, 0, &msg)?;
            }
        }
    }
    Ok(kept)
}

/// Drops the later id of each pair within `d` (pairs logged as JSON lines).
fn dedup(
    kept: Vec<Item>,
    d: u32,
    w: &mut DatasetWriter,
    c: &mut StageCounts,
) -> Result<(Vec<Item>, String)> {
    let mut pairs_log = String::new();
    let hashes: Vec<u64> = kept.iter().map(|k| k.2).collect();
    let mut drop = vec![false; kept.len()];
    for (i, j, k) in close_pairs(&hashes, d) {
        if drop[i] || drop[j] {
            continue;
        }
        drop[j] = true;
        pairs_log.push_str(
            &serde_json::json!({"kept": kept[i].0.id, "dropped": kept[j].0.id, "distance": k})
                .to_string(),
        );
        pairs_log.push('\n');
    }
    let mut out = Vec::new();
    for (keep, item) in drop.iter().zip(kept) {
        if *keep {
            c.near_duplicates += 1;
            w.reject(&item.0.id, 0, "near_duplicate: see dedup_pairs.jsonl")?;
        } else {
            out.push(item);
        }
    }
    Ok((out, pairs_log))
}

/// Drops val/test images with a train image within `leak_distance` (pairs logged as JSON lines).
fn leakage(
    kept: Vec<Item>,
    leak_distance: u32,
    w: &mut DatasetWriter,
    c: &mut StageCounts,
) -> Result<(Vec<Item>, String)> {
    let mut leaks_log = String::new();
    let train: Vec<(usize, u64)> = kept
        .iter()
        .enumerate()
        .filter(|(_, k)| k.0.split.as_deref().is_none_or(|s| s == "train"))
        .map(|(i, k)| (i, k.2))
        .collect();
    let leaked: Vec<Option<(usize, u32)>> = kept
        .par_iter()
        .map(|k| {
            if k.0.split.as_deref().is_none_or(|s| s == "train") {
                return None;
            }
            train
                .iter()
                .map(|&(i, h)| (i, distance(h, k.2)))
                .filter(|&(_, d)| d <= leak_distance)
                .min_by_key(|&(_, d)| d)
        })
        .collect();
    let mut out = Vec::new();
    for (item, leak) in kept.iter().zip(&leaked) {
        if let Some((i, d)) = leak {
            leaks_log.push_str(
                &serde_json::json!({"image": item.0.id, "split": item.0.split, "train_twin": kept[*i].0.id, "distance": d})
                    .to_string(),
            );
            leaks_log.push('\n');
        }
    }
    for (item, leak) in kept.into_iter().zip(leaked) {
        if let Some((_, d)) = leak {
            c.leaks += 1;
            w.reject(
                &item.0.id,
                0,
                &format!("leak: a near-twin (distance {d}) is in train; see leaks.jsonl"),
            )?;
        } else {
            out.push(item);
        }
    }
    Ok((out, leaks_log))
}
