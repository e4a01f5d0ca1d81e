//! `strata eval --model VLM --images DATASET`: a vision-language model's image task — the finding question
//! of every image of a split (held out by patient), answered by log-likelihood: each choice (the organ's
//! findings for simulated images, the dataset's labels otherwise) scored as the start of the reply after the
//! image and the question, the most likely one taken. Beside it, on the same split and by the same command:
//! the majority class (the training split's most frequent finding among the item's choices) and a linear
//! probe (logistic regression on the frozen tower's pooled features of the training split). Accuracy with a
//! bootstrap 95% interval and chance; precision, recall and F1 per finding.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{Device, IndexOp, Tensor};
use strata_image::dataset::ImageRecord;
use strata_model::Llava;
use strata_store::{Kind, Store};
use strata_tokenize::{ChatTemplate, TokenizerDir, NO_LOSS};

use super::vlm::{
    choices, encode_turn, features, finding_question, image_records, organ_finding, processor_size,
    words,
};

/// The result of one model on one image dataset.
pub struct ImageScore {
    pub n: usize,
    pub acc: f64,
    pub lo: f64,
    pub hi: f64,
    pub chance: f64,
    pub majority: f64,
    pub probe: f64,
    pub probe_lo: f64,
    pub probe_hi: f64,
    /// finding → (support, F1 of the model, F1 of the probe, F1 of the majority class).
    pub per_finding: BTreeMap<String, (usize, f64, f64, f64)>,
    /// Reports generated for the split's simulated images: finding → (support, precision, recall, F1) of the
    /// findings they state against each image's truth; and the micro-averaged F1 over all findings.
    pub reports: BTreeMap<String, (usize, f64, f64, f64)>,
    pub report_f1: Option<f64>,
}

/// Precision, recall and F1 of `class` over (truth, stated findings) pairs.
#[allow(clippy::cast_precision_loss)]
fn set_prf(pairs: &[(String, Vec<&str>)], class: &str) -> (usize, f64, f64, f64) {
    let tp = pairs
        .iter()
        .filter(|(t, p)| t == class && p.contains(&class))
        .count();
    let fp = pairs
        .iter()
        .filter(|(t, p)| t != class && p.contains(&class))
        .count();
    let support = pairs.iter().filter(|(t, _)| t == class).count();
    let p = if tp + fp > 0 {
        tp as f64 / (tp + fp) as f64
    } else {
        0.0
    };
    let r = if support > 0 {
        tp as f64 / support as f64
    } else {
        0.0
    };
    let f = if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    };
    (support, p, r, f)
}

/// Greedy reports of the images `rows` (projected features, one image each) on the inference engine, and
/// the findings each states.
fn reports(
    dir: &std::path::Path,
    model: &str,
    llava: &Llava,
    td: &TokenizerDir,
    tmpl: &ChatTemplate,
    projected: &[Vec<f32>],
) -> anyhow::Result<Vec<Vec<&'static str>>> {
    let cfg = &llava.cfg;
    let engine = strata_serve::Engine::load_quantized(model, dir, None)?;
    let ids: Vec<u32> = encode_turn(
        td,
        tmpl,
        cfg.image_token_id,
        cfg.image_seq_length,
        super::vlm::REPORT_PROMPT,
        None,
    )?
    .into_iter()
    .map(|id| id & !NO_LOSS)
    .collect();
    let params = strata_serve::GenParams::new(96, strata_serve::Sampling::Greedy, 0);
    let bar = indicatif::ProgressBar::new(projected.len() as u64);
    let mut out = Vec::with_capacity(projected.len());
    for rows in projected {
        let g = engine.generate_ids(
            ids.clone(),
            Some(strata_engine::ImageRows {
                token: cfg.image_token_id,
                rows,
            }),
            &params,
            None,
            &mut |_| true,
        )?;
        out.push(strata_image::sim::findings_in(&g.text));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// log softmax(row)[id].
fn log_prob(row: &[f32], id: u32) -> f64 {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s: f64 = row.iter().map(|&v| f64::from(v - m).exp()).sum();
    f64::from(row[id as usize] - m) - s.ln()
}

/// The index of the most likely choice for one image: every choice in one batch after the same prompt.
fn answer(
    llava: &Llava,
    prompt: &[u32],
    choice_ids: &[Vec<u32>],
    image: &Tensor,
) -> anyhow::Result<usize> {
    let len = prompt.len() + choice_ids.iter().map(Vec::len).max().unwrap_or(0);
    let pad = prompt.last().copied().unwrap_or(0);
    let mut ids = Vec::with_capacity(choice_ids.len() * len);
    for c in choice_ids {
        ids.extend_from_slice(prompt);
        ids.extend_from_slice(c);
        ids.extend(std::iter::repeat_n(pad, len - prompt.len() - c.len()));
    }
    let b = choice_ids.len();
    let x = Tensor::from_vec(ids, (b, len), &Device::Cpu)?;
    let rows = image.dim(0)?;
    let images = image
        .unsqueeze(0)?
        .broadcast_as((b, rows, image.dim(1)?))?
        .contiguous()?;
    let logits = llava.logits(&x, &images)?;
    let mut best = (0, f64::NEG_INFINITY);
    for (k, c) in choice_ids.iter().enumerate() {
        let mut lp = 0.0;
        for (j, &t) in c.iter().enumerate() {
            let row: Vec<f32> = logits.i((k, prompt.len() + j - 1))?.to_vec1()?;
            lp += log_prob(&row, t);
        }
        if lp > best.1 {
            best = (k, lp);
        }
    }
    Ok(best.0)
}

/// F1 of `class` over (truth, prediction) pairs of a single-label task: [`set_prf`] with one prediction each.
fn f1(pairs: &[(String, String)], class: &str) -> f64 {
    let sets: Vec<(String, Vec<&str>)> = pairs
        .iter()
        .map(|(t, p)| (t.clone(), vec![p.as_str()]))
        .collect();
    set_prf(&sets, class).3
}

#[allow(clippy::cast_precision_loss)]
fn accuracy(pairs: &[(String, String)]) -> (f64, Vec<bool>) {
    let c: Vec<bool> = pairs.iter().map(|(t, p)| t == p).collect();
    (
        c.iter().filter(|&&x| x).count() as f64 / c.len().max(1) as f64,
        c,
    )
}

/// Scores model `model` on the finding question of the `split` images of `dataset`.
///
/// # Errors
/// A model that is not a vision-language one, a dataset without images or without the split, an image that
/// does not decode.
#[allow(clippy::too_many_lines)]
pub fn score(store: &Store, model: &str, dataset: &str, split: &str) -> anyhow::Result<ImageScore> {
    let dir = store.require(Kind::Model, model)?;
    anyhow::ensure!(
        strata_model::llava::is_llava(&dir),
        "model {model:?} is a text model: --images scores vision-language models (strata finetune --images)"
    );
    let llava = Llava::load(&dir, &Device::Cpu)?;
    let td = TokenizerDir::open(&dir)?;
    let tmpl = ChatTemplate::from_tokenizer_config(&dir.join("tokenizer_config.json"))?;
    let size = processor_size(&dir)?;
    let set = image_records(store, dataset)?;
    let (feats, pooled) = features(store, &set, &llava.tower, &dir, &llava.cfg, size)?;
    let recs = &set.recs;
    anyhow::ensure!(
        feats.dim(1)? == llava.cfg.image_seq_length,
        "features of {} rows for a model of {} image tokens",
        feats.dim(1)?,
        llava.cfg.image_seq_length
    );
    let all: BTreeSet<String> = recs
        .iter()
        .filter_map(|r| organ_finding(r).1.map(str::to_string))
        .collect();
    let classes: Vec<String> = all.iter().cloned().collect();
    let class_of = |f: &str| classes.iter().position(|c| c == f).unwrap_or(0);
    let in_split = |r: &ImageRecord, s: &str| r.split.as_deref() == Some(s);
    let test: Vec<usize> = (0..recs.len())
        .filter(|&i| in_split(&recs[i], split) && organ_finding(&recs[i]).1.is_some())
        .collect();
    anyhow::ensure!(
        !test.is_empty(),
        "dataset {dataset:?} has no labelled images in split {split:?} (strata preprocess --split-by-patient)"
    );
    let train: Vec<usize> = (0..recs.len())
        .filter(|&i| in_split(&recs[i], "train") && organ_finding(&recs[i]).1.is_some())
        .collect();
    anyhow::ensure!(
        !train.is_empty(),
        "dataset {dataset:?} has no labelled training images for the baselines"
    );
    // the baselines
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for &i in &train {
        *counts
            .entry(organ_finding(&recs[i]).1.unwrap_or(""))
            .or_default() += 1;
    }
    let pooled_rows: Vec<Vec<f32>> = pooled.to_vec2()?;
    let probe = strata_eval::probe::Probe::fit(
        &train
            .iter()
            .map(|&i| pooled_rows[i].clone())
            .collect::<Vec<_>>(),
        &train
            .iter()
            .map(|&i| class_of(organ_finding(&recs[i]).1.unwrap_or("")))
            .collect::<Vec<_>>(),
        classes.len(),
        1e-3,
        300,
    );
    let projected = llava.projector.forward(&feats)?;
    let bar = indicatif::ProgressBar::new(test.len() as u64);
    let (mut model_pairs, mut probe_pairs, mut major_pairs) = (Vec::new(), Vec::new(), Vec::new());
    let mut chance = 0.0;
    for &i in &test {
        let r = &recs[i];
        let truth = organ_finding(r).1.unwrap_or("").to_string();
        let ch = choices(r, &all);
        #[allow(clippy::cast_precision_loss)]
        {
            chance += 1.0 / ch.len() as f64;
        }
        let prompt: Vec<u32> = encode_turn(
            &td,
            &tmpl,
            llava.cfg.image_token_id,
            llava.cfg.image_seq_length,
            &finding_question(r, &ch),
            None,
        )?
        .into_iter()
        .map(|id| id & !NO_LOSS)
        .collect();
        let choice_ids: Vec<Vec<u32>> = ch
            .iter()
            .map(|c| {
                td.tokenizer
                    .encode(words(c).as_str(), false)
                    .map(|e| e.get_ids().to_vec())
                    .map_err(|e| anyhow::anyhow!("encoding a choice: {e}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let k = answer(&llava, &prompt, &choice_ids, &projected.get(i)?)?;
        model_pairs.push((truth.clone(), ch[k].clone()));
        let allowed: Vec<usize> = ch.iter().map(|c| class_of(c)).collect();
        probe_pairs.push((
            truth.clone(),
            classes[probe.predict(&pooled_rows[i], &allowed)].clone(),
        ));
        let major = ch
            .iter()
            .max_by_key(|c| counts.get(c.as_str()).copied().unwrap_or(0))
            .cloned()
            .unwrap_or_default();
        major_pairs.push((truth, major));
        bar.inc(1);
    }
    bar.finish_and_clear();
    // reports of the simulated images, their stated findings against the truth
    let simulated: Vec<usize> = test
        .iter()
        .copied()
        .filter(|&i| {
            organ_finding(&recs[i])
                .0
                .is_some_and(|o| strata_image::sim::ORGANS.contains(&o))
        })
        .collect();
    let rows: Vec<Vec<f32>> = simulated
        .iter()
        .map(|&i| Ok(projected.get(i)?.flatten_all()?.to_vec1()?))
        .collect::<anyhow::Result<_>>()?;
    let stated = reports(&dir, model, &llava, &td, &tmpl, &rows)?;
    let report_pairs: Vec<(String, Vec<&str>)> = simulated
        .iter()
        .zip(stated)
        .map(|(&i, f)| (organ_finding(&recs[i]).1.unwrap_or("").to_string(), f))
        .collect();
    let report_rows: BTreeMap<String, (usize, f64, f64, f64)> = classes
        .iter()
        .map(|c| (c.clone(), set_prf(&report_pairs, c)))
        .filter(|(_, v)| v.0 > 0)
        .collect();
    let report_f1 = (!report_pairs.is_empty()).then(|| {
        let tp = report_pairs
            .iter()
            .filter(|(t, p)| p.contains(&t.as_str()))
            .count();
        let stated: usize = report_pairs.iter().map(|(_, p)| p.len()).sum();
        #[allow(clippy::cast_precision_loss)]
        let (p, r) = (
            tp as f64 / stated.max(1) as f64,
            tp as f64 / report_pairs.len() as f64,
        );
        if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        }
    });
    let (acc, correct) = accuracy(&model_pairs);
    let (lo, hi) = strata_eval::tasks::bootstrap(&correct, 1000, 0);
    let (probe_acc, probe_correct) = accuracy(&probe_pairs);
    let (probe_lo, probe_hi) = strata_eval::tasks::bootstrap(&probe_correct, 1000, 0);
    let per_finding = classes
        .iter()
        .map(|c| {
            let support = model_pairs.iter().filter(|(t, _)| t == c).count();
            (
                c.clone(),
                (
                    support,
                    f1(&model_pairs, c),
                    f1(&probe_pairs, c),
                    f1(&major_pairs, c),
                ),
            )
        })
        .filter(|(_, v)| v.0 > 0)
        .collect();
    #[allow(clippy::cast_precision_loss)]
    Ok(ImageScore {
        n: test.len(),
        acc,
        lo,
        hi,
        chance: chance / test.len() as f64,
        majority: accuracy(&major_pairs).0,
        probe: probe_acc,
        probe_lo,
        probe_hi,
        per_finding,
        reports: report_rows,
        report_f1,
    })
}

/// Prints one model's image task as a table.
pub fn print(model: &str, dataset: &str, split: &str, s: &ImageScore) {
    println!(
        "image task {dataset} (finding; {split} split, {} images)",
        s.n
    );
    println!("{:<24}{:>7}{:>18}", "", "acc", "95% interval");
    println!(
        "{model:<24}{:>7.3}{:>18}",
        s.acc,
        format!("[{:.3}, {:.3}]", s.lo, s.hi)
    );
    println!(
        "{:<24}{:>7.3}{:>18}",
        "linear probe",
        s.probe,
        format!("[{:.3}, {:.3}]", s.probe_lo, s.probe_hi)
    );
    println!("{:<24}{:>7.3}", "majority class", s.majority);
    println!("{:<24}{:>7.3}", "chance", s.chance);
    println!(
        "{:<22}{:>8}{:>10}{:>10}{:>10}",
        "F1 per finding",
        "n",
        model.chars().take(9).collect::<String>(),
        "probe",
        "majority"
    );
    for (f, (n, m, p, j)) in &s.per_finding {
        println!("  {f:<20}{n:>8}{m:>10.3}{p:>10.3}{j:>10.3}");
    }
    if let Some(f1) = s.report_f1 {
        println!("generated reports: findings stated against the truth (micro F1 {f1:.3})");
        println!(
            "{:<22}{:>8}{:>11}{:>10}{:>10}",
            "", "n", "precision", "recall", "F1"
        );
        for (f, (n, p, r, f1)) in &s.reports {
            println!("  {f:<20}{n:>8}{p:>11.3}{r:>10.3}{f1:>10.3}");
        }
    }
}
