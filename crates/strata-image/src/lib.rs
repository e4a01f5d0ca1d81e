//! Images in the lifecycle: the image dataset (PNG files plus a records file, with lineage like every
//! artifact), the readers behind `strata acquire` for folders of PNG/JPEG/BMP and for DICOM (single- and
//! multi-frame, native, RLE and JPEG baseline, through dicom-rs), DICOM de-identification as PS3.15 Annex E
//! defines it (`strata deid dicom`), the image stages of `strata preprocess` (decode check, pixel limit, blank
//! frames, perceptual-hash dedup, leakage between splits, split by patient, resize), a B-mode ultrasound
//! simulator (`strata domain ultrasound-images`) and contact sheets (`strata show --png`).
//!
//! Layers: `pixels` (decoded frames) ← `dicom` (reading) ← `dataset` (the artifact) ← `acquire`, `stages`;
//! `annex_e` (the action table as data) ← `deid`; `sim` writes PNG and DICOM that the readers read back.

pub mod acquire;
pub mod annex_e;
pub mod dataset;
pub mod deid;
pub mod dicom;
pub mod phash;
pub mod pixels;
pub mod sheet;
pub mod sim;
pub mod stages;

/// Everything that can go wrong with images; each message names the file (and the field) involved.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that is not what it claims, or that this reader does not take; one line, naming the file.
    #[error("{path}: {reason}")]
    Bad {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error(transparent)]
    Records(#[from] strata_records::RecordsError),
    #[error(transparent)]
    Store(#[from] strata_store::StoreError),
    #[error(transparent)]
    Deid(#[from] strata_deid::DeidError),
    #[error("{0}")]
    Usage(String),
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

pub(crate) fn io_err(
    path: impl Into<std::path::PathBuf>,
) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.into();
    move |source| ImageError::Io { path, source }
}

pub(crate) fn bad(path: impl Into<std::path::PathBuf>, reason: impl Into<String>) -> ImageError {
    ImageError::Bad {
        path: path.into(),
        reason: reason.into(),
    }
}
