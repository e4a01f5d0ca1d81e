//! Contact sheets (`strata show DATASET --png sheet.png`): thumbnails in a grid with each image's id and
//! labels under it, and the small bitmap font that also burns header text into simulated scans.

// Pixel and sample arithmetic: every float → integer cast is of a value rounded and clamped to the target
// range, and every index cast is bounded by an image size (≤ 2^16 per side).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::path::Path;

use image::{imageops, Rgb, RgbImage};

use crate::dataset::{read_records, ImageRecord};
use crate::pixels::Frame;
use crate::Result;

/// A 3 × 5 pixel font: each glyph is five rows of three bits, top row first.
fn glyph(c: char) -> [u8; 5] {
    const G: &[(char, [&str; 5])] = &[
        ('0', ["###", "#.#", "#.#", "#.#", "###"]),
        ('1', [".#.", "##.", ".#.", ".#.", "###"]),
        ('2', ["###", "..#", "###", "#..", "###"]),
        ('3', ["###", "..#", ".##", "..#", "###"]),
        ('4', ["#.#", "#.#", "###", "..#", "..#"]),
        ('5', ["###", "#..", "###", "..#", "###"]),
        ('6', ["###", "#..", "###", "#.#", "###"]),
        ('7', ["###", "..#", ".#.", ".#.", ".#."]),
        ('8', ["###", "#.#", "###", "#.#", "###"]),
        ('9', ["###", "#.#", "###", "..#", "###"]),
        ('A', [".#.", "#.#", "###", "#.#", "#.#"]),
        ('B', ["##.", "#.#", "##.", "#.#", "##."]),
        ('C', [".##", "#..", "#..", "#..", ".##"]),
        ('D', ["##.", "#.#", "#.#", "#.#", "##."]),
        ('E', ["###", "#..", "##.", "#..", "###"]),
        ('F', ["###", "#..", "##.", "#..", "#.."]),
        ('G', [".##", "#..", "#.#", "#.#", ".##"]),
        ('H', ["#.#", "#.#", "###", "#.#", "#.#"]),
        ('I', ["###", ".#.", ".#.", ".#.", "###"]),
        ('J', ["..#", "..#", "..#", "#.#", ".#."]),
        ('K', ["#.#", "#.#", "##.", "#.#", "#.#"]),
        ('L', ["#..", "#..", "#..", "#..", "###"]),
        ('M', ["#.#", "###", "###", "#.#", "#.#"]),
        ('N', ["##.", "#.#", "#.#", "#.#", "#.#"]),
        ('O', [".#.", "#.#", "#.#", "#.#", ".#."]),
        ('P', ["##.", "#.#", "##.", "#..", "#.."]),
        ('Q', [".#.", "#.#", "#.#", "##.", ".##"]),
        ('R', ["##.", "#.#", "##.", "#.#", "#.#"]),
        ('S', [".##", "#..", ".#.", "..#", "##."]),
        ('T', ["###", ".#.", ".#.", ".#.", ".#."]),
        ('U', ["#.#", "#.#", "#.#", "#.#", "###"]),
        ('V', ["#.#", "#.#", "#.#", "#.#", ".#."]),
        ('W', ["#.#", "#.#", "###", "###", "#.#"]),
        ('X', ["#.#", "#.#", ".#.", "#.#", "#.#"]),
        ('Y', ["#.#", "#.#", ".#.", ".#.", ".#."]),
        ('Z', ["###", "..#", ".#.", "#..", "###"]),
        ('-', ["...", "...", "###", "...", "..."]),
        ('/', ["..#", "..#", ".#.", "#..", "#.."]),
        (':', ["...", ".#.", "...", ".#.", "..."]),
        ('.', ["...", "...", "...", "...", ".#."]),
        ('_', ["...", "...", "...", "...", "###"]),
        (',', ["...", "...", "...", ".#.", "#.."]),
        (' ', ["...", "...", "...", "...", "..."]),
    ];
    let c = c.to_ascii_uppercase();
    let rows = G
        .iter()
        .find(|(g, _)| *g == c)
        .map_or(["###", "#.#", "#.#", "#.#", "###"], |(_, r)| *r);
    rows.map(|r| r.bytes().fold(0u8, |b, ch| (b << 1) | u8::from(ch == b'#')))
}

/// Draws `text` with its top-left corner at (x, y), each font pixel `scale` × `scale`, calling `put` for
/// every pixel set. Returns the width drawn.
pub fn draw_text(text: &str, x: u32, y: u32, scale: u32, mut put: impl FnMut(u32, u32)) -> u32 {
    let mut cx = x;
    for c in text.chars() {
        let g = glyph(c);
        for (row, bits) in g.iter().enumerate() {
            for col in 0..3u32 {
                if bits >> (2 - col) & 1 == 1 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            put(cx + col * scale + dx, y + row as u32 * scale + dy);
                        }
                    }
                }
            }
        }
        cx += 4 * scale;
    }
    cx - x
}

/// Draws a contact sheet of the dataset in `dir` (its first `max` images, `cols` per row) into `png`.
/// Returns how many images it holds.
///
/// # Errors
/// When the dataset's records or images cannot be read, or the PNG cannot be written.
pub fn contact_sheet(dir: &Path, png: &Path, max: usize, cols: u32) -> Result<usize> {
    let records = read_records(dir)?;
    let shown: Vec<&ImageRecord> = records.iter().take(max).collect();
    let tile = 128u32;
    let label_h = 22u32;
    let cols = cols
        .max(1)
        .min(u32::try_from(shown.len().max(1)).unwrap_or(1));
    let rows = u32::try_from(shown.len().div_ceil(cols as usize))
        .unwrap_or(1)
        .max(1);
    let (cw, ch) = (tile + 8, tile + label_h + 8);
    let mut sheet = RgbImage::from_pixel(cols * cw + 8, rows * ch + 8, Rgb([24, 24, 28]));
    for (i, rec) in shown.iter().enumerate() {
        let i = u32::try_from(i).unwrap_or(0);
        let (ox, oy) = (8 + (i % cols) * cw, 8 + (i / cols) * ch);
        let frame = Frame::read_png(&dir.join(&rec.file))?;
        let thumb = frame
            .to_dynamic8()
            .resize(tile, tile, imageops::FilterType::Triangle)
            .to_rgb8();
        let (dx, dy) = ((tile - thumb.width()) / 2, (tile - thumb.height()) / 2);
        imageops::overlay(&mut sheet, &thumb, i64::from(ox + dx), i64::from(oy + dy));
        let put = |color: Rgb<u8>| {
            move |s: &mut RgbImage, x: u32, y: u32| {
                if x < s.width() && y < s.height() && x < ox + tile {
                    s.put_pixel(x, y, color);
                }
            }
        };
        let id: String = rec.id.chars().take(31).collect();
        let p = put(Rgb([200, 200, 200]));
        draw_text(&id, ox, oy + tile + 3, 1, |x, y| p(&mut sheet, x, y));
        let labels = if rec.labels.is_empty() {
            "-".to_string()
        } else {
            rec.labels.join(",")
        };
        let labels: String = labels.chars().take(31).collect();
        let p = put(Rgb([255, 210, 90]));
        draw_text(&labels, ox, oy + tile + 11, 1, |x, y| p(&mut sheet, x, y));
    }
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(sheet)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| crate::bad(png, e.to_string()))?;
    strata_store::write_atomic(png, &bytes)?;
    Ok(shown.len())
}
