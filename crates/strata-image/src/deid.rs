//! DICOM de-identification as PS3.15 Annex E defines it: the Basic Application Level Confidentiality Profile
//! with the Retain Longitudinal Temporal Information with Modified Dates and Clean Descriptors options, from
//! the table in [`crate::annex_e`], at every level of nested sequences.
//!
//! - UIDs become `2.25.<128 bits of SHA-256(secret, UID)>`: the same study gets the same new UID in every
//!   file and every run with the same secret, and cannot be traced back without it.
//! - Patient ID and Patient's Name become the patient's keyed pseudonym (the dataset's `patient` field).
//! - Dates move by the patient's offset, the one `--pii surrogate` uses for that patient's notes
//!   ([`strata_deid::patient_shift_days`]), so a report and its images stay aligned.
//! - Kept descriptors (Clean Descriptors) go through the prose de-identifier of the text pipeline.
//! - Private attributes, curves (50xx) and overlays (60xx) are removed.
//! - Burned-in text: everything outside the Sequence of Ultrasound Regions is blanked in every frame (and in
//!   the user's `blank` rectangles); a file saying Burned In Annotation YES with neither is refused. Files
//!   whose pixels change are written uncompressed (Explicit VR Little Endian).
//! - Patient Identity Removed = YES, De-identification Method and its code sequence (113100, 113105,
//!   113107) and Longitudinal Temporal Information Modified = MODIFIED are set.

use std::path::{Path, PathBuf};

use chrono::{Duration, NaiveDate};
use dicom_core::header::Header;
use dicom_core::value::{DataSetSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};
use strata_deid::Deid;

use crate::annex_e::{self, Action};
use crate::dataset::pseudonym;
use crate::{bad, dicom, io_err, ImageError, Result};

/// A rectangle of pixels, inclusive: x0, y0, x1, y1.
pub type Rect = [u32; 4];

/// How files are de-identified.
pub struct DicomDeid {
    /// Keys UIDs, pseudonyms and date offsets; keep it to de-identify later files consistently.
    pub secret: String,
    /// The text de-identifier for kept descriptors (surrogate mode keeps their dates aligned too).
    pub text: Deid,
    /// Rectangles blanked in every frame, besides what lies outside the ultrasound regions.
    pub blank: Vec<Rect>,
    pub max_pixels: u64,
}

/// What de-identifying one file did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileReport {
    pub removed: usize,
    pub replaced: usize,
    pub uids: usize,
    pub dates: usize,
    pub cleaned: usize,
    pub private: usize,
    pub pixels_blanked: u64,
    pub shift_days: i64,
}

/// A new UID for `uid`, keyed by the secret: `2.25.` and 128 bits of SHA-256(secret, uid) as a decimal.
#[must_use]
pub fn new_uid(secret: &str, uid: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"uid\0");
    h.update(secret.as_bytes());
    h.update([0u8]);
    h.update(uid.trim_end_matches(['\0', ' ']).as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    format!("2.25.{}", u128::from_be_bytes(b))
}

struct Ctx<'a> {
    cfg: &'a DicomDeid,
    patient: String,
    key: String,
    shift: i64,
    /// The file's own identifiers (name parts, IDs, accession number), scrubbed from kept text before the
    /// prose de-identifier runs: a descriptor that repeats the patient's name is caught even without a cue.
    known: Vec<String>,
}

/// `text` with the file's known identifiers replaced by the pseudonym and compact dates (`YYYYMMDD`) moved
/// by the patient's offset.
fn scrub_known(text: &str, ctx: &Ctx<'_>) -> String {
    static DATE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let mut out = text.to_string();
    for k in &ctx.known {
        let lower = out.to_lowercase();
        let needle = k.to_lowercase();
        if lower.len() != out.len() {
            out = out.replace(k.as_str(), &ctx.patient);
            continue;
        }
        let mut res = String::with_capacity(out.len());
        let mut at = 0;
        while let Some(i) = lower[at..].find(&needle) {
            let s = at + i;
            let e = s + needle.len();
            let word_start = s == 0
                || !out[..s]
                    .chars()
                    .next_back()
                    .is_some_and(char::is_alphanumeric);
            let word_end =
                e == out.len() || !out[e..].chars().next().is_some_and(char::is_alphanumeric);
            res.push_str(&out[at..s]);
            res.push_str(if word_start && word_end {
                &ctx.patient
            } else {
                &out[s..e]
            });
            at = e;
        }
        res.push_str(&out[at..]);
        out = res;
    }
    let re = DATE.get_or_init(|| {
        regex::Regex::new(r"\b(?:19|20)\d{6}\b").unwrap_or_else(|_| unreachable!())
    });
    re.replace_all(&out, |c: &regex::Captures<'_>| {
        shift_dicom_date(&c[0], ctx.shift, VR::DA)
    })
    .into_owned()
}

/// The identifiers of a file that kept text must not repeat.
fn known_identifiers(obj: &InMemDicomObject) -> Vec<String> {
    let mut known: Vec<String> = Vec::new();
    for tag in [
        tags::PATIENT_NAME,
        tags::PATIENT_BIRTH_NAME,
        tags::PATIENT_MOTHER_BIRTH_NAME,
    ] {
        let v = dicom::text_of(obj, tag);
        known.extend(
            v.split(['^', ' ', '='])
                .map(str::trim)
                .filter(|p| p.chars().filter(|c| c.is_alphabetic()).count() >= 2)
                .map(String::from),
        );
    }
    for tag in [
        tags::PATIENT_ID,
        tags::ACCESSION_NUMBER,
        Tag(0x0010, 0x1000),
    ] {
        let v = dicom::text_of(obj, tag);
        known.extend(
            v.split('\\')
                .map(str::trim)
                .filter(|p| p.len() >= 3)
                .map(String::from),
        );
    }
    known.sort_by_key(|k| std::cmp::Reverse(k.len()));
    known.dedup();
    known
}

impl DicomDeid {
    /// De-identifies one object in memory.
    ///
    /// # Errors
    /// When burned-in text cannot be blanked (no regions and no rectangles), or the pixels cannot be decoded.
    pub fn apply(&self, path: &Path, obj: &mut DefaultDicomObject) -> Result<FileReport> {
        let patient_id = dicom::text_of(obj, tags::PATIENT_ID);
        let ctx = Ctx {
            cfg: self,
            patient: pseudonym(
                "p-",
                &self.secret,
                if patient_id.is_empty() {
                    "unknown"
                } else {
                    &patient_id
                },
            ),
            key: strata_deid::patient_key(&self.secret, &patient_id),
            shift: strata_deid::patient_shift_days(&self.secret, &patient_id),
            known: known_identifiers(obj),
        };
        let mut rep = FileReport {
            shift_days: ctx.shift,
            ..FileReport::default()
        };
        // pixels first: the regions are read before the table touches anything
        rep.pixels_blanked = self.blank_burned_in(path, obj)?;
        clean(obj, &ctx, &mut rep);
        let sop = dicom::text_of(obj, tags::SOP_INSTANCE_UID);
        let put = |o: &mut InMemDicomObject, tag: Tag, vr: VR, v: &str| {
            o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
        };
        put(obj, tags::PATIENT_IDENTITY_REMOVED, VR::CS, "YES");
        put(
            obj,
            tags::DEIDENTIFICATION_METHOD,
            VR::LO,
            "Strata: PS3.15 E.1-1 Basic Profile",
        );
        put(
            obj,
            tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED,
            VR::CS,
            "MODIFIED",
        );
        let codes = [
            ("113100", "Basic Application Confidentiality Profile"),
            ("113105", "Clean Descriptors Option"),
            (
                "113107",
                "Retain Longitudinal Temporal Information Modified Dates Option",
            ),
        ]
        .iter()
        .map(|(code, meaning)| {
            InMemDicomObject::from_element_iter([
                DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from(*code)),
                DataElement::new(
                    tags::CODING_SCHEME_DESIGNATOR,
                    VR::SH,
                    PrimitiveValue::from("DCM"),
                ),
                DataElement::new(tags::CODE_MEANING, VR::LO, PrimitiveValue::from(*meaning)),
            ])
        })
        .collect::<Vec<_>>();
        obj.put(DataElement::new(
            tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
            VR::SQ,
            DataSetSequence::new(codes, Length::UNDEFINED),
        ));
        if !sop.is_empty() {
            obj.meta_mut().media_storage_sop_instance_uid = sop;
            obj.meta_mut().update_information_group_length();
        }
        Ok(rep)
    }

    /// Blanks what lies outside the ultrasound regions (and inside the user's rectangles) in every frame, by
    /// writing zeros over the stored samples row by row. Native pixel data is edited in place; encapsulated
    /// (RLE, JPEG) is decoded first and the file then stored uncompressed. Returns how many pixels were blanked.
    fn blank_burned_in(&self, path: &Path, obj: &mut DefaultDicomObject) -> Result<u64> {
        if obj.get(tags::PIXEL_DATA).is_none() {
            return Ok(0);
        }
        let regions = us_regions(obj);
        let burned = dicom::text_of(obj, tags::BURNED_IN_ANNOTATION).eq_ignore_ascii_case("YES");
        if regions.is_empty() && self.blank.is_empty() {
            if burned {
                return Err(bad(
                    path,
                    "Burned In Annotation is YES and the file declares no Sequence of Ultrasound Regions: give \
                     the rectangles to blank (--blank X0,Y0,X1,Y1)",
                ));
            }
            return Ok(0);
        }
        let info = dicom::info(path, obj)?;
        let (w, h, n) = (
            info.columns as usize,
            info.rows as usize,
            info.frames as usize,
        );
        if u64::from(info.rows) * u64::from(info.columns) * u64::from(info.frames) > self.max_pixels
        {
            return Err(bad(
                path,
                format!("more pixels than the limit of {}", self.max_pixels),
            ));
        }
        let spp = obj
            .get(tags::SAMPLES_PER_PIXEL)
            .and_then(|e| e.to_int::<usize>().ok())
            .unwrap_or(1);
        let sb = obj
            .get(tags::BITS_ALLOCATED)
            .and_then(|e| e.to_int::<usize>().ok())
            .unwrap_or(8)
            .div_ceil(8);
        let (mut bytes, planar, encapsulated) = pixel_bytes(path, obj, spp)?;
        if bytes.len() < w * h * n * spp * sb {
            return Err(bad(
                path,
                format!(
                    "{} bytes of pixel data, {} expected",
                    bytes.len(),
                    w * h * n * spp * sb
                ),
            ));
        }
        let g = Layout {
            w,
            h,
            n,
            spp,
            sb,
            planar,
        };
        let blanked = zero_outside(&mut bytes, &g, &regions, &self.blank);
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        let vr = if sb == 2 { VR::OW } else { VR::OB };
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            vr,
            PrimitiveValue::U8(bytes.into()),
        ));
        obj.put(DataElement::new(
            tags::BURNED_IN_ANNOTATION,
            VR::CS,
            PrimitiveValue::from("NO"),
        ));
        if encapsulated && spp == 3 {
            // decoded: colour is RGB, interleaved
            obj.put(DataElement::new(
                tags::PHOTOMETRIC_INTERPRETATION,
                VR::CS,
                PrimitiveValue::from("RGB"),
            ));
            obj.put(DataElement::new(
                tags::PLANAR_CONFIGURATION,
                VR::US,
                PrimitiveValue::from(0u16),
            ));
        }
        // the samples are now little-endian and uncompressed, whatever the file had
        let meta = obj.meta_mut();
        meta.set_transfer_syntax(
            &dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
        );
        meta.update_information_group_length();
        Ok(blanked)
    }
}

/// The stored samples of every frame: native pixel data as it is (and whether it is planar), encapsulated
/// decoded to interleaved samples. The third value is true for encapsulated data.
fn pixel_bytes(
    path: &Path,
    obj: &mut DefaultDicomObject,
    spp: usize,
) -> Result<(Vec<u8>, bool, bool)> {
    let encapsulated = obj
        .get(tags::PIXEL_DATA)
        .is_some_and(|e| e.value().fragments().is_some());
    if encapsulated {
        use dicom_pixeldata::PixelDecoder;
        let dec = obj.decode_pixel_data().map_err(|e| {
            bad(
                path,
                format!("pixel data: {}", dicom::one_line(&e.to_string())),
            )
        })?;
        return Ok((dec.data().to_vec(), false, true));
    }
    let planar = spp == 3
        && obj
            .get(tags::PLANAR_CONFIGURATION)
            .and_then(|e| e.to_int::<u16>().ok())
            == Some(1);
    // taken, not copied: the element is put back blanked
    let bytes = match obj.take(tags::PIXEL_DATA).map(DataElement::into_value) {
        Some(Value::Primitive(PrimitiveValue::U8(v))) => v.into_vec(),
        Some(Value::Primitive(other)) => other.to_bytes().into_owned(),
        _ => Vec::new(),
    };
    Ok((bytes, planar, false))
}

/// How frames lie in the pixel bytes.
struct Layout {
    w: usize,
    h: usize,
    n: usize,
    spp: usize,
    /// Bytes per sample.
    sb: usize,
    planar: bool,
}

/// Writes zeros over every sample outside all `regions` (when there are any) or inside a `blank` rectangle,
/// in every frame, a row's run at a time. Returns how many pixels were blanked.
fn zero_outside(bytes: &mut [u8], g: &Layout, regions: &[Rect], blank: &[Rect]) -> u64 {
    let mut blanked = 0u64;
    // rows covered by the same rectangles have the same runs: computed once per set
    let mut cache: std::collections::HashMap<(u64, u64), Vec<(usize, usize)>> =
        std::collections::HashMap::new();
    let covers = |rects: &[Rect], y: u32| {
        rects
            .iter()
            .enumerate()
            .filter(|(_, r)| y >= r[1] && y <= r[3])
            .fold(0u64, |m, (i, _)| m | (1 << (i % 64)))
    };
    for y in 0..g.h {
        let yy = u32::try_from(y).unwrap_or(u32::MAX);
        let key = (covers(regions, yy), covers(blank, yy));
        let runs = cache.entry(key).or_insert_with(|| {
            let row: Vec<bool> = (0..g.w)
                .map(|x| {
                    let xx = u32::try_from(x).unwrap_or(u32::MAX);
                    let within = |r: &Rect| xx >= r[0] && xx <= r[2] && yy >= r[1] && yy <= r[3];
                    !(regions.is_empty() || regions.iter().any(within)) || blank.iter().any(within)
                })
                .collect();
            runs(&row)
        });
        for &(x0, x1) in runs.iter() {
            blanked += ((x1 - x0) * g.n) as u64;
            for f in 0..g.n {
                if g.planar {
                    for p in 0..g.spp {
                        let start = (((f * g.spp + p) * g.h + y) * g.w + x0) * g.sb;
                        bytes[start..start + (x1 - x0) * g.sb].fill(0);
                    }
                } else {
                    let start = ((f * g.h + y) * g.w + x0) * g.spp * g.sb;
                    bytes[start..start + (x1 - x0) * g.spp * g.sb].fill(0);
                }
            }
        }
    }
    blanked
}

/// The runs of `true` in `row`, as half-open ranges.
fn runs(row: &[bool]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, &b) in row.iter().enumerate() {
        match (b, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, row.len()));
    }
    out
}

/// The imaging regions a file declares (Sequence of Ultrasound Regions), inclusive pixel rectangles.
fn us_regions(obj: &InMemDicomObject) -> Vec<Rect> {
    let Some(items) = obj
        .get(tags::SEQUENCE_OF_ULTRASOUND_REGIONS)
        .and_then(|e| e.items())
    else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|it| {
            let g = |t| it.get(t).and_then(|e| e.to_int::<u32>().ok());
            Some([
                g(tags::REGION_LOCATION_MIN_X0)?,
                g(tags::REGION_LOCATION_MIN_Y0)?,
                g(tags::REGION_LOCATION_MAX_X1)?,
                g(tags::REGION_LOCATION_MAX_Y1)?,
            ])
        })
        .collect()
}

fn is_removed_group(group: u16) -> bool {
    group % 2 == 1 || (0x5000..=0x50FF).contains(&group) || (0x6000..=0x60FF).contains(&group)
}

fn clean(obj: &mut InMemDicomObject, ctx: &Ctx<'_>, rep: &mut FileReport) {
    let table = annex_e::table();
    let all: Vec<(Tag, VR)> = obj.iter().map(|e| (e.tag(), e.vr())).collect();
    for (tag, vr) in all {
        if is_removed_group(tag.group()) {
            obj.remove_element(tag);
            rep.private += 1;
            continue;
        }
        if tag == tags::PATIENT_ID || tag == tags::PATIENT_NAME {
            let vr = if tag == tags::PATIENT_ID {
                VR::LO
            } else {
                VR::PN
            };
            obj.put(DataElement::new(
                tag,
                vr,
                PrimitiveValue::from(ctx.patient.as_str()),
            ));
            rep.replaced += 1;
            continue;
        }
        let key = (u32::from(tag.group()) << 16) | u32::from(tag.element());
        let action = table.get(&key).map_or(Action::Keep, annex_e::Rule::action);
        // a sequence to replace (D, as Content Sequence) is emptied: its items' text (Text Value, which the
        // table does not list) would otherwise survive; the Clean Structured Content option is not implemented
        let action = if vr == VR::SQ && action == Action::Dummy {
            Action::Empty
        } else {
            action
        };
        match action {
            Action::Remove => {
                obj.remove_element(tag);
                rep.removed += 1;
            }
            Action::Empty => {
                let v = if vr == VR::SQ {
                    Value::from(DataSetSequence::new(
                        Vec::<InMemDicomObject>::new(),
                        Length::UNDEFINED,
                    ))
                } else {
                    Value::Primitive(PrimitiveValue::Empty)
                };
                obj.put(DataElement::new(tag, vr, v));
                rep.replaced += 1;
            }
            Action::Keep if vr == VR::SQ => recurse(obj, tag, ctx, rep),
            Action::Dummy => {
                obj.put(DataElement::new(tag, vr, dummy(vr)));
                rep.replaced += 1;
            }
            Action::Uid => {
                let new: Vec<String> = multi(obj, tag)
                    .iter()
                    .map(|u| new_uid(&ctx.cfg.secret, u))
                    .collect();
                if vr == VR::SQ {
                    recurse(obj, tag, ctx, rep);
                } else {
                    obj.put(DataElement::new(
                        tag,
                        VR::UI,
                        PrimitiveValue::Strs(new.into_iter().collect()),
                    ));
                    rep.uids += 1;
                }
            }
            Action::ShiftDate => {
                let new: Vec<String> = multi(obj, tag)
                    .iter()
                    .map(|d| shift_dicom_date(d, ctx.shift, vr))
                    .collect();
                obj.put(DataElement::new(
                    tag,
                    vr,
                    PrimitiveValue::Strs(new.into_iter().collect()),
                ));
                rep.dates += 1;
            }
            Action::CleanText => {
                let text = dicom::text_of(obj, tag);
                let scrubbed = scrub_known(&text, ctx);
                let (clean, _) = ctx.cfg.text.redact_keyed(&scrubbed, &ctx.key);
                if clean != text {
                    obj.put(DataElement::new(
                        tag,
                        vr,
                        PrimitiveValue::from(clean.as_str()),
                    ));
                }
                rep.cleaned += 1;
            }
            Action::Keep => {}
        }
    }
}

fn recurse(obj: &mut InMemDicomObject, tag: Tag, ctx: &Ctx<'_>, rep: &mut FileReport) {
    let Some(e) = obj.take(tag) else { return };
    let (header, value) = e.into_parts();
    let Some(items) = value.into_items() else {
        return;
    };
    let items: Vec<InMemDicomObject> = items
        .into_iter()
        .map(|mut it| {
            clean(&mut it, ctx, rep);
            it
        })
        .collect();
    obj.put(DataElement::new(
        header.tag,
        VR::SQ,
        DataSetSequence::new(items, Length::UNDEFINED),
    ));
}

fn multi(obj: &InMemDicomObject, tag: Tag) -> Vec<String> {
    obj.get(tag)
        .and_then(|e| {
            e.to_multi_str()
                .ok()
                .map(|v| v.iter().map(|s| s.trim().to_string()).collect())
        })
        .unwrap_or_default()
}

fn dummy(vr: VR) -> PrimitiveValue {
    match vr {
        VR::DA => PrimitiveValue::from("19000101"),
        VR::DT => PrimitiveValue::from("19000101000000"),
        VR::TM => PrimitiveValue::from("000000"),
        VR::AS => PrimitiveValue::from("000Y"),
        VR::IS | VR::DS => PrimitiveValue::from("0"),
        VR::US => PrimitiveValue::from(0u16),
        VR::SS => PrimitiveValue::from(0i16),
        VR::UL => PrimitiveValue::from(0u32),
        VR::SL => PrimitiveValue::from(0i32),
        VR::FL => PrimitiveValue::from(0f32),
        VR::FD => PrimitiveValue::from(0f64),
        VR::OB | VR::OW | VR::UN | VR::OF | VR::OD | VR::OL | VR::OV => {
            PrimitiveValue::U8(vec![0u8, 0].into())
        }
        _ => PrimitiveValue::from("ANONYMIZED"),
    }
}

/// A DA (`YYYYMMDD`, or a range `A-B`) or DT (`YYYYMMDDHHMMSS…`) value moved by `days`; what does not parse
/// becomes the dummy date, never left as it was.
#[must_use]
pub fn shift_dicom_date(value: &str, days: i64, vr: VR) -> String {
    if value.is_empty() {
        return String::new();
    }
    if vr == VR::DA && value.contains('-') {
        return value
            .split('-')
            .map(|p| {
                if p.is_empty() {
                    String::new()
                } else {
                    shift_dicom_date(p, days, vr)
                }
            })
            .collect::<Vec<_>>()
            .join("-");
    }
    let (date, rest) = value.split_at(value.len().min(8));
    match NaiveDate::parse_from_str(date, "%Y%m%d") {
        Ok(d) => format!("{}{rest}", (d + Duration::days(days)).format("%Y%m%d")),
        Err(_) => (if vr == VR::DT {
            "19000101000000"
        } else {
            "19000101"
        })
        .to_string(),
    }
}

/// What `strata deid dicom` did over a folder.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    pub files: usize,
    pub written: usize,
    /// Outputs already there (a rerun), left as they are.
    pub skipped: usize,
    pub quarantined: usize,
    pub removed: usize,
    pub replaced: usize,
    pub uids: usize,
    pub dates: usize,
    pub private: usize,
    pub pixels_blanked: u64,
}

/// De-identifies every DICOM file under `input` (a file or a folder) into `output`, keeping relative paths.
/// A file that cannot be de-identified is listed in `output/quarantine.jsonl` with its reason and not written.
///
/// Files are written in batches: each batch's files go to temporary names, the file system is flushed once
/// (syncfs), then they are renamed into place, so an output file is either complete and on disk or absent.
/// A rerun (after kill -9, say) skips outputs that already exist.
///
/// # Errors
/// When `input` does not exist or `output` cannot be written.
pub fn deid_tree(cfg: &DicomDeid, input: &Path, output: &Path) -> Result<RunReport> {
    const BATCH: usize = 512;
    let files: Vec<PathBuf> = if input.is_file() {
        vec![input.to_path_buf()]
    } else if input.is_dir() {
        strata_records::files_under(input, false)?
            .into_iter()
            .filter(|p| dicom::is_dicom(p))
            .collect()
    } else {
        return Err(bad(input, "no such file or folder"));
    };
    std::fs::create_dir_all(output).map_err(io_err(output))?;
    let rel = |f: &Path| {
        if input.is_file() {
            PathBuf::from(f.file_name().unwrap_or_default())
        } else {
            f.strip_prefix(input).unwrap_or(f).to_path_buf()
        }
    };
    let mut run = RunReport {
        files: files.len(),
        ..RunReport::default()
    };
    let mut quarantine = String::new();
    let bar = crate::acquire::progress_bar(files.len());
    let todo: Vec<&PathBuf> = files
        .iter()
        .filter(|f| {
            let done = output.join(rel(f)).exists();
            run.skipped += usize::from(done);
            !done
        })
        .collect();
    let tmp_name = |out: &Path| out.with_extension(format!("strata-tmp-{}", std::process::id()));
    for batch in todo.chunks(BATCH) {
        let results: Vec<(&PathBuf, Result<FileReport>)> = batch
            .par_iter()
            .map(|f| {
                let r = (|| {
                    let mut obj = dicom::open(f)?;
                    let rep = cfg.apply(f, &mut obj)?;
                    let out = output.join(rel(f));
                    if let Some(p) = out.parent() {
                        std::fs::create_dir_all(p).map_err(io_err(p))?;
                    }
                    let tmp = tmp_name(&out);
                    let file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
                    let mut w = std::io::BufWriter::with_capacity(1 << 16, file);
                    obj.write_all(&mut w).map_err(|e| {
                        bad(
                            f,
                            format!("cannot write: {}", dicom::one_line(&e.to_string())),
                        )
                    })?;
                    std::io::Write::flush(&mut w).map_err(io_err(&tmp))?;
                    Ok(rep)
                })();
                bar.inc(1);
                (*f, r)
            })
            .collect();
        // one flush of the file system for the whole batch, then the renames
        let dir = std::fs::File::open(output).map_err(io_err(output))?;
        rustix::fs::syncfs(&dir).map_err(|e| io_err(output)(e.into()))?;
        for (f, r) in results {
            match r {
                Ok(rep) => {
                    let out = output.join(rel(f));
                    std::fs::rename(tmp_name(&out), &out).map_err(io_err(&out))?;
                    run.written += 1;
                    run.removed += rep.removed;
                    run.replaced += rep.replaced;
                    run.uids += rep.uids;
                    run.dates += rep.dates;
                    run.private += rep.private;
                    run.pixels_blanked += rep.pixels_blanked;
                }
                Err(e) => {
                    let _ = std::fs::remove_file(tmp_name(&output.join(rel(f))));
                    run.quarantined += 1;
                    let line = serde_json::json!({"source": f.display().to_string(), "reason": e.to_string()});
                    quarantine.push_str(&line.to_string());
                    quarantine.push('\n');
                }
            }
        }
    }
    bar.finish_and_clear();
    let dir = std::fs::File::open(output).map_err(io_err(output))?;
    rustix::fs::syncfs(&dir).map_err(|e| io_err(output)(e.into()))?;
    if !quarantine.is_empty() {
        strata_store::write_atomic(output.join("quarantine.jsonl"), quarantine.as_bytes())?;
    }
    Ok(run)
}

impl From<dicom_object::WriteError> for ImageError {
    fn from(e: dicom_object::WriteError) -> Self {
        ImageError::Usage(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_shift_by_hand_worked_offsets_and_ranges_and_garbage_never_survive() {
        assert_eq!(shift_dicom_date("20240209", 30, VR::DA), "20240310"); // 2024 is a leap year
        assert_eq!(shift_dicom_date("20240301", -1, VR::DA), "20240229");
        assert_eq!(
            shift_dicom_date("20231201-20240105", 31, VR::DA),
            "20240101-20240205"
        );
        assert_eq!(
            shift_dicom_date("20240209101500.5+0100", 1, VR::DT),
            "20240210101500.5+0100"
        );
        assert_eq!(shift_dicom_date("2024", 1, VR::DA), "19000101");
    }

    #[test]
    fn uids_are_keyed_stable_and_valid() {
        let a = new_uid("s", "1.2.3.4");
        assert_eq!(a, new_uid("s", "1.2.3.4\0"));
        assert_ne!(a, new_uid("t", "1.2.3.4"));
        assert_ne!(a, new_uid("s", "1.2.3.5"));
        assert!(a.starts_with("2.25.") && a.len() <= 64);
        assert!(a[5..].chars().all(|c| c.is_ascii_digit()) && !a[5..].starts_with('0'));
    }
}
