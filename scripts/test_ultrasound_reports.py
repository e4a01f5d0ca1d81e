#!/usr/bin/env python3
"""Tests of the synthetic ultrasound report generator, on a hand-written findings file (no download needed)."""
import json
import os
import re
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ultrasound_reports as us  # noqa: E402

FINDINGS = [
    {"name": "Aortic diameter >5.5 cm", "description": "Threshold for intervention.",
     "pathology_name": "Abdominal Aortic Aneurysm (AAA)", "modality": "US", "acr_topic": "Vascular"},
    {"name": "Mural thrombus", "description": "", "pathology_name": "Abdominal Aortic Aneurysm (AAA)",
     "modality": "US", "acr_topic": "Vascular"},
    {"name": "Simple Cyst", "description": "Anechoic, smooth walls", "pathology_name": "Follicular Cyst",
     "modality": "US", "acr_topic": "Ultrasound"},
    {"name": "Cogwheel sign", "description": "Transverse tubal view",
     "pathology_name": "Pelvic Inflammatory Disease (PID)", "modality": "US", "acr_topic": "Genitourinary Imaging"},
    {"name": "Focal uptake", "description": "Not ultrasound", "pathology_name": "Abdominal Abscess",
     "modality": "NM", "acr_topic": "Nuclear Medicine"},
]


class GeneratorTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "findings.json")
        with open(self.path, "w") as f:
            json.dump(FINDINGS, f)

    def tearDown(self):
        self.dir.cleanup()

    def test_only_ultrasound_findings_are_used(self):
        pathologies, n = us.load_findings(self.path)
        self.assertEqual(n, 4)  # the NM row is dropped
        self.assertNotIn("Abdominal Abscess", [p for p, _ in pathologies])

    def test_same_seed_same_reports_other_seed_differs(self):
        a = list(us.generate(self.path, 50, seed=7))
        b = list(us.generate(self.path, 50, seed=7))
        c = list(us.generate(self.path, 50, seed=8))
        self.assertEqual(a, b)
        self.assertNotEqual(a, c)

    def test_report_has_every_section_and_is_marked_synthetic(self):
        for rec in us.generate(self.path, 100, seed=1):
            self.assertTrue(rec["synthetic"])
            for section in ("EXAMINATION:", "ORGAN:", "FINDINGS:", "MEASUREMENTS:", "IMPRESSION:"):
                self.assertIn(section, rec["text"])
            self.assertIn(rec["pathology"], rec["text"].split("IMPRESSION:")[1])

    def test_organ_mapping(self):
        self.assertEqual(us.organ_for(FINDINGS[0])[0], "aorta")
        self.assertEqual(us.organ_for(FINDINGS[2])[0], "ovary")  # "follic" -> ovary
        self.assertEqual(us.organ_for(FINDINGS[3])[0], "adnexa")  # "pelvic" -> adnexa

    def test_measurements_in_range(self):
        for rec in us.generate(self.path, 200, seed=3):
            dims = [float(x) for x in re.search(r"measures ([\d.]+) x ([\d.]+) x ([\d.]+) cm", rec["text"]).groups()]
            self.assertEqual(dims, sorted(dims, reverse=True))
            self.assertTrue(all(0.4 <= d <= 4.5 for d in dims))
            if rec["organ"] == "aorta":
                size = float(re.search(r"The aorta measures ([\d.]+) cm", rec["text"]).group(1))
                self.assertTrue(1.6 <= size <= 2.4)

    def test_cli_is_atomic_and_idempotent(self):
        out = os.path.join(self.dir.name, "out", "reports.jsonl")
        us.main(["--findings", self.path, "--out", out, "--count", "10", "--seed", "5"])
        first = open(out).read()
        self.assertEqual(len(first.splitlines()), 10)
        us.main(["--findings", self.path, "--out", out, "--count", "99", "--seed", "6"])  # exists: kept
        self.assertEqual(open(out).read(), first)
        self.assertFalse(os.path.exists(out + ".tmp"))


if __name__ == "__main__":
    unittest.main()
