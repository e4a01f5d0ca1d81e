//! Reading DICOM files with dicom-rs: the attributes an image dataset keeps, and the frames as [`Frame`]s.
//!
//! Pixel data is decoded by `dicom-pixeldata` with its pure-Rust codecs: native (implicit/explicit VR, little
//! and big endian, deflated), RLE Lossless and the JPEG family that `jpeg-decoder` reads (baseline, extended,
//! lossless). Any other transfer syntax (JPEG 2000, JPEG-LS, …) is a one-line error naming it. Samples are
//! the stored values (no modality or VOI LUT), as pydicom's `pixel_array` gives them: 8-bit stays 8-bit,
//! 16-bit stays 16-bit (signed values offset by 32768 and the offset recorded), colour is RGB (JPEG's YCbCr
//! converted, planar configuration 1 interleaved), MONOCHROME1 is kept as stored and named in the record.

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use crate::pixels::{Frame, Samples};
use crate::{bad, Result};

/// What a dataset record keeps of a DICOM file's header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DicomInfo {
    pub patient_id: String,
    pub study_uid: String,
    pub series_uid: String,
    pub sop_uid: String,
    pub modality: String,
    pub photometric: String,
    pub transfer_syntax: String,
    pub rows: u32,
    pub columns: u32,
    pub frames: u32,
    /// 32768 for signed 16-bit pixels (stored + 32768), else 0.
    pub pixel_offset: u32,
    /// Study, series and image descriptions and comments, as one text.
    pub text: String,
}

/// True for `.dcm`/`.dicom` files and for any other file with the DICOM preamble (`DICM` at byte 128), whatever
/// its name.
#[must_use]
pub fn is_dicom(path: &Path) -> bool {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if ext == "dcm" || ext == "dicom" {
        return true;
    }
    // scanners name files IM0001, 1.3.12.2.1107.5.2.…, I0000012.IMA: the preamble tells
    if matches!(
        ext.as_str(),
        "png" | "jpg" | "jpeg" | "bmp" | "txt" | "json" | "jsonl" | "csv" | "pdf"
    ) {
        return false;
    }
    let mut head = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok()
        && &head[128..] == b"DICM"
}

/// Opens a DICOM file (the whole object, pixel data included).
///
/// # Errors
/// A one-line reason naming the file: unreadable, truncated, not DICOM.
pub fn open(path: &Path) -> Result<DefaultDicomObject> {
    OpenFileOptions::new().open_file(path).map_err(|e| {
        bad(
            path,
            format!("not a readable DICOM file: {}", one_line(&e.to_string())),
        )
    })
}

pub(crate) fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

/// A string attribute, trimmed ("" when absent or not a string).
#[must_use]
pub fn text_of(obj: &dicom_object::InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
        .unwrap_or_default()
}

fn int_of(obj: &dicom_object::InMemDicomObject, tag: dicom_core::Tag) -> Option<u32> {
    obj.get(tag).and_then(|e| e.to_int::<u32>().ok())
}

/// The header attributes of a dataset record, and a check that the file's transfer syntax can be decoded.
///
/// # Errors
/// When the file has no pixel data, or its transfer syntax is one no codec here decodes (named).
pub fn info(path: &Path, obj: &DefaultDicomObject) -> Result<DicomInfo> {
    let ts_uid = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    check_transfer_syntax(path, &ts_uid)?;
    if obj.get(tags::PIXEL_DATA).is_none() {
        return Err(bad(path, "no Pixel Data (7FE0,0010): not an image"));
    }
    let text = [
        tags::STUDY_DESCRIPTION,
        tags::SERIES_DESCRIPTION,
        tags::IMAGE_COMMENTS,
    ]
    .iter()
    .map(|&t| text_of(obj, t))
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join("\n");
    let signed = int_of(obj, tags::PIXEL_REPRESENTATION) == Some(1);
    let bits = int_of(obj, tags::BITS_ALLOCATED).unwrap_or(8);
    Ok(DicomInfo {
        patient_id: text_of(obj, tags::PATIENT_ID),
        study_uid: text_of(obj, tags::STUDY_INSTANCE_UID),
        series_uid: text_of(obj, tags::SERIES_INSTANCE_UID),
        sop_uid: text_of(obj, tags::SOP_INSTANCE_UID),
        modality: text_of(obj, tags::MODALITY),
        photometric: text_of(obj, tags::PHOTOMETRIC_INTERPRETATION),
        transfer_syntax: ts_uid,
        rows: int_of(obj, tags::ROWS).unwrap_or(0),
        columns: int_of(obj, tags::COLUMNS).unwrap_or(0),
        frames: int_of(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1),
        pixel_offset: if signed && bits == 16 { 32768 } else { 0 },
        text,
    })
}

/// Errors unless a codec here decodes every frame of `uid`.
///
/// # Errors
/// Naming the transfer syntax (and its UID) when it is unknown or not decodable.
pub fn check_transfer_syntax(path: &Path, uid: &str) -> Result<()> {
    match TransferSyntaxRegistry.get(uid) {
        Some(ts) if ts.can_decode_all() => Ok(()),
        Some(ts) => Err(bad(
            path,
            format!(
                "transfer syntax {} ({uid}) is not supported (native, deflated, RLE Lossless and JPEG \
                 baseline/extended/lossless are)",
                ts.name()
            ),
        )),
        None => Err(bad(path, format!("unknown transfer syntax {uid:?}"))),
    }
}

/// Decodes the frames `0, step, 2·step, …` (every frame when `step` is 1). `max_pixels` bounds
/// rows × columns × frames before anything is decoded (a decompression bomb is refused, not allocated).
///
/// # Errors
/// A one-line reason naming the file: too many pixels, undecodable pixel data, unsupported sample layout.
pub fn frames(
    path: &Path,
    obj: &DefaultDicomObject,
    info: &DicomInfo,
    step: u32,
    max_pixels: u64,
) -> Result<Vec<(u32, Frame)>> {
    let total = u64::from(info.rows) * u64::from(info.columns) * u64::from(info.frames);
    if total > max_pixels {
        return Err(bad(
            path,
            format!(
                "declares {}×{}×{} frames = {total} pixels, over the limit of {max_pixels}",
                info.columns, info.rows, info.frames
            ),
        ));
    }
    let dec = obj
        .decode_pixel_data()
        .map_err(|e| bad(path, format!("pixel data: {}", one_line(&e.to_string()))))?;
    let spp = dec.samples_per_pixel();
    let bits = dec.bits_allocated();
    if !(spp == 1 || spp == 3) || !(bits == 8 || bits == 16) {
        return Err(bad(
            path,
            format!("{spp} samples of {bits} bits per pixel: only 1 or 3 samples of 8 or 16 bits are read"),
        ));
    }
    let (w, h) = (dec.columns(), dec.rows());
    let planar =
        spp == 3 && dec.planar_configuration() == dicom_pixeldata::PlanarConfiguration::PixelFirst;
    let signed = dec.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed;
    let mut out = Vec::new();
    let n = dec.number_of_frames().max(1);
    let mut k = 0;
    while k < n {
        let raw = dec
            .frame_data(k)
            .map_err(|e| bad(path, format!("frame {k}: {}", one_line(&e.to_string()))))?;
        let samples = (w as usize) * (h as usize) * usize::from(spp);
        let need = samples * usize::from(bits / 8);
        if raw.len() < need {
            return Err(bad(
                path,
                format!(
                    "frame {k}: {} bytes of pixel data, {need} expected (truncated?)",
                    raw.len()
                ),
            ));
        }
        let raw = &raw[..need];
        let data = if bits == 8 {
            Samples::U8(if planar {
                interleave(raw, samples / 3)
            } else {
                raw.to_vec()
            })
        } else {
            let v: Vec<u16> = raw
                .chunks_exact(2)
                .map(|b| {
                    let x = u16::from_le_bytes([b[0], b[1]]);
                    if signed {
                        x ^ 0x8000
                    } else {
                        x
                    }
                })
                .collect();
            Samples::U16(if planar {
                interleave(&v, samples / 3)
            } else {
                v
            })
        };
        out.push((
            k,
            Frame {
                width: w,
                height: h,
                channels: u8::try_from(spp).unwrap_or(1),
                samples: data,
            },
        ));
        k += step.max(1);
    }
    Ok(out)
}

/// RRR…GGG…BBB… → RGBRGB…
fn interleave<T: Copy>(planes: &[T], n: usize) -> Vec<T> {
    (0..n)
        .flat_map(|i| [planes[i], planes[n + i], planes[2 * n + i]])
        .collect()
}
