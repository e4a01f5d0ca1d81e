//! The PII stage of preprocessing: [`strata_deid::Deid`] applied to each document, its counts per kind in
//! the document's metadata as `pii: {kind: n}`. A document whose metadata names its `patient_id` is keyed by
//! that patient (with the secret of STRATA_DEID_SECRET), so its dates move as the patient's DICOM files do.

use strata_deid::Deid;

use super::{Stage, Verdict};
use crate::Doc;

impl Stage for Deid {
    fn name(&self) -> &'static str {
        "pii_redact"
    }
    fn apply(&self, mut doc: Doc) -> Verdict {
        let patient = doc.meta.get("patient_id").and_then(|v| v.as_str());
        let key = self.doc_key(&doc.id, patient);
        let (text, counts) = self.redact_keyed(&doc.text, &key);
        if !counts.is_empty() {
            let m: serde_json::Map<String, serde_json::Value> = counts
                .into_iter()
                .map(|(k, n)| (k.tag().to_ascii_lowercase(), n.into()))
                .collect();
            doc.meta.insert("pii".into(), m.into());
            doc.text = text;
        }
        Verdict::Keep(doc)
    }
    fn tally(&self, doc: &Doc) -> Vec<(String, usize)> {
        doc.meta
            .get("pii")
            .and_then(|v| v.as_object())
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), usize::try_from(v.as_u64()?).ok()?)))
                    .collect()
            })
            .unwrap_or_default()
    }
}
