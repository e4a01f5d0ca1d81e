//! `strata acquire` for images: folders of PNG/JPEG/BMP (labels from a CSV/JSONL sidecar or from sub-folder
//! names, the ImageFolder convention) and DICOM files (every frame, or every k-th of a cine loop) → an image
//! dataset. A file that cannot be used (not an image, truncated, an unsupported transfer syntax, more pixels
//! than the limit) is quarantined with a one-line reason; a sidecar row naming a missing image too; the rest
//! of the dataset is written.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use strata_store::{InputRef, Kind, Manifest, Store};

use crate::dataset::{pseudonym, write_image, DatasetWriter, ImageRecord};
use crate::pixels::Frame;
use crate::{bad, dicom, io_err, ImageError, Result};

/// Largest image accepted by default: 2^28 pixels (a 16384 × 16384 picture, or a 1024 × 768 loop of 340
/// frames); a file declaring more is a decompression bomb until shown otherwise.
pub const DEFAULT_MAX_PIXELS: u64 = 1 << 28;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageAcquireConfig {
    pub inputs: Vec<String>,
    /// Cine loops: keep frames 0, k, 2k, … (1: every frame).
    pub frame_step: u32,
    /// Refuse files declaring more pixels (all frames together) than this.
    pub max_pixels: u64,
    /// A CSV or JSONL file of labels (`file`, `label` or `labels`, optional `text`, `patient`, `study`);
    /// by default `labels.csv`/`labels.jsonl` at the top of an input folder, else sub-folder names.
    pub labels: Option<PathBuf>,
    /// Keys the patient and study pseudonyms (kept out of the manifest).
    #[serde(skip)]
    pub secret: String,
}

impl Default for ImageAcquireConfig {
    fn default() -> Self {
        Self {
            inputs: Vec::new(),
            frame_step: 1,
            max_pixels: DEFAULT_MAX_PIXELS,
            labels: None,
            secret: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Picture,
    Dicom,
    Sidecar,
    Text,
    Other,
    Skip,
}

fn kind_of(path: &Path) -> FileKind {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
    if name == "quarantine.jsonl" {
        return FileKind::Skip; // what `strata deid dicom` wrote beside its output
    }
    match ext {
        "png" | "jpg" | "jpeg" | "bmp" => FileKind::Picture,
        "csv" | "tsv" | "jsonl" if name.starts_with("labels") => FileKind::Sidecar,
        "txt" | "md" | "text" | "html" | "htm" | "warc" | "gz" | "zst" | "parquet" | "urls"
        | "jsonl" | "ndjson" | "csv" | "tsv" => FileKind::Text,
        _ if dicom::is_dicom(path) => FileKind::Dicom,
        _ => FileKind::Other,
    }
}

/// A file found under the inputs, with the input folder it was found in (for ImageFolder labels).
#[derive(Debug, Clone)]
struct Found {
    path: PathBuf,
    root: Option<PathBuf>,
    kind: FileKind,
}

fn resolve(inputs: &[String]) -> Result<Vec<Found>> {
    let mut out = Vec::new();
    for input in inputs {
        let before = out.len();
        let path = PathBuf::from(input);
        if input.contains(['*', '?', '[']) {
            let paths =
                glob::glob(input).map_err(|e| ImageError::Usage(format!("{input}: {e}")))?;
            for p in paths
                .filter_map(std::result::Result::ok)
                .filter(|p| p.is_file())
            {
                let kind = kind_of(&p);
                out.push(Found {
                    path: p,
                    root: None,
                    kind,
                });
            }
        } else if path.is_dir() {
            walk(&path, &mut out)?;
        } else if path.is_file() {
            let kind = kind_of(&path);
            out.push(Found {
                path,
                root: None,
                kind,
            });
        } else {
            return Err(bad(&path, "no such file or folder"));
        }
        if out.len() == before {
            return Err(ImageError::Usage(format!(
                "input {input:?} matched no files"
            )));
        }
        out[before..].sort_by(|a, b| a.path.cmp(&b.path));
    }
    Ok(out)
}

fn walk(root: &Path, out: &mut Vec<Found>) -> Result<()> {
    for path in strata_records::files_under(root, true)? {
        let kind = kind_of(&path);
        out.push(Found {
            path,
            root: Some(root.to_path_buf()),
            kind,
        });
    }
    Ok(())
}

/// The files the inputs name, found and classified once: what [`image_inputs`] hands to [`acquire_images`].
#[derive(Debug, Clone)]
pub struct ImageInputs(Vec<Found>);

/// The inputs' files when they hold images or DICOM files and no text sources (`strata acquire` then builds
/// an image dataset from them); `None` when they hold no image, or when an input is missing or a pattern is
/// malformed (the text readers report those). Inputs mixing both kinds are an error (two datasets, one per
/// kind).
///
/// # Errors
/// When the inputs mix images with text sources.
pub fn image_inputs(inputs: &[String]) -> Result<Option<ImageInputs>> {
    let Ok(found) = resolve(inputs) else {
        return Ok(None);
    };
    let images = found
        .iter()
        .filter(|f| matches!(f.kind, FileKind::Picture | FileKind::Dicom))
        .count();
    let text = found.iter().filter(|f| f.kind == FileKind::Text).count();
    match (images, text) {
        (0, _) => Ok(None),
        (_, 0) => Ok(Some(ImageInputs(found))),
        (i, t) => Err(ImageError::Usage(format!(
            "the inputs mix {i} image/DICOM files with {t} text files: acquire them as two datasets"
        ))),
    }
}

/// Labels (and text, patient, study) of the images a sidecar names, by the image's path.
#[derive(Debug, Default, Clone)]
struct SideRow {
    labels: Vec<String>,
    text: String,
    patient: String,
    study: String,
    split: Option<String>,
    /// Every other field (e.g. a simulator's ground truth), kept in the record's `meta`.
    meta: serde_json::Map<String, serde_json::Value>,
    line: usize,
}

fn read_sidecar(path: &Path) -> Result<BTreeMap<PathBuf, SideRow>> {
    let base = path.parent().unwrap_or(Path::new("."));
    let name = path.to_string_lossy().to_ascii_lowercase();
    let mut rows: Vec<(usize, serde_json::Map<String, serde_json::Value>)> = Vec::new();
    if name.ends_with(".jsonl") {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        for (i, l) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(l).map_err(|e| bad(path, format!("line {}: {e}", i + 1)))?;
            rows.push((i + 1, v));
        }
    } else {
        let mut r = csv::ReaderBuilder::new()
            .delimiter(if name.ends_with(".tsv") { b'\t' } else { b',' })
            .from_path(path)
            .map_err(|e| bad(path, e.to_string()))?;
        let headers = r.headers().map_err(|e| bad(path, e.to_string()))?.clone();
        for (i, rec) in r.records().enumerate() {
            let rec = rec.map_err(|e| bad(path, format!("line {}: {e}", i + 2)))?;
            let m = headers
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.to_string(), serde_json::Value::String(v.to_string())))
                .collect();
            rows.push((i + 2, m));
        }
    }
    let mut out = BTreeMap::new();
    for (line, m) in rows {
        let get = |k: &str| m.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let file = ["file", "image", "path", "file_name"]
            .iter()
            .map(|k| get(k))
            .find(|s| !s.is_empty())
            .ok_or_else(|| {
                bad(
                    path,
                    format!("line {line}: no file/image/path/file_name field"),
                )
            })?;
        let labels = match m.get("labels").or_else(|| m.get("label")) {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            Some(serde_json::Value::String(s)) => s
                .split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            Some(v) => vec![v.to_string()],
            None => Vec::new(),
        };
        out.insert(
            base.join(&file),
            SideRow {
                labels,
                text: ["text", "caption", "report"]
                    .iter()
                    .map(|k| get(k))
                    .find(|s| !s.is_empty())
                    .unwrap_or_default(),
                patient: get("patient"),
                study: get("study"),
                split: Some(get("split")).filter(|s| !s.is_empty()),
                meta: m
                    .iter()
                    .filter(|(k, _)| {
                        !matches!(
                            k.as_str(),
                            "file"
                                | "image"
                                | "path"
                                | "file_name"
                                | "label"
                                | "labels"
                                | "text"
                                | "caption"
                                | "report"
                                | "patient"
                                | "study"
                                | "split"
                        )
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                line,
            },
        );
    }
    Ok(out)
}

/// A record id: the file's stem and 10 hex digits of a hash of its path and content, so that two copies of
/// one picture in two folders (or one name in two folders) are two records.
fn safe_id(path: &Path, sha: &str) -> String {
    let stem: String = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let key = strata_store::sha256_bytes(format!("{}\u{0}{sha}", path.display()).as_bytes());
    format!("{stem}-{}", &key[..10])
}

/// Reads one plain picture (PNG, JPEG, BMP): the header's size checked against the limit before any pixel
/// is decoded.
///
/// # Errors
/// A file that is not such a picture, over the limit, or that does not decode: one line naming it.
pub fn read_picture(path: &Path, max_pixels: u64) -> Result<Frame> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    decode_picture(&bytes, max_pixels, path)
}

/// Decodes a picture held in memory (PNG, JPEG, BMP, by its first bytes), the header's size checked against
/// `max_pixels` before any pixel is decoded; `name` names it in errors.
///
/// # Errors
/// Bytes that are not such a picture, over the limit, or that do not decode: one line naming `name`.
pub fn decode_picture(bytes: &[u8], max_pixels: u64, name: &Path) -> Result<Frame> {
    let open = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(io_err(name))
    };
    let reader = open()?;
    if reader.format().is_none() {
        return Err(bad(name, "not a PNG, JPEG or BMP image"));
    }
    let (w, h) = reader.into_dimensions().map_err(|e| {
        bad(
            name,
            format!(
                "unreadable image header: {}",
                dicom::one_line(&e.to_string())
            ),
        )
    })?;
    let n = u64::from(w) * u64::from(h);
    if n > max_pixels {
        return Err(bad(
            name,
            format!("declares {w}×{h} = {n} pixels, over the limit of {max_pixels}"),
        ));
    }
    let mut reader = open()?;
    reader.no_limits();
    let img = reader.decode().map_err(|e| {
        bad(
            name,
            format!("cannot decode: {}", dicom::one_line(&e.to_string())),
        )
    })?;
    Ok(Frame::from_dynamic(&img))
}

/// The records (and frames) of one input file.
fn read_one(
    f: &Found,
    sha: &str,
    side: Option<&SideRow>,
    cfg: &ImageAcquireConfig,
) -> Result<Vec<(ImageRecord, Frame)>> {
    let source = f.path.display().to_string();
    let base = ImageRecord {
        id: safe_id(&f.path, sha),
        source: source.clone(),
        source_sha256: sha.to_string(),
        frames: 1,
        ..ImageRecord::default()
    };
    if f.kind == FileKind::Dicom {
        let obj = dicom::open(&f.path)?;
        let info = dicom::info(&f.path, &obj)?;
        let frames = dicom::frames(&f.path, &obj, &info, cfg.frame_step, cfg.max_pixels)?;
        let multi = info.frames > 1;
        return Ok(frames
            .into_iter()
            .map(|(k, frame)| {
                let rec = ImageRecord {
                    id: if multi {
                        format!("{}-f{k:04}", base.id)
                    } else {
                        base.id.clone()
                    },
                    frame: k,
                    frames: info.frames,
                    modality: info.modality.clone(),
                    labels: side.map(|s| s.labels.clone()).unwrap_or_default(),
                    text: side.map_or_else(|| info.text.clone(), |s| s.text.clone()),
                    patient: pseudonym("p-", &cfg.secret, &info.patient_id),
                    study: pseudonym("s-", &cfg.secret, &info.study_uid),
                    pixel_offset: info.pixel_offset,
                    photometric: info.photometric.clone(),
                    ..base.clone()
                };
                (rec, frame)
            })
            .collect());
    }
    let frame = read_picture(&f.path, cfg.max_pixels)?;
    let folder_label = f.root.as_ref().and_then(|root| {
        let rel = f.path.strip_prefix(root).ok()?;
        let mut comps = rel.components();
        let first = comps.next()?;
        comps
            .next()
            .map(|_| first.as_os_str().to_string_lossy().into_owned())
    });
    let rec = ImageRecord {
        labels: side.map_or_else(|| folder_label.into_iter().collect(), |s| s.labels.clone()),
        text: side.map(|s| s.text.clone()).unwrap_or_default(),
        patient: side
            .map(|s| pseudonym("p-", &cfg.secret, &s.patient))
            .unwrap_or_default(),
        study: side
            .map(|s| pseudonym("s-", &cfg.secret, &s.study))
            .unwrap_or_default(),
        split: side.and_then(|s| s.split.clone()),
        meta: side.map(|s| s.meta.clone()).unwrap_or_default(),
        ..base
    };
    Ok(vec![(rec, frame)])
}

/// Reads every file in parallel, writing its PNGs into `staging`: per file, its hash and records, or why not.
fn read_all(
    usable: &[&Found],
    side: &BTreeMap<PathBuf, SideRow>,
    cfg: &ImageAcquireConfig,
    staging: &Path,
) -> Vec<(String, Result<Vec<ImageRecord>>)> {
    let bar = progress_bar(usable.len());
    let results: Vec<(String, Result<Vec<ImageRecord>>)> = usable
        .par_iter()
        .map(|f| {
            let r = (|| {
                let sha = strata_store::sha256_file(&f.path)?;
                match f.kind {
                    FileKind::Picture | FileKind::Dicom => {}
                    _ => return Err(bad(&f.path, "not a PNG, JPEG, BMP or DICOM file")),
                }
                let got = read_one(f, &sha, side.get(&f.path), cfg)?;
                let mut recs = Vec::with_capacity(got.len());
                for (mut rec, frame) in got {
                    write_image(staging, &mut rec, &frame)?;
                    recs.push(rec);
                }
                Ok((sha, recs))
            })();
            bar.inc(1);
            match r {
                Ok((sha, recs)) => (sha, Ok(recs)),
                Err(e) => (String::new(), Err(e)),
            }
        })
        .collect();
    bar.finish_and_clear();
    results
}

/// What an image acquisition did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AcquireCounts {
    pub files: usize,
    pub images: usize,
    pub dicom_files: usize,
    pub quarantined: usize,
}

/// Reads the inputs (`cfg.inputs`, as [`image_inputs`] found them) into the image dataset `name`, published in
/// the store.
///
/// # Errors
/// When a sidecar is malformed, or on an I/O failure; bad files are quarantined instead.
pub fn acquire_images(
    store: &Store,
    name: &str,
    cfg: &ImageAcquireConfig,
    inputs: &ImageInputs,
    created_by: &str,
) -> Result<(Manifest, AcquireCounts)> {
    let found = &inputs.0;
    let sidecar = cfg.labels.clone().or_else(|| {
        found
            .iter()
            .find(|f| {
                f.kind == FileKind::Sidecar
                    && f.root
                        .as_ref()
                        .is_some_and(|r| f.path.parent() == Some(r.as_path()))
            })
            .map(|f| f.path.clone())
    });
    let side = match &sidecar {
        Some(p) => read_sidecar(p)?,
        None => BTreeMap::new(),
    };
    let staging = store.staging(Kind::Dataset, name)?;
    let mut w = DatasetWriter::new(&staging)?;
    let usable: Vec<&Found> = found
        .iter()
        .filter(|f| Some(&f.path) != sidecar.as_ref() && f.kind != FileKind::Skip)
        .collect();
    let results = read_all(&usable, &side, cfg, &staging);
    let mut counts = AcquireCounts {
        files: usable.len(),
        ..AcquireCounts::default()
    };
    let mut inputs = Vec::new();
    let mut seen = HashSet::new();
    for (f, (sha, r)) in usable.iter().zip(results) {
        match r {
            Ok(recs) => {
                seen.insert(f.path.clone());
                if f.kind == FileKind::Dicom {
                    counts.dicom_files += 1;
                }
                inputs.push(InputRef {
                    kind: Kind::Raw,
                    name: f.path.display().to_string(),
                    sha256: sha,
                });
                counts.images += recs.len();
                for r in recs {
                    w.add(r);
                }
            }
            Err(e) => w.reject(&f.path.display().to_string(), 0, &e.to_string())?,
        }
    }
    if let Some(p) = &sidecar {
        for (img, row) in &side {
            if !seen.contains(img) && !found.iter().any(|f| &f.path == img) {
                w.reject(
                    &p.display().to_string(),
                    row.line,
                    &format!(
                        "{}:{}: names {}, which is not among the inputs",
                        p.display(),
                        row.line,
                        img.display()
                    ),
                )?;
            }
        }
        inputs.push(InputRef {
            kind: Kind::Raw,
            name: p.display().to_string(),
            sha256: strata_store::sha256_file(p)?,
        });
    }
    let (images, quarantined) = w.finish()?;
    counts.images = images;
    counts.quarantined = quarantined;
    let mut manifest = Manifest::new(Kind::Dataset, name, created_by)
        .with_config(inputs, serde_json::json!({"images": cfg}));
    // the same files and settings as the published dataset: it stays as it is (a pipeline run again
    // leaves the steps after it up to date)
    if let Some(existing) = store.up_to_date(Kind::Dataset, name, &manifest.fingerprint) {
        let _ = std::fs::remove_dir_all(&staging);
        return Ok((existing, counts));
    }
    if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(&counts) {
        manifest.counts = m;
    }
    let manifest = store.publish(&staging, manifest)?;
    Ok((manifest, counts))
}

pub(crate) fn progress_bar(n: usize) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(n as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "images [{bar:30}] {pos}/{len}  {per_sec}  [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}
