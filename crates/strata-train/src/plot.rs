//! The loss curve as a PNG: training loss (blue line) and validation loss (red dots) against step, with
//! numbered axes. Text is drawn with a small built-in 5×7 pixel font, because plotters' text needs system
//! font libraries that a fresh machine may not have.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::metrics::read;
use crate::{io_err, Result};

/// 5×7 glyphs, one string of 7 rows × 5 columns per character ('#' = on).
fn glyph(c: char) -> Option<&'static str> {
    Some(match c {
        '0' => " ### #   ##  ### # ###  ##   # ### ",
        '1' => "  #   ##    #    #    #    #   ### ",
        '2' => " ### #   #    #   #   #   #   #####",
        '3' => "#####   #   #     #     ##   # ### ",
        '4' => "   #   ##  # # #  # #####   #    # ",
        '5' => "######    ####     #    ##   # ### ",
        '6' => "  ##  #   #    #### #   ##   # ### ",
        '7' => "#####    #   #   #   #    #    #   ",
        '8' => " ### #   ##   # ### #   ##   # ### ",
        '9' => " ### #   ##   # ####    #   #  ##  ",
        '.' => "                          ##   ##  ",
        '-' => "               #####               ",
        'e' => "           ### #   #######     ### ",
        'a' => "           ###     # #####   # ####",
        'i' => "  #        ##    #    #    #   ### ",
        'l' => " ##    #    #    #    #    #   ### ",
        'n' => "          # ## ##  ##   ##   ##   #",
        'o' => "           ### #   ##   ##   # ### ",
        'p' => "          #### #   ##### #    #    ",
        'r' => "          # ## ##  ##    #    #    ",
        's' => "           #####     ###     ##### ",
        't' => " #    #   ###   #    #    #  #  ## ",
        'v' => "          #   ##   ##   # # #   #  ",
        'b' => "#    #    # ## ##  ##   ##   ##### ",
        'c' => "           ### #    #    #   # ### ",
        'd' => "    #    # ## ##  ###   ##   # ####",
        'f' => "  ##  #  # #   ###   #    #    #   ",
        'g' => "      #####   ##   # ####    # ### ",
        'h' => "#    #    # ## ##  ##   ##   ##   #",
        'j' => "   #        ##    #    # #  #  ##  ",
        'k' => "#    #    #  # # #  ##   # #  #  # ",
        'm' => "          ## # # # ## # ##   ##   #",
        'q' => "           ## ##  ## ####    #    #",
        'u' => "          #   ##   ##   ##  ## ## #",
        'w' => "          #   ##   ## # ## # # # # ",
        'x' => "          #   # # #   #   # # #   #",
        'y' => "          #   ##   # ####    # ### ",
        'z' => "          #####   #   #   #   #####",
        ':' => "      ##   ##        ##   ##       ",
        '_' => "                              #####",
        '%' => "##   ##  #   #   #   #   #  ##   ##",
        '+' => "       #    #  #####  #    #       ",
        '/' => "         #   #   #   #   #         ",
        '[' => " ###  #    #    #    #    #    ### ",
        ']' => " ###    #    #    #    #    #  ### ",
        '(' => "   #   #   #    #    #     #     # ",
        ')' => " #     #     #    #    #   #   #   ",
        ',' => "                     ##    #   #   ",
        '=' => "          #####     #####          ",
        ' ' => "                                   ",
        _ => return None,
    })
}

const SCALE: i32 = 2;
const ADVANCE: i32 = 6 * SCALE;

fn text_width(s: &str) -> i32 {
    i32::try_from(s.chars().count()).unwrap_or(0) * ADVANCE
}

/// Draws `s` with its top-left corner at `(x, y)`.
fn draw_text<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    s: &str,
    (x, y): (i32, i32),
    color: RGBColor,
) {
    for (k, c) in s.chars().enumerate() {
        let Some(g) = glyph(c.to_ascii_lowercase()) else {
            continue;
        };
        let x0 = x + i32::try_from(k).unwrap_or(0) * ADVANCE;
        for (i, cell) in g.bytes().enumerate() {
            if cell == b'#' {
                let i = i32::try_from(i).unwrap_or(0);
                let (px, py) = (x0 + (i % 5) * SCALE, y + (i / 5) * SCALE);
                let _ = area.draw(&Rectangle::new(
                    [(px, py), (px + SCALE, py + SCALE)],
                    color.filled(),
                ));
            }
        }
    }
}

/// A short label for a tick value.
fn label(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Draws the loss curve of a metrics file into `out` (atomically).
///
/// # Errors
/// When the PNG cannot be written.
pub fn plot_loss(metrics: &Path, out: &Path) -> Result<()> {
    let rows = read(metrics);
    if rows.is_empty() {
        return Ok(());
    }
    let max_step = rows.iter().map(|m| m.step).max().unwrap_or(1).max(1) as f64;
    let losses = rows
        .iter()
        .map(|m| m.loss)
        .chain(rows.iter().filter_map(|m| m.val_loss));
    let (lo, hi) = losses.fold((f32::MAX, f32::MIN), |(lo, hi), l| (lo.min(l), hi.max(l)));
    let pad = (f64::from(hi - lo) * 0.05).max(1e-3);
    let (lo, hi) = (f64::from(lo) - pad, f64::from(hi) + pad);
    let tmp = out.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (800, 500)).into_drawing_area();
        let draw_err =
            |e: &dyn std::fmt::Display| io_err(&tmp)(std::io::Error::other(e.to_string()));
        root.fill(&WHITE).map_err(|e| draw_err(&e))?;
        let area = root.margin(30, 40, 80, 30);
        let mut chart = ChartBuilder::on(&area)
            .build_cartesian_2d(0f64..max_step, lo..hi)
            .map_err(|e| draw_err(&e))?;
        let grey = RGBColor(225, 225, 225);
        for k in 0..=4 {
            let y = lo + (hi - lo) * f64::from(k) / 4.0;
            let x = max_step * f64::from(k) / 4.0;
            chart
                .draw_series(LineSeries::new([(0.0, y), (max_step, y)], grey))
                .map_err(|e| draw_err(&e))?;
            let (px, py) = chart.backend_coord(&(0.0, y));
            let l = label(y);
            draw_text(&root, &l, (px - text_width(&l) - 8, py - 7), BLACK);
            let (px, py) = chart.backend_coord(&(x, lo));
            let l = label(x.round());
            draw_text(&root, &l, (px - text_width(&l) / 2, py + 8), BLACK);
        }
        chart
            .draw_series(LineSeries::new([(0.0, lo), (max_step, lo)], BLACK))
            .map_err(|e| draw_err(&e))?;
        chart
            .draw_series(LineSeries::new([(0.0, lo), (0.0, hi)], BLACK))
            .map_err(|e| draw_err(&e))?;
        chart
            .draw_series(LineSeries::new(
                rows.iter().map(|m| (m.step as f64, f64::from(m.loss))),
                BLUE.stroke_width(2),
            ))
            .map_err(|e| draw_err(&e))?;
        chart
            .draw_series(rows.iter().filter_map(|m| {
                m.val_loss
                    .map(|v| Circle::new((m.step as f64, f64::from(v)), 4, RED.filled()))
            }))
            .map_err(|e| draw_err(&e))?;
        // axis titles and legend
        draw_text(&root, "loss", (8, 8), BLACK);
        draw_text(
            &root,
            "step",
            (800 - 30 - text_width("step"), 500 - 18),
            BLACK,
        );
        root.draw(&Rectangle::new([(600, 14), (630, 17)], BLUE.filled()))
            .map_err(|e| draw_err(&e))?;
        draw_text(&root, "train", (638, 9), BLACK);
        root.draw(&Circle::new((716, 15), 4, RED.filled()))
            .map_err(|e| draw_err(&e))?;
        draw_text(&root, "val", (726, 9), BLACK);
        root.present().map_err(|e| draw_err(&e))?;
    }
    std::fs::rename(&tmp, out).map_err(io_err(out))?;
    Ok(())
}

/// A panel's title and its value at each step (None where the step was not evaluated), with the value's
/// interval when it has one.
pub type Series = (String, Vec<Option<(f64, Option<(f64, f64)>)>>);

/// One panel per series (its label on top), the steps 0..n along x (named in a legend below), each value a
/// dot joined to the next, with its interval as a vertical bar when it has one. Used by `strata report`.
///
/// # Errors
/// When the PNG cannot be written.
pub fn plot_panels(series: &[Series], steps: &[String], out: &Path) -> Result<()> {
    const W: u32 = 800;
    const PANEL: u32 = 190;
    let legend = 20 * u32::try_from(steps.len()).unwrap_or(0) + 20;
    let h = PANEL * u32::try_from(series.len().max(1)).unwrap_or(1) + legend;
    let n = steps.len().max(2) - 1;
    let tmp = out.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (W, h)).into_drawing_area();
        let draw_err =
            |e: &dyn std::fmt::Display| io_err(&tmp)(std::io::Error::other(e.to_string()));
        root.fill(&WHITE).map_err(|e| draw_err(&e))?;
        for (k, (title, vals)) in series.iter().enumerate() {
            let top = i32::try_from(k).unwrap_or(0) * i32::try_from(PANEL).unwrap_or(0);
            let area = root.clone().shrink((0, top), (W, PANEL));
            let (lo, hi) = vals
                .iter()
                .flatten()
                .flat_map(|(v, ci)| {
                    let (a, b) = ci.unwrap_or((*v, *v));
                    [a, b, *v]
                })
                .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
            if lo > hi {
                continue;
            }
            let pad = ((hi - lo) * 0.1).max(1e-3 * hi.abs().max(1e-3));
            let (lo, hi) = (lo - pad, hi + pad);
            let x_max = n as f64 + 0.5;
            let mut chart = ChartBuilder::on(&area.margin(28, 20, 80, 30))
                .build_cartesian_2d(-0.5f64..x_max, lo..hi)
                .map_err(|e| draw_err(&e))?;
            let grey = RGBColor(225, 225, 225);
            for t in 0..=2 {
                let y = lo + (hi - lo) * f64::from(t) / 2.0;
                chart
                    .draw_series(LineSeries::new([(-0.5, y), (x_max, y)], grey))
                    .map_err(|e| draw_err(&e))?;
                let (px, py) = chart.backend_coord(&(-0.5, y));
                let l = label(y);
                draw_text(&root, &l, (px - text_width(&l) - 8, py - 7), BLACK);
            }
            let pts: Vec<(f64, f64)> = vals
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|(y, _)| (i as f64, y)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), BLUE.stroke_width(2)))
                .map_err(|e| draw_err(&e))?;
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 5, BLUE.filled())))
                .map_err(|e| draw_err(&e))?;
            for (i, v) in vals.iter().enumerate() {
                if let Some((_, Some((a, b)))) = v {
                    chart
                        .draw_series(LineSeries::new(
                            [(i as f64, *a), (i as f64, *b)],
                            RED.stroke_width(2),
                        ))
                        .map_err(|e| draw_err(&e))?;
                }
                let (px, py) = chart.backend_coord(&(i as f64, lo));
                let l = format!("{i}");
                draw_text(&root, &l, (px - text_width(&l) / 2, py + 6), BLACK);
            }
            draw_text(&area, title, (8, 6), BLACK);
        }
        let base = i32::try_from(PANEL).unwrap_or(0) * i32::try_from(series.len()).unwrap_or(0);
        for (i, name) in steps.iter().enumerate() {
            let y = base + 6 + 20 * i32::try_from(i).unwrap_or(0);
            draw_text(&root, &format!("{i} = {name}"), (20, y), BLACK);
        }
        root.present().map_err(|e| draw_err(&e))?;
    }
    std::fs::rename(&tmp, out).map_err(io_err(out))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_glyph_is_5_by_7_and_labels_are_short() {
        for c in "0123456789.-abcdefghijklmnopqrstuvwxyz:_%+/[](),= ".chars() {
            assert_eq!(glyph(c).unwrap().len(), 35, "{c}");
        }
        assert_eq!(glyph('1').unwrap().matches('#').count(), 10); // hand count: 1+2+1+1+1+1+3
        assert_eq!(label(5.0), "5");
        assert_eq!(label(4.256), "4.26");
        assert_eq!(label(1234.5), "1234");
    }
}
