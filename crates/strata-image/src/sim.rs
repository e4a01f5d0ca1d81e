//! A B-mode ultrasound simulator (`strata domain ultrasound-images`): images formed the way a scanner forms
//! them, seeded, with no download.
//!
//! Tissue is a map of echogenicity (backscatter strength) and attenuation (dB/cm/MHz) over the field of view,
//! in millimetres: skin, fat, and the organ (liver, gallbladder, kidney, thyroid, breast) with its finding.
//! Along each beam line, complex Gaussian scatterers weighted by √echogenicity are convolved with the pulse
//! (axial Gaussian) and the beam (lateral Gaussian, narrowest at the focal zone), which gives the complex
//! baseband echo; its magnitude is the envelope: fully developed speckle, Rayleigh distributed (SNR 1.91) in a
//! uniform region. The round-trip attenuation accumulated along the beam is applied, then time-gain
//! compensation for soft tissue (0.5 dB/cm/MHz), so fluid (low attenuation) brightens what lies behind it
//! and a stone (high attenuation) shadows it. The envelope is log-compressed over a 60 dB dynamic range and
//! scan-converted: linear probes give a rectangle, curved (sector) probes a fan.
//!
//! Every image carries its ground truth (organ, finding, size and depth in mm) and a report written from
//! it. [`write_dicom`] stores an image as ultrasound DICOM with invented patient data in the tags, in a
//! private tag and a nested sequence, and burned into a header band, as scanners do.

// Pixel and sample arithmetic: every float → integer cast is of a value rounded and clamped to the target
// range, and every index cast is bounded by an image size (≤ 2^16 per side).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::pixels::Frame;

pub const ORGANS: [&str; 5] = ["liver", "gallbladder", "kidney", "thyroid", "breast"];

/// The findings each organ can show ("normal" for all).
#[must_use]
pub fn findings_of(organ: &str) -> &'static [&'static str] {
    match organ {
        "liver" => &[
            "normal",
            "cyst",
            "hyperechoic_lesion",
            "solid_mass",
            "steatosis",
        ],
        "gallbladder" => &["normal", "gallstone"],
        "kidney" => &["normal", "cyst", "stone", "hydronephrosis"],
        "thyroid" | "breast" => &["normal", "cyst", "solid_mass"],
        _ => &["normal"],
    }
}

/// What to simulate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Scene {
    pub organ: String,
    pub finding: String,
    /// Size of the finding (diameter), mm; 0 for normal and diffuse findings.
    pub size_mm: f64,
    /// Depth of the finding's centre, mm.
    pub depth_mm: f64,
    /// Lateral position of the finding's centre, mm from the image axis.
    pub lateral_mm: f64,
    /// Field of view: depth and (linear) width, mm.
    pub fov_depth_mm: f64,
    pub fov_width_mm: f64,
    /// "linear" or "sector".
    pub geometry: String,
    pub focus_mm: f64,
    pub freq_mhz: f64,
    /// Seed of the scatterers.
    pub seed: u64,
    /// Organ motion (mm, axial), for the frames of a cine loop.
    #[serde(default)]
    pub motion_mm: f64,
}

impl Scene {
    /// A random scene for `organ` (finding chosen among its own, size and depth in their clinical ranges).
    #[must_use]
    pub fn random(organ: &str, rng: &mut StdRng) -> Self {
        let findings = findings_of(organ);
        let finding = findings[rng.random_range(0..findings.len())].to_string();
        Self::with_finding(organ, &finding, rng)
    }

    /// A scene of `organ` with `finding`.
    #[must_use]
    pub fn with_finding(organ: &str, finding: &str, rng: &mut StdRng) -> Self {
        let (depth, width, geometry, freq) = match organ {
            "thyroid" => (40.0, 45.0, "linear", 10.0),
            "breast" => (45.0, 45.0, "linear", 10.0),
            "kidney" => (140.0, 0.0, "sector", 3.5),
            "gallbladder" => (120.0, 0.0, "sector", 3.5),
            _ => (160.0, 0.0, "sector", 3.5),
        };
        let (lo, hi) = match finding {
            "cyst" if organ == "thyroid" || organ == "breast" => (5.0, 15.0),
            "cyst" => (10.0, 30.0),
            "gallstone" => (6.0, 18.0),
            "stone" => (5.0, 12.0),
            "solid_mass" if organ == "thyroid" || organ == "breast" => (6.0, 18.0),
            "solid_mass" => (15.0, 35.0),
            "hyperechoic_lesion" => (8.0, 20.0),
            "hydronephrosis" => (15.0, 30.0),
            _ => (0.0, 0.0),
        };
        let size = if hi > 0.0 {
            (rng.random_range(lo..hi) * 10.0_f64).round() / 10.0
        } else {
            0.0
        };
        let (dlo, dhi) = match organ {
            "thyroid" | "breast" => (14.0, 28.0),
            "gallbladder" => (55.0, 75.0),
            "kidney" => (65.0, 85.0),
            _ => (55.0, 100.0),
        };
        let depth_mm = (rng.random_range(dlo..dhi) * 10.0_f64).round() / 10.0;
        let lateral = if geometry == "linear" {
            rng.random_range(-8.0..8.0)
        } else {
            rng.random_range(-12.0..12.0)
        };
        Self {
            organ: organ.to_string(),
            finding: finding.to_string(),
            size_mm: size,
            depth_mm,
            lateral_mm: (lateral * 10.0_f64).round() / 10.0,
            fov_depth_mm: depth,
            fov_width_mm: width,
            geometry: geometry.to_string(),
            focus_mm: depth_mm,
            freq_mhz: freq,
            seed: rng.random(),
            motion_mm: 0.0,
        }
    }
}

/// One simulated image: the picture, the envelope on the beam grid (lines × samples, after attenuation and
/// TGC, before log compression), and the scene.
pub struct Simulated {
    pub frame: Frame,
    pub envelope: Vec<f64>,
    pub lines: usize,
    pub samples: usize,
    pub scene: Scene,
}

/// Echogenicity and attenuation (dB/cm/MHz) at (x lateral, z depth), mm.
#[allow(clippy::too_many_lines)] // one table of tissues, organ by organ
fn tissue(s: &Scene, x: f64, z: f64) -> (f64, f64) {
    const SOFT: f64 = 0.5;
    let z = z - s.motion_mm;
    if z < 1.0 {
        return (0.02, 0.0); // coupling gel
    }
    if z < 2.0 {
        return (4.0, SOFT); // skin
    }
    let fat_depth = if s.geometry == "linear" { 6.0 } else { 14.0 };
    let (mut e, mut a) = if z < fat_depth {
        (0.45 + 0.25 * (x * 0.7).sin().abs(), 0.6)
    } else if z < fat_depth + 1.0 {
        (3.0, SOFT) // fascia
    } else {
        (1.0, SOFT)
    };
    let in_ellipse =
        |cx: f64, cz: f64, rx: f64, rz: f64| ((x - cx) / rx).powi(2) + ((z - cz) / rz).powi(2);
    match s.organ.as_str() {
        "liver" | "gallbladder" if z > fat_depth + 1.0 => {
            if s.finding == "steatosis" {
                e = 1.9;
                a = 0.68;
            }
            // hepatic vessels: small anechoic tubes
            for (vx, vz, r) in [(-25.0, 0.45, 3.5), (18.0, 0.62, 2.5), (30.0, 0.35, 2.0)] {
                if in_ellipse(vx, vz * s.fov_depth_mm, r, r) < 1.0 {
                    return (0.03, 0.15);
                }
            }
            let dia = s.fov_depth_mm * 0.88 + 0.002 * x * x;
            if (z - dia).abs() < 1.2 {
                return (7.0, SOFT); // diaphragm
            }
            if s.organ == "gallbladder" {
                let (cx, cz) = (s.lateral_mm, s.depth_mm);
                let r = in_ellipse(cx, cz, 18.0, 11.0);
                if r < 1.0 {
                    (e, a) = (0.01, 0.05); // bile
                } else if r < 1.25 {
                    (e, a) = (2.5, SOFT); // wall
                }
            }
        }
        "kidney" if z > fat_depth + 1.0 => {
            let (cx, cz) = (s.lateral_mm * 0.3, s.depth_mm);
            let r = in_ellipse(cx, cz, 52.0, 24.0);
            if r < 1.0 {
                (e, a) = (0.55, SOFT); // cortex
                let sinus = in_ellipse(cx, cz, 28.0, 9.0);
                if sinus < 1.0 {
                    (e, a) = (2.2, SOFT);
                }
            } else if r < 1.08 {
                (e, a) = (4.0, SOFT); // capsule
            } else {
                e = 1.3; // perirenal fat and liver
            }
        }
        "thyroid" if z > fat_depth + 1.0 => {
            let r = in_ellipse(0.0, 21.0, 17.0, 10.0);
            if in_ellipse(-19.0, 22.0, 4.5, 4.5) < 1.0 {
                return (0.02, 0.1); // carotid artery
            }
            if r < 1.0 {
                e = 1.5;
            } else if z < 13.0 {
                e = 0.7; // strap muscles
            }
        }
        "breast" if z > fat_depth + 1.0 => {
            if z > s.fov_depth_mm * 0.82 {
                e = 0.8 + 0.4 * (z * 2.0).sin().abs(); // pectoral muscle
            } else if ((x * 0.3).sin() + (z * 0.25).cos()) > 0.9 {
                (e, a) = (0.45, 0.6); // fat lobules
            } else {
                e = 1.6; // fibroglandular tissue
            }
        }
        _ => {}
    }
    finding(s, x, z, e, a)
}

fn finding(s: &Scene, x: f64, z: f64, e: f64, a: f64) -> (f64, f64) {
    let r = s.size_mm / 2.0;
    if r <= 0.0 {
        return (e, a);
    }
    let (dx, dz) = (x - s.lateral_mm, z - s.depth_mm);
    let d = (dx * dx + dz * dz).sqrt();
    match s.finding.as_str() {
        "cyst" => {
            if d < r {
                (0.008, 0.05)
            } else if d < r + 0.5 {
                (2.0, a)
            } else {
                (e, a)
            }
        }
        "gallstone" | "stone" => {
            if d < r {
                // a bright leading surface; the rest of the stone absorbs
                if dz < 0.0 && d > r - 1.2 {
                    (80.0, 12.0)
                } else {
                    (6.0, 12.0)
                }
            } else {
                (e, a)
            }
        }
        "solid_mass" => {
            let th = dz.atan2(dx);
            let edge = r * (1.0 + 0.22 * (5.0 * th + 0.7).sin() + 0.1 * (11.0 * th).sin());
            if d < edge {
                (0.3, 0.8)
            } else {
                (e, a)
            }
        }
        "hyperechoic_lesion" => {
            if d < r {
                (3.5, a)
            } else {
                (e, a)
            }
        }
        "hydronephrosis" => {
            // a dilated pelvis and three calyces, anechoic
            let pelvis = (dx / r).powi(2) + (dz / (r * 0.55)).powi(2) < 1.0;
            let calyx = [(-1.4, -0.5), (1.4, -0.45), (0.0, 0.75)]
                .iter()
                .any(|(cx, cz)| {
                    (x - (s.lateral_mm + cx * r)).hypot(z - (s.depth_mm + cz * r)) < r * 0.38
                });
            if pelvis || calyx {
                (0.01, 0.05)
            } else {
                (e, a)
            }
        }
        _ => (e, a),
    }
}

fn gauss(rng: &mut StdRng) -> f64 {
    // Box–Muller
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn kernel(sigma: f64) -> Vec<f64> {
    let half = (3.0 * sigma).ceil().max(1.0) as i64;
    let k: Vec<f64> = (-half..=half)
        .map(|i| (-(i as f64).powi(2) / (2.0 * sigma * sigma)).exp())
        .collect();
    let norm = k.iter().map(|v| v * v).sum::<f64>().sqrt();
    k.into_iter().map(|v| v / norm).collect()
}

/// Position (x, z) in mm of beam line `l` of `lines`, sample `s` of `samples`.
fn beam_point(sc: &Scene, l: usize, lines: usize, s: usize, samples: usize) -> (f64, f64) {
    let r = (s as f64 + 0.5) / samples as f64 * sc.fov_depth_mm;
    let u = (l as f64 + 0.5) / lines as f64 - 0.5;
    if sc.geometry == "linear" {
        (u * sc.fov_width_mm, r)
    } else {
        let th = u * 2.0 * SECTOR_HALF_ANGLE;
        (r * th.sin(), r * th.cos())
    }
}

const SECTOR_HALF_ANGLE: f64 = 0.61; // 35°

/// Simulates one image of `width` × `height` pixels.
#[must_use]
pub fn simulate(sc: &Scene, width: u32, height: u32) -> Simulated {
    let lines = if sc.geometry == "linear" {
        width as usize
    } else {
        (width as usize * 3 / 4).max(32)
    };
    let samples = height as usize;
    let mut rng = StdRng::seed_from_u64(sc.seed);
    let dz_cm = sc.fov_depth_mm / samples as f64 / 10.0;
    // scatterers and the attenuation accumulated along each beam
    let mut re = vec![0.0; lines * samples];
    let mut im = vec![0.0; lines * samples];
    let mut atten = vec![0.0; lines * samples];
    for l in 0..lines {
        let mut db = 0.0;
        for s in 0..samples {
            let (x, z) = beam_point(sc, l, lines, s, samples);
            let (e, a) = tissue(sc, x, z);
            let w = e.sqrt() / std::f64::consts::SQRT_2;
            re[l * samples + s] = w * gauss(&mut rng);
            im[l * samples + s] = w * gauss(&mut rng);
            // round trip, relative to the soft tissue that TGC compensates
            db += 2.0 * (a - 0.5) * sc.freq_mhz * dz_cm;
            atten[l * samples + s] = 10f64.powf(-db / 20.0);
        }
    }
    // pulse (axial) then beam (lateral, widest far from the focus)
    let axial = kernel(1.2 * samples as f64 / 256.0);
    let conv_axial = |v: &[f64]| {
        let h = (axial.len() / 2) as i64;
        let mut out = vec![0.0; v.len()];
        for l in 0..lines {
            for s in 0..samples {
                let mut acc = 0.0;
                for (k, w) in axial.iter().enumerate() {
                    let j = s as i64 + k as i64 - h;
                    if j >= 0 && (j as usize) < samples {
                        acc += w * v[l * samples + j as usize];
                    }
                }
                out[l * samples + s] = acc;
            }
        }
        out
    };
    let (re, im) = (conv_axial(&re), conv_axial(&im));
    let mut env = vec![0.0; lines * samples];
    let mut noise = StdRng::seed_from_u64(sc.seed ^ 0x9e37_79b9_7f4a_7c15);
    for s in 0..samples {
        let z = (s as f64 + 0.5) / samples as f64 * sc.fov_depth_mm;
        let widen = 1.0 + 2.5 * (z - sc.focus_mm).abs() / sc.fov_depth_mm;
        let lat = kernel(0.9 * widen * lines as f64 / 192.0);
        let h = (lat.len() / 2) as i64;
        for l in 0..lines {
            let (mut ar, mut ai) = (0.0, 0.0);
            for (k, w) in lat.iter().enumerate() {
                let j = l as i64 + k as i64 - h;
                if j >= 0 && (j as usize) < lines {
                    ar += w * re[j as usize * samples + s];
                    ai += w * im[j as usize * samples + s];
                }
            }
            let n = 0.004;
            let (nr, ni) = (n * gauss(&mut noise), n * gauss(&mut noise));
            let i = l * samples + s;
            env[i] = ((ar * atten[i]).powi(2) + (ai * atten[i]).powi(2)).sqrt()
                + (nr * nr + ni * ni).sqrt();
        }
    }
    let frame = scan_convert(sc, &env, lines, samples, width, height);
    Simulated {
        frame,
        envelope: env,
        lines,
        samples,
        scene: sc.clone(),
    }
}

/// Log compression (60 dB) and scan conversion to `width` × `height` gray pixels.
fn scan_convert(
    sc: &Scene,
    env: &[f64],
    lines: usize,
    samples: usize,
    width: u32,
    height: u32,
) -> Frame {
    const DR: f64 = 60.0;
    let mean_tissue = std::f64::consts::PI.sqrt() / 2.0;
    let gray = |v: f64| -> u8 {
        let db = 20.0 * (v.max(1e-9) / mean_tissue).log10();
        (105.0 + 255.0 / DR * db).round().clamp(0.0, 255.0) as u8
    };
    let sample = |l: f64, s: f64| -> f64 {
        let (l0, s0) = (l.floor().max(0.0) as usize, s.floor().max(0.0) as usize);
        let (l1, s1) = ((l0 + 1).min(lines - 1), (s0 + 1).min(samples - 1));
        let (fl, fs) = (l - l0 as f64, s - s0 as f64);
        let v = |l: usize, s: usize| env[l * samples + s];
        (v(l0, s0) * (1.0 - fs) + v(l0, s1) * fs) * (1.0 - fl)
            + (v(l1, s0) * (1.0 - fs) + v(l1, s1) * fs) * fl
    };
    let mut data = vec![0u8; width as usize * height as usize];
    for py in 0..height as usize {
        for px in 0..width as usize {
            let v = if sc.geometry == "linear" {
                let l = (px as f64 + 0.5) * lines as f64 / f64::from(width) - 0.5;
                let s = (py as f64 + 0.5) * samples as f64 / f64::from(height) - 0.5;
                Some(sample(l.max(0.0), s.max(0.0)))
            } else {
                // the fan: apex at the top centre, depth along the radius
                let half_w = sc.fov_depth_mm * SECTOR_HALF_ANGLE.sin();
                let x = (px as f64 + 0.5) / f64::from(width) * 2.0 * half_w - half_w;
                let z = (py as f64 + 0.5) / f64::from(height) * sc.fov_depth_mm;
                let r = x.hypot(z);
                let th = x.atan2(z);
                if th.abs() > SECTOR_HALF_ANGLE || r >= sc.fov_depth_mm {
                    None
                } else {
                    let l = (th / (2.0 * SECTOR_HALF_ANGLE) + 0.5) * lines as f64 - 0.5;
                    let s = r / sc.fov_depth_mm * samples as f64 - 0.5;
                    Some(sample(l.max(0.0), s.max(0.0)))
                }
            };
            data[py * width as usize + px] = v.map_or(0, gray);
        }
    }
    Frame::gray8(width, height, data)
}

/// The report of a scene, in the style of the project's text reports.
#[must_use]
pub fn report(sc: &Scene) -> String {
    let exam = match sc.organ.as_str() {
        "liver" | "gallbladder" => "Right upper quadrant ultrasound",
        "kidney" => "Renal ultrasound",
        "thyroid" => "Thyroid ultrasound",
        _ => "Breast ultrasound",
    };
    let organ = sc.organ.as_str();
    let size = format!("{:.0} mm", sc.size_mm);
    let depth = format!("{:.0} mm", sc.depth_mm);
    let (findings, impression) = match sc.finding.as_str() {
        "normal" => (
            format!("The {organ} is normal in size and echotexture. No focal lesion."),
            format!("Normal {organ} ultrasound."),
        ),
        "cyst" => (
            format!(
                "There is a {size} anechoic cyst in the {organ} at a depth of {depth}, with a thin wall and \
                 posterior acoustic enhancement."
            ),
            format!("Simple {organ} cyst, {size}. Benign."),
        ),
        "gallstone" => (
            format!(
                "There is a {size} echogenic focus in the gallbladder at a depth of {depth}, with posterior \
                 acoustic shadowing. The gallbladder wall is not thickened."
            ),
            format!("Cholelithiasis, {size} gallstone."),
        ),
        "stone" => (
            format!("There is a {size} echogenic focus in the kidney at a depth of {depth}, with posterior acoustic shadowing."),
            format!("Nephrolithiasis, {size} renal stone."),
        ),
        "solid_mass" => (
            format!(
                "There is a {size} solid hypoechoic mass in the {organ} at a depth of {depth}, with an irregular \
                 margin."
            ),
            format!("Solid hypoechoic {organ} mass, {size}, with irregular margin. Tissue sampling recommended."),
        ),
        "hyperechoic_lesion" => (
            format!("There is a {size} well-defined hyperechoic lesion in the liver at a depth of {depth}."),
            format!("Hyperechoic liver lesion, {size}, likely hemangioma."),
        ),
        "steatosis" => (
            "The liver shows diffusely increased echogenicity with posterior beam attenuation.".to_string(),
            "Hepatic steatosis.".to_string(),
        ),
        "hydronephrosis" => (
            format!("The renal pelvis and calyces are dilated; the pelvis measures {size} in diameter."),
            "Hydronephrosis.".to_string(),
        ),
        other => (format!("Finding: {other}."), format!("{other}.")),
    };
    format!("EXAMINATION: {exam}.\nFINDINGS: {findings}\nIMPRESSION: {impression}")
}

/// The findings a report states (its IMPRESSION line when it has one, else all of it), as the simulator's
/// labels: the inverse of [`report`]'s wording, for scoring generated reports against an image's truth.
/// "normal" only when nothing else is stated; nothing when the text names no finding.
#[must_use]
pub fn findings_in(report: &str) -> Vec<&'static str> {
    let lower = report.to_lowercase();
    let text = lower
        .split_once("impression:")
        .map_or(lower.as_str(), |(_, rest)| rest);
    let mut out = Vec::new();
    let has = |w: &str| text.contains(w);
    if has("cholelithiasis") || has("gallstone") {
        out.push("gallstone");
    }
    if has("nephrolithiasis") || has("renal stone") || has("kidney stone") {
        out.push("stone");
    }
    if has("hydronephrosis") {
        out.push("hydronephrosis");
    }
    if has("steatosis") || has("fatty liver") {
        out.push("steatosis");
    }
    if has("hyperechoic") {
        out.push("hyperechoic_lesion");
    }
    if has("solid") && has("mass") {
        out.push("solid_mass");
    }
    if has("cyst") {
        out.push("cyst");
    }
    if out.is_empty() && has("normal") {
        out.push("normal");
    }
    out
}

/// Invented patient data for a simulated study.
#[derive(Debug, Clone, Serialize)]
pub struct Patient {
    pub name: String,
    pub id: String,
    pub birth_date: String,
    pub study_date: String,
    pub accession: String,
    pub institution: String,
    pub physician: String,
}

impl Patient {
    #[must_use]
    pub fn invent(rng: &mut StdRng) -> Self {
        const FIRST: [&str; 8] = [
            "ANNA", "JONAS", "MARIA", "LI", "OMAR", "SOFIA", "PETER", "AMARA",
        ];
        const LAST: [&str; 8] = [
            "BERG",
            "NOVAK",
            "OKAFOR",
            "ZHANG",
            "HALVORSEN",
            "RUIZ",
            "DUBOIS",
            "KOWALSKI",
        ];
        const PLACES: [&str; 4] = [
            "ST HELENA HOSPITAL",
            "RIVERSIDE CLINIC",
            "NORTHGATE MEDICAL",
            "LAKEVIEW IMAGING",
        ];
        let d = |rng: &mut StdRng, y0: i32, y1: i32| {
            format!(
                "{:04}{:02}{:02}",
                rng.random_range(y0..y1),
                rng.random_range(1..13),
                rng.random_range(1..29)
            )
        };
        Self {
            name: format!(
                "{}^{}",
                LAST[rng.random_range(0..8)],
                FIRST[rng.random_range(0..8)]
            ),
            id: format!("MRN{:07}", rng.random_range(0..10_000_000)),
            birth_date: d(rng, 1940, 2000),
            study_date: d(rng, 2021, 2026),
            accession: format!("ACC{:06}", rng.random_range(0..1_000_000)),
            institution: PLACES[rng.random_range(0..4)].to_string(),
            physician: format!(
                "{}^{}",
                LAST[rng.random_range(0..8)],
                FIRST[rng.random_range(0..8)]
            ),
        }
    }
}

/// Height of the header band scanners burn text into.
pub const BAND: u32 = 24;

/// Burns the patient's name, ID and the study date into the top band of `frame` (white on black).
pub fn burn_header(frame: &mut Frame, p: &Patient) {
    let w = frame.width;
    if let crate::pixels::Samples::U8(d) = &mut frame.samples {
        for v in &mut d[..(BAND * w) as usize] {
            *v = 0;
        }
        let text = format!("{} {} {}", p.name.replace('^', " "), p.id, p.study_date);
        crate::sheet::draw_text(&text, 6, 6, 2, |x, y| {
            if x < w && y < BAND {
                d[(y * w + x) as usize] = 255;
            }
        });
    }
}

fn invented_uid(rng: &mut StdRng) -> String {
    format!("2.25.{}", rng.random::<u128>() >> 1)
}

/// The UIDs of a simulated study (one per patient visit), its series and instances.
#[derive(Debug, Clone)]
pub struct Study {
    pub study_uid: String,
    pub series_uid: String,
}

impl Study {
    #[must_use]
    pub fn invent(rng: &mut StdRng) -> Self {
        Self {
            study_uid: invented_uid(rng),
            series_uid: invented_uid(rng),
        }
    }
}

/// The Sequence of Ultrasound Regions item of a simulated image: 2-D tissue below the header band.
fn region_item(w: u32, h: u32, sc: &Scene) -> dicom_object::InMemDicomObject {
    use dicom_core::value::PrimitiveValue;
    use dicom_core::{DataElement, Tag, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::InMemDicomObject;
    let us = |tag: Tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(v));
    let ul = |tag: Tag, v: u32| DataElement::new(tag, VR::UL, PrimitiveValue::from(v));
    InMemDicomObject::from_element_iter([
        us(tags::REGION_SPATIAL_FORMAT, 1),
        us(tags::REGION_DATA_TYPE, 1),
        ul(tags::REGION_FLAGS, 0),
        ul(tags::REGION_LOCATION_MIN_X0, 0),
        ul(tags::REGION_LOCATION_MIN_Y0, BAND),
        ul(tags::REGION_LOCATION_MAX_X1, w - 1),
        ul(tags::REGION_LOCATION_MAX_Y1, h - 1),
        us(tags::PHYSICAL_UNITS_X_DIRECTION, 3),
        us(tags::PHYSICAL_UNITS_Y_DIRECTION, 3),
        DataElement::new(
            tags::PHYSICAL_DELTA_X,
            VR::FD,
            PrimitiveValue::from(sc.fov_depth_mm / 10.0 / f64::from(h)),
        ),
        DataElement::new(
            tags::PHYSICAL_DELTA_Y,
            VR::FD,
            PrimitiveValue::from(sc.fov_depth_mm / 10.0 / f64::from(h)),
        ),
    ])
}

/// Ultrasound DICOM of `frames` (one, or a cine loop) with the patient's invented data in the header (also
/// in a nested sequence, a private tag and the descriptors) and burned into the top band, the imaging region
/// declared below the band, Burned In Annotation YES. Explicit VR Little Endian, 8-bit MONOCHROME2.
///
/// # Errors
/// When the object cannot be encoded (it can, for frames of one size).
pub fn write_dicom(
    frames: &[Frame],
    p: &Patient,
    study: &Study,
    sc: &Scene,
    rng: &mut StdRng,
) -> crate::Result<Vec<u8>> {
    use dicom_core::value::{DataSetSequence, PrimitiveValue};
    use dicom_core::{DataElement, Length, Tag, VR};
    use dicom_dictionary_std::{tags, uids};
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

    let (w, h) = (frames[0].width, frames[0].height);
    let s = |tag: Tag, vr: VR, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
    let us = |tag: Tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(v));
    let multi = frames.len() > 1;
    let class = if multi {
        uids::ULTRASOUND_MULTI_FRAME_IMAGE_STORAGE
    } else {
        uids::ULTRASOUND_IMAGE_STORAGE
    };
    let first = p.name.split('^').nth(1).unwrap_or("");
    let last = p.name.split('^').next().unwrap_or("");
    let region = region_item(w, h, sc);
    let other_ids = InMemDicomObject::from_element_iter([
        s(tags::PATIENT_ID, VR::LO, &format!("{}-OLD", p.id)),
        s(tags::ISSUER_OF_PATIENT_ID, VR::LO, &p.institution),
    ]);
    let pixels: Vec<u8> = frames.iter().flat_map(Frame::luma8).collect();
    let mut elements = vec![
        s(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100"),
        s(tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY"),
        s(tags::SOP_CLASS_UID, VR::UI, class),
        s(tags::SOP_INSTANCE_UID, VR::UI, &invented_uid(rng)),
        s(tags::STUDY_DATE, VR::DA, &p.study_date),
        s(tags::CONTENT_DATE, VR::DA, &p.study_date),
        s(tags::STUDY_TIME, VR::TM, "101500"),
        s(tags::ACCESSION_NUMBER, VR::SH, &p.accession),
        s(tags::MODALITY, VR::CS, "US"),
        s(tags::INSTITUTION_NAME, VR::LO, &p.institution),
        s(tags::REFERRING_PHYSICIAN_NAME, VR::PN, &p.physician),
        s(
            tags::STUDY_DESCRIPTION,
            VR::LO,
            &format!("US {} for {first} {last}", sc.organ.to_uppercase()),
        ),
        s(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            &format!("{} {}", sc.organ, sc.geometry),
        ),
        s(tags::PATIENT_NAME, VR::PN, &p.name),
        s(tags::PATIENT_ID, VR::LO, &p.id),
        s(tags::PATIENT_BIRTH_DATE, VR::DA, &p.birth_date),
        s(tags::PATIENT_SEX, VR::CS, "O"),
        DataElement::new(
            tags::OTHER_PATIENT_I_DS_SEQUENCE,
            VR::SQ,
            DataSetSequence::new(vec![other_ids], Length::UNDEFINED),
        ),
        s(Tag(0x0009, 0x0010), VR::LO, "STRATA SIM"),
        s(
            Tag(0x0009, 0x1001),
            VR::LO,
            &format!("{first} {last} {}", p.id),
        ),
        s(tags::STUDY_INSTANCE_UID, VR::UI, &study.study_uid),
        s(tags::SERIES_INSTANCE_UID, VR::UI, &study.series_uid),
        s(tags::STUDY_ID, VR::SH, &p.accession[3..]),
        s(tags::INSTANCE_NUMBER, VR::IS, "1"),
        s(
            tags::IMAGE_COMMENTS,
            VR::LT,
            &format!("Scanned for {first} {last} on {}", p.study_date),
        ),
        us(tags::SAMPLES_PER_PIXEL, 1),
        s(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        us(tags::ROWS, u16::try_from(h).unwrap_or(u16::MAX)),
        us(tags::COLUMNS, u16::try_from(w).unwrap_or(u16::MAX)),
        us(tags::BITS_ALLOCATED, 8),
        us(tags::BITS_STORED, 8),
        us(tags::HIGH_BIT, 7),
        us(tags::PIXEL_REPRESENTATION, 0),
        s(tags::BURNED_IN_ANNOTATION, VR::CS, "YES"),
        DataElement::new(
            tags::SEQUENCE_OF_ULTRASOUND_REGIONS,
            VR::SQ,
            DataSetSequence::new(vec![region], Length::UNDEFINED),
        ),
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(pixels.into())),
    ];
    if multi {
        elements.push(s(tags::NUMBER_OF_FRAMES, VR::IS, &frames.len().to_string()));
        elements.push(s(tags::FRAME_TIME, VR::DS, "33.3"));
        elements.push(DataElement::new(
            tags::FRAME_INCREMENT_POINTER,
            VR::AT,
            PrimitiveValue::Tags([tags::FRAME_TIME].into_iter().collect()),
        ));
    }
    let obj = InMemDicomObject::from_element_iter(elements)
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .map_err(|e| crate::ImageError::Usage(format!("DICOM meta: {e}")))?;
    let mut out = Vec::new();
    obj.write_all(&mut out)
        .map_err(|e| crate::ImageError::Usage(format!("DICOM write: {e}")))?;
    Ok(out)
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GenCounts {
    pub images: usize,
    pub patients: usize,
    pub dicom: bool,
}

/// Writes `count` simulated images into `out`: PNGs under `images/` with `labels.jsonl` (labels organ and
/// finding, the report as text, the patient, and the ground truth), ready for `strata acquire`; with `dicom`,
/// ultrasound DICOM files under `dicom/` (each `frames` long) and `reports.jsonl` (each report with its
/// patient's name and study date in it, and `patient_id`, for the text de-identifier). Patients have one to
/// three images each. The same seed writes the same bytes.
///
/// # Errors
/// On an I/O failure.
pub fn generate(
    out: &std::path::Path,
    count: usize,
    seed: u64,
    size: u32,
    dicom: bool,
    frames: usize,
) -> crate::Result<GenCounts> {
    use std::fmt::Write as _;
    let sub = out.join(if dicom { "dicom" } else { "images" });
    std::fs::create_dir_all(&sub).map_err(crate::io_err(&sub))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sidecar = String::new();
    let mut counts = GenCounts {
        dicom,
        ..GenCounts::default()
    };
    let mut n = 0;
    while n < count {
        let patient = Patient::invent(&mut rng);
        let study = Study::invent(&mut rng);
        counts.patients += 1;
        let organ = ORGANS[rng.random_range(0..ORGANS.len())];
        let per = rng.random_range(1..=3).min(count - n);
        for _ in 0..per {
            let sc = Scene::random(organ, &mut rng);
            let id = format!("us{n:05}");
            let report = report(&sc);
            let truth = serde_json::json!({"organ": sc.organ, "finding": sc.finding, "size_mm": sc.size_mm,
                "depth_mm": sc.depth_mm, "geometry": sc.geometry, "freq_mhz": sc.freq_mhz});
            if dicom {
                let mut fs = Vec::with_capacity(frames.max(1));
                for k in 0..frames.max(1) {
                    let mut moved = sc.clone();
                    moved.motion_mm = 0.4 * k as f64;
                    let mut f = simulate(&moved, size, size).frame;
                    burn_header(&mut f, &patient);
                    fs.push(f);
                }
                let bytes = write_dicom(&fs, &patient, &study, &sc, &mut rng)?;
                let path = sub.join(format!("{id}.dcm"));
                std::fs::write(&path, bytes).map_err(crate::io_err(&path))?;
                let first = patient.name.split('^').nth(1).unwrap_or("");
                let last = patient.name.split('^').next().unwrap_or("");
                let d = &patient.study_date;
                let text = format!(
                    "Patient: {first} {last}. Date of exam: {}-{}-{}.\n{report}",
                    &d[..4],
                    &d[4..6],
                    &d[6..]
                );
                let rec = serde_json::json!({"id": id, "text": text, "patient_id": patient.id,
                    "file": format!("dicom/{id}.dcm"), "truth": truth});
                let _ = writeln!(sidecar, "{rec}");
            } else {
                let f = simulate(&sc, size, size).frame;
                let path = sub.join(format!("{id}.png"));
                std::fs::write(&path, f.to_png()?).map_err(crate::io_err(&path))?;
                let rec = serde_json::json!({"file": format!("images/{id}.png"),
                    "labels": [sc.organ, sc.finding], "text": report, "patient": patient.id,
                    "study": study.study_uid, "truth": truth});
                let _ = writeln!(sidecar, "{rec}");
            }
            n += 1;
        }
    }
    counts.images = n;
    let name = if dicom {
        "reports.jsonl"
    } else {
        "labels.jsonl"
    };
    strata_store::write_atomic(out.join(name), sidecar.as_bytes())?;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every organ and finding's report reads back as exactly its finding; text without one reads as none.
    #[test]
    fn findings_read_back_from_every_report() {
        let mut rng = StdRng::seed_from_u64(4);
        for organ in ORGANS {
            for finding in findings_of(organ) {
                let sc = Scene::with_finding(organ, finding, &mut rng);
                assert_eq!(
                    findings_in(&report(&sc)),
                    vec![*finding],
                    "{organ} {finding}"
                );
            }
        }
        assert!(findings_in("EXAMINATION: Renal ultrasound.\nFINDINGS: The").is_empty());
        assert_eq!(
            findings_in("IMPRESSION: Simple liver cyst, 12 mm. Nephrolithiasis."),
            vec!["stone", "cyst"]
        );
    }

    fn scene(organ: &str, finding: &str, size: f64, depth: f64) -> Scene {
        let mut rng = StdRng::seed_from_u64(7);
        let mut sc = Scene::with_finding(organ, finding, &mut rng);
        sc.size_mm = size;
        sc.depth_mm = depth;
        sc.lateral_mm = 0.0;
        sc.focus_mm = depth;
        sc
    }

    /// Mean envelope over beam lines `l0..l1` and depths `z0..z1` mm.
    fn mean_env(s: &Simulated, l0: usize, l1: usize, z0: f64, z1: f64) -> f64 {
        let (mut sum, mut n) = (0.0, 0.0);
        for l in l0..l1 {
            for k in 0..s.samples {
                let z = (k as f64 + 0.5) / s.samples as f64 * s.scene.fov_depth_mm;
                if z >= z0 && z < z1 {
                    sum += s.envelope[l * s.samples + k];
                    n += 1.0;
                }
            }
        }
        sum / n
    }

    #[test]
    fn uniform_tissue_has_rayleigh_speckle() {
        // a normal thyroid at high resolution; a patch of the lobe, inside one depth band at the focus
        let mut sc = scene("breast", "normal", 0.0, 30.0);
        sc.organ = "uniform".into();
        let s = simulate(&sc, 512, 512);
        let mut v = Vec::new();
        for l in 64..448 {
            for k in 0..s.samples {
                let z = (k as f64 + 0.5) / s.samples as f64 * sc.fov_depth_mm;
                if (25.0..35.0).contains(&z) {
                    v.push(s.envelope[l * s.samples + k]);
                }
            }
        }
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let snr = mean / sd;
        eprintln!("envelope SNR {snr:.3} over {n} samples");
        // Rayleigh: mean/sd = sqrt(pi / (4 - pi)) = 1.913
        assert!((snr - 1.913).abs() < 0.08, "SNR {snr:.3} over {n} samples");
    }

    #[test]
    fn a_cyst_is_dark_and_brightens_what_lies_behind_it() {
        let sc = scene("liver", "cyst", 24.0, 70.0);
        let s = simulate(&sc, 256, 256);
        let mid = s.lines / 2;
        let side = s.lines / 2 + s.lines / 5; // beside the cyst, same depths
        let w = 4;
        let inside = mean_env(&s, mid - w, mid + w, 64.0, 76.0);
        let around = mean_env(&s, side - w, side + w, 64.0, 76.0);
        let behind = mean_env(&s, mid - w, mid + w, 90.0, 120.0);
        let beside = mean_env(&s, side - w, side + w, 90.0, 120.0);
        eprintln!("cyst {inside:.3}, tissue {around:.3}, behind {behind:.3}, beside {beside:.3}");
        assert!(
            inside < 0.2 * around,
            "cyst {inside:.3} vs tissue {around:.3}"
        );
        assert!(
            behind > 1.3 * beside,
            "enhancement: {behind:.3} vs {beside:.3}"
        );
    }

    #[test]
    fn a_stone_shadows_what_lies_behind_it() {
        let sc = scene("gallbladder", "gallstone", 12.0, 65.0);
        let s = simulate(&sc, 256, 256);
        let mid = s.lines / 2;
        let side = s.lines / 2 + s.lines / 4;
        let behind = mean_env(&s, mid - 3, mid + 3, 90.0, 110.0);
        let beside = mean_env(&s, side - 3, side + 3, 90.0, 110.0);
        assert!(behind < 0.2 * beside, "shadow {behind:.3} vs {beside:.3}");
    }

    #[test]
    fn the_same_seed_writes_the_same_bytes() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        generate(d1.path(), 5, 11, 64, true, 2).unwrap();
        generate(d2.path(), 5, 11, 64, true, 2).unwrap();
        for name in ["dicom/us00000.dcm", "dicom/us00004.dcm", "reports.jsonl"] {
            assert_eq!(
                std::fs::read(d1.path().join(name)).unwrap(),
                std::fs::read(d2.path().join(name)).unwrap()
            );
        }
        let d3 = tempfile::tempdir().unwrap();
        generate(d3.path(), 5, 12, 64, true, 2).unwrap();
        assert_ne!(
            std::fs::read(d1.path().join("dicom/us00000.dcm")).unwrap(),
            std::fs::read(d3.path().join("dicom/us00000.dcm")).unwrap()
        );
    }
}
