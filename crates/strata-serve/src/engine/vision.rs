//! The eyes of a vision-language (LLaVA) model on the server: its tower and projector (candle, f32), the
//! image size and normalisation it was trained with, and a cache of projected features by the SHA-256 of
//! the image's bytes (a conversation sends the same image with every turn). The decoder runs on the engine
//! like any text model; the rows computed here stand in for the embeddings of the image tokens.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{Device, Tensor};
use strata_model::llava::{LlavaConfig, Projector};
use strata_model::{VisionConfig, VisionEncoder};

use crate::{Result, ServeError};

/// Images whose features are kept.
const CACHED: usize = 64;

/// An image's features and when they were last used.
type Cached = (u64, Arc<Vec<f32>>);

/// A LLaVA model's tower and projector.
pub struct Vision {
    pub cfg: LlavaConfig,
    tower: VisionEncoder,
    projector: Projector,
    /// Side, in pixels, the model reads images at.
    pub size: u32,
    norm: ([f32; 3], [f32; 3]),
    /// Features by image hash, with the time each was last used.
    cache: Mutex<(u64, HashMap<String, Cached>)>,
}

/// The tower's normalisation: `preprocessor_config.json`'s image_mean and image_std, else its family's.
#[must_use]
pub fn tower_norm(dir: &Path, cfg: &VisionConfig) -> ([f32; 3], [f32; 3]) {
    let family = match cfg.family {
        strata_model::vision::Family::Dinov2 => ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        strata_model::vision::Family::Clip => (
            [0.481_454_66, 0.457_827_5, 0.408_210_73],
            [0.268_629_54, 0.261_302_6, 0.275_777_1],
        ),
        strata_model::vision::Family::Siglip => ([0.5; 3], [0.5; 3]),
    };
    let Ok(text) = std::fs::read_to_string(dir.join("preprocessor_config.json")) else {
        return family;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let three = |k: &str| -> Option<[f32; 3]> {
        let a = v.get(k)?.as_array()?;
        #[allow(clippy::cast_possible_truncation)]
        let f = |i: usize| {
            a.get(i)
                .and_then(serde_json::Value::as_f64)
                .map(|x| x as f32)
        };
        Some([f(0)?, f(1)?, f(2)?])
    };
    (
        three("image_mean").unwrap_or(family.0),
        three("image_std").unwrap_or(family.1),
    )
}

/// The image side a LLaVA model was trained at (its `preprocessor_config.json`).
///
/// # Errors
/// When the file is missing or has no size.
pub fn processor_size(dir: &Path) -> Result<u32> {
    let p = dir.join("preprocessor_config.json");
    let bad = |reason: String| {
        ServeError::Model(strata_model::ModelError::Config {
            path: p.clone(),
            reason,
        })
    };
    let bytes = std::fs::read(&p).map_err(|e| bad(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    v["size"]["height"]
        .as_u64()
        .or_else(|| v["size"]["shortest_edge"].as_u64())
        .and_then(|s| u32::try_from(s).ok())
        .ok_or_else(|| bad("no size.height".into()))
}

impl Vision {
    /// The tower and projector of the LLaVA folder `dir` from its split tensors.
    ///
    /// # Errors
    /// A tensor missing or of the wrong shape, or no preprocessor config.
    pub fn new(
        dir: &Path,
        cfg: LlavaConfig,
        tower: &HashMap<String, Tensor>,
        projector: &HashMap<String, Tensor>,
    ) -> Result<Self> {
        Ok(Self {
            tower: VisionEncoder::from_weights(cfg.vision.clone(), tower, dir)?,
            projector: Projector::from_tensors(&cfg, projector)?,
            size: processor_size(dir)?,
            norm: tower_norm(dir, &cfg.vision),
            cfg,
            cache: Mutex::new((0, HashMap::new())),
        })
    }

    /// The projected features of one picture: `image_seq_length` rows of the decoder's width, flattened.
    ///
    /// # Errors
    /// On a tensor failure.
    pub fn encode(&self, frame: &strata_image::pixels::Frame) -> Result<Vec<f32>> {
        use strata_model::Context as _;
        let s = self.size as usize;
        let px = Tensor::from_vec(
            frame.tower_pixels(self.size, self.norm.0, self.norm.1),
            (1, 3, s, s),
            &Device::Cpu,
        )
        .ctx("image pixels")?;
        let out = self.tower.forward(&px)?;
        let f = self.projector.forward(&self.cfg.select(&out)?)?;
        Ok(f.flatten_all()
            .and_then(|t| t.to_vec1())
            .ctx("image features")?)
    }

    /// The features of an image given as bytes (PNG, JPEG, BMP), from the cache when the same bytes came
    /// before; and whether they did.
    ///
    /// # Errors
    /// Bytes that are not such an image or declare more than `max_pixels` (`ServeError::Image`), or a tensor
    /// failure.
    pub fn encode_bytes(&self, bytes: &[u8], max_pixels: u64) -> Result<(Arc<Vec<f32>>, bool)> {
        use sha2::Digest;
        let key = hex::encode(sha2::Sha256::digest(bytes));
        {
            let mut c = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            c.0 += 1;
            let now = c.0;
            if let Some(e) = c.1.get_mut(&key) {
                e.0 = now;
                return Ok((Arc::clone(&e.1), true));
            }
        }
        let frame = strata_image::acquire::decode_picture(bytes, max_pixels, Path::new("image"))
            .map_err(|e| ServeError::Image(e.to_string()))?;
        let rows = Arc::new(self.encode(&frame)?);
        let mut c = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if c.1.len() >= CACHED {
            if let Some(old) = c.1.iter().min_by_key(|(_, v)| v.0).map(|(k, _)| k.clone()) {
                c.1.remove(&old);
            }
        }
        let now = c.0;
        c.1.insert(key, (now, Arc::clone(&rows)));
        Ok((rows, false))
    }
}
