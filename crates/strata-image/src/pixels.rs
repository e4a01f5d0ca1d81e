//! A decoded frame: 8-bit or 16-bit samples, one (gray) or three (RGB) per pixel, interleaved, row-major.
//! Frames go to PNG losslessly (8-bit gray/RGB, or 16-bit gray for 16-bit sources: never rescaled, never
//! resized here).

// Pixel and sample arithmetic: every float → integer cast is of a value rounded and clamped to the target
// range, and every index cast is bounded by an image size (≤ 2^16 per side).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::path::Path;

use crate::{bad, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Samples {
    U8(Vec<u8>),
    U16(Vec<u16>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    /// 1 (gray) or 3 (RGB).
    pub channels: u8,
    pub samples: Samples,
}

impl Frame {
    #[must_use]
    pub fn gray8(width: u32, height: u32, data: Vec<u8>) -> Self {
        Self {
            width,
            height,
            channels: 1,
            samples: Samples::U8(data),
        }
    }

    #[must_use]
    pub fn bits(&self) -> u8 {
        match self.samples {
            Samples::U8(_) => 8,
            Samples::U16(_) => 16,
        }
    }

    /// The frame as 8-bit luminance (RGB by Rec. 601 weights; 16-bit by its own min..max range), for
    /// hashing, blank checks and thumbnails.
    #[must_use]
    pub fn luma8(&self) -> Vec<u8> {
        let c = usize::from(self.channels);
        match &self.samples {
            Samples::U8(d) if c == 1 => d.clone(),
            Samples::U8(d) => d
                .chunks_exact(c)
                .map(|p| {
                    let y =
                        0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]);
                    y.round().clamp(0.0, 255.0) as u8
                })
                .collect(),
            Samples::U16(d) => {
                let gray: Vec<u16> = if c == 1 {
                    d.clone()
                } else {
                    d.chunks_exact(c).map(|p| p[0]).collect()
                };
                let lo = gray.iter().copied().min().unwrap_or(0);
                let hi = gray.iter().copied().max().unwrap_or(0);
                let span = f32::from(hi.saturating_sub(lo)).max(1.0);
                gray.iter()
                    .map(|&v| (f32::from(v - lo) * 255.0 / span).round() as u8)
                    .collect()
            }
        }
    }

    /// Lowest and highest sample.
    #[must_use]
    pub fn range(&self) -> (u16, u16) {
        match &self.samples {
            Samples::U8(d) => (
                d.iter().copied().min().map_or(0, u16::from),
                d.iter().copied().max().map_or(0, u16::from),
            ),
            Samples::U16(d) => (
                d.iter().copied().min().unwrap_or(0),
                d.iter().copied().max().unwrap_or(0),
            ),
        }
    }

    /// PNG bytes (lossless).
    ///
    /// # Errors
    /// When the encoder fails (it does not on well-formed frames).
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width, self.height);
            enc.set_color(if self.channels == 3 {
                png::ColorType::Rgb
            } else {
                png::ColorType::Grayscale
            });
            enc.set_compression(png::Compression::Fast);
            let bytes: Vec<u8> = match &self.samples {
                Samples::U8(d) => {
                    enc.set_depth(png::BitDepth::Eight);
                    d.clone()
                }
                Samples::U16(d) => {
                    enc.set_depth(png::BitDepth::Sixteen);
                    d.iter().flat_map(|v| v.to_be_bytes()).collect()
                }
            };
            let mut w = enc
                .write_header()
                .map_err(|e| bad("<png>", format!("PNG encoder: {e}")))?;
            w.write_image_data(&bytes)
                .map_err(|e| bad("<png>", format!("PNG encoder: {e}")))?;
        }
        Ok(out)
    }

    /// Reads a PNG written by [`Frame::to_png`] (or any 8/16-bit gray or RGB PNG).
    ///
    /// # Errors
    /// When the file is unreadable or not such a PNG.
    pub fn read_png(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(crate::io_err(path))?;
        let mut dec = png::Decoder::new(std::io::BufReader::new(file));
        dec.set_transformations(png::Transformations::EXPAND);
        let mut r = dec
            .read_info()
            .map_err(|e| bad(path, format!("PNG: {e}")))?;
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r
            .next_frame(&mut buf)
            .map_err(|e| bad(path, format!("PNG: {e}")))?;
        buf.truncate(info.buffer_size());
        let channels: u8 = match info.color_type {
            png::ColorType::Grayscale => 1,
            png::ColorType::Rgb => 3,
            other => {
                return Err(bad(
                    path,
                    format!("PNG colour type {other:?} is not gray or RGB"),
                ))
            }
        };
        let samples = match info.bit_depth {
            png::BitDepth::Sixteen => Samples::U16(
                buf.chunks_exact(2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]))
                    .collect(),
            ),
            _ => Samples::U8(buf),
        };
        Ok(Self {
            width: info.width,
            height: info.height,
            channels,
            samples,
        })
    }

    /// From a decoded `image` picture: gray stays gray (8 or 16 bits), everything else becomes 8-bit RGB
    /// (alpha dropped).
    #[must_use]
    pub fn from_dynamic(img: &image::DynamicImage) -> Self {
        let (width, height) = (img.width(), img.height());
        match img {
            image::DynamicImage::ImageLuma8(g) => Self::gray8(width, height, g.as_raw().clone()),
            image::DynamicImage::ImageLuma16(g) => Self {
                width,
                height,
                channels: 1,
                samples: Samples::U16(g.as_raw().clone()),
            },
            other => Self {
                width,
                height,
                channels: 3,
                samples: Samples::U8(other.to_rgb8().into_raw()),
            },
        }
    }

    /// As an 8-bit `image` picture (16-bit samples scaled by their range), for resizing and drawing.
    #[must_use]
    pub fn to_dynamic8(&self) -> image::DynamicImage {
        match (&self.samples, self.channels) {
            (Samples::U8(d), 3) => image::DynamicImage::ImageRgb8(
                image::RgbImage::from_raw(self.width, self.height, d.clone())
                    .unwrap_or_else(|| image::RgbImage::new(self.width, self.height)),
            ),
            _ => image::DynamicImage::ImageLuma8(
                image::GrayImage::from_raw(self.width, self.height, self.luma8())
                    .unwrap_or_else(|| image::GrayImage::new(self.width, self.height)),
            ),
        }
    }

    /// The input of a vision tower, `[3, size, size]` row-major: RGB (gray repeated in the three channels),
    /// resized to `size` x `size` with Catmull-Rom (the bicubic filter, widened when shrinking as PIL's is),
    /// scaled to [0, 1] and normalised per channel with the tower's `mean` and `std`.
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn tower_pixels(&self, size: u32, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
        let rgb = self.to_dynamic8().to_rgb8();
        let rgb = if rgb.width() == size && rgb.height() == size {
            rgb
        } else {
            image::imageops::resize(&rgb, size, size, image::imageops::FilterType::CatmullRom)
        };
        let plane = (size * size) as usize;
        let mut out = vec![0f32; 3 * plane];
        for (i, px) in rgb.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = (f32::from(px[c]) / 255.0 - mean[c]) / std[c];
            }
        }
        out
    }
}
