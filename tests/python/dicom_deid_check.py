"""Checks `strata deid dicom` with pydicom against PS3.15 Table E.1-1 (crates/strata-image/data/annex_e.tsv).

make TABLE DIR   writes three DICOM files (and ../noregion/n1.dcm: burned-in text, no regions) (two of patient P1 in one study, one of patient P2) with invented PHI in
                 every attribute of the table that pydicom's dictionary knows, in a nested sequence and in private
                 tags, a burned-in band above the declared ultrasound region; DIR/expected.json lists what each
                 file held.
check TABLE DIR OUT   reads the de-identified files back with pydicom and prints one JSON report: attributes that
                 the table says to remove or replace and that kept their value (violations), private tags left, the
                 band's largest pixel, new study UIDs, and the date offset of each file.
"""
import datetime, json, pathlib, sys

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.datadict import keyword_for_tag
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

TEXT = {"LO", "SH", "ST", "LT", "UT", "UC"}
SKIP = {0x7FE00010, 0x00280010, 0x00280011, 0x00080016, 0x00080018}  # pixel data and what reading needs


def table(path):
    rows = []
    for line in pathlib.Path(path).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        tag, vr, kw, basic, dates, desc = (line.split("\t") + ["", ""])[:6]
        tag = int(tag, 16)
        if dates == "C" and vr in ("DA", "DT"):
            action = "shift"
        elif dates == "C" and vr == "TM":
            action = "keep"
        elif desc == "C" and vr in TEXT:
            action = "clean"
        elif basic == "X/Z/U*":
            action = "keep"
        else:
            action = "change"
        rows.append((tag, vr, kw, action))
    return rows


def phi(tag, vr, n):
    return {
        "PN": "DOE^JANE", "LO": f"JANE DOE {tag:08X}", "LT": f"JANE DOE {tag:08X}", "ST": f"JANE DOE {tag:08X}",
        "UT": f"JANE DOE {tag:08X}", "UC": f"JANE DOE {tag:08X}", "SH": f"PHI{tag:08X}", "CS": "PHICS",
        "DA": "20240115", "DT": "20240115103000", "TM": "103000", "UI": f"1.2.826.0.1.3680043.10.999.{n}",
        "AS": "045Y", "IS": "42", "DS": "42.5", "US": 42, "SS": 42, "UL": 42, "SL": 42, "FL": 4.25, "FD": 4.25,
        "AE": "PHIAE", "UR": "http://phi.example/x", "OB": b"PHIPHI", "OW": b"PHIPHI", "UV": 42, "SV": 42,
    }.get(vr)


def make_file(rows, path, patient, study_uid, seed):
    ds = Dataset()
    n = 0
    held = []
    for tag, vr, kw, action in rows:
        if tag in SKIP or (tag >> 16) in (0x0000, 0x0002) or vr in ("UN", "SQ", "AT", "OF", "OD", "OL", "OV") or not kw:
            continue
        n += 1
        v = phi(tag, vr, n)
        if v is None:
            continue
        ds.add_new(tag, vr, v)
        held.append({"tag": tag, "keyword": kw, "vr": vr, "action": action, "value": str(v)})
    # sequences of the table: one item each, PHI inside
    for tag, vr, kw, action in rows:
        if vr == "SQ" and kw and (tag >> 16) not in (0x0000, 0x0002):
            item = Dataset()
            item.PatientName = "DOE^JANE"
            item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.10.999.{tag}"
            item.TextValue = "Seen by JANE DOE"  # not in the table: a sequence to replace must not keep it
            ds.add_new(tag, "SQ", Sequence([item]))
            held.append({"tag": tag, "keyword": kw, "vr": "SQ", "action": action, "value": "nested"})
    ds.PatientID = patient
    ds.PatientName = "DOE^JANE" if patient == "MRN1001" else "ROE^RICHARD"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20240115"
    ds.StudyDescription = f"US LIVER for {'JANE DOE' if patient == 'MRN1001' else 'RICHARD ROE'} {patient}"
    ds.Modality = "US"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.998.{seed}"
    # private tags, one nested
    block = ds.private_block(0x0009, "STRATA TEST", create=True)
    block.add_new(0x01, "LO", "JANE DOE MRN P1")
    inner = Dataset()
    inner.PatientName = "DOE^JANE"
    block.add_new(0x02, "SQ", Sequence([inner]))
    # pixels: a burned-in band (rows 0–9) above the declared region
    rows_, cols = 48, 64
    px = (np.arange(rows_ * cols).reshape(rows_, cols) % 200 + 20).astype(np.uint8)
    px[:10, 5:60] = 255
    ds.Rows, ds.Columns = rows_, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "YES"
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.RegionDataType = 1
    region.RegionFlags = 0
    region.RegionLocationMinX0 = 0
    region.RegionLocationMinY0 = 10
    region.RegionLocationMaxX1 = cols - 1
    region.RegionLocationMaxY1 = rows_ - 1
    ds.SequenceOfUltrasoundRegions = Sequence([region])
    ds.PixelData = px.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return held


def make(tab, out):
    rows = table(tab)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    exp = {}
    for name, patient, study, seed in [("a1.dcm", "MRN1001", "1.2.826.0.1.3680043.10.997.1", 1),
                                       ("a2.dcm", "MRN1001", "1.2.826.0.1.3680043.10.997.1", 2),
                                       ("b1.dcm", "MRN2002", "1.2.826.0.1.3680043.10.997.2", 3)]:
        exp[name] = {"patient": patient, "study": study, "held": make_file(rows, out / name, patient, study, seed)}
    (out / "expected.json").write_text(json.dumps(exp))
    # burned-in text and no Sequence of Ultrasound Regions: to be refused unless rectangles to blank are given
    (out.parent / "noregion").mkdir(exist_ok=True)
    ds = pydicom.dcmread(out / "a1.dcm")
    del ds.SequenceOfUltrasoundRegions
    ds.save_as(out.parent / "noregion" / "n1.dcm", enforce_file_format=True)
    print(json.dumps({"files": len(exp), "attributes": len(exp["a1.dcm"]["held"])}))


def days(a, b):
    return (datetime.date(int(b[:4]), int(b[4:6]), int(b[6:8])) - datetime.date(int(a[:4]), int(a[4:6]), int(a[6:8]))).days


def check(tab, src, out):
    src, out = pathlib.Path(src), pathlib.Path(out)
    exp = json.loads((src / "expected.json").read_text())
    report = {"files_read": 0, "checked": 0, "violations": [], "private_left": 0, "band_max": {}, "study_uids": {},
              "offsets": {}, "descriptions": {}, "pixels_read": 0, "identity_removed": {}}
    for name, e in exp.items():
        ds = pydicom.dcmread(out / name)
        report["files_read"] += 1
        px = ds.pixel_array
        report["pixels_read"] += 1
        report["band_max"][name] = int(px[:10].max())
        report["region_changed"] = bool(report.get("region_changed", False)) or bool((px[10:] == 0).all())
        report["study_uids"][name] = str(ds.StudyInstanceUID)
        report["offsets"][name] = days("20240115", str(ds.StudyDate))
        report["descriptions"][name] = str(ds.get("StudyDescription", ""))
        report["identity_removed"][name] = str(ds.get("PatientIdentityRemoved", ""))
        for h in e["held"]:
            report["checked"] += 1
            tag, action = h["tag"], h["action"]
            el = ds.get(tag)
            if action == "change":
                if el is None:
                    continue
                if h["vr"] == "SQ":
                    # a replaced sequence: nothing of the item's PHI may remain
                    for item in el.value:
                        if str(item.get("PatientName", "")) == "DOE^JANE" or \
                                str(item.get("ReferencedSOPInstanceUID", "")) == f"1.2.826.0.1.3680043.10.999.{tag}" or \
                                "JANE" in str(item.get("TextValue", "")):
                            report["violations"].append({"file": name, "keyword": h["keyword"], "nested": True})
                    continue
                if str(el.value) == h["value"]:
                    report["violations"].append({"file": name, "keyword": h["keyword"], "value": h["value"]})
            elif action == "shift" and el is not None and str(el.value)[:8] == h["value"][:8]:
                report["violations"].append({"file": name, "keyword": h["keyword"], "shift": h["value"]})
            elif action == "clean" and el is not None and "JANE" in str(el.value).upper():
                report["violations"].append({"file": name, "keyword": h["keyword"], "clean": str(el.value)})
            elif action == "keep" and h["vr"] == "SQ" and el is not None:
                for item in el.value:
                    if str(item.get("PatientName", "")) == "DOE^JANE" or \
                            str(item.get("ReferencedSOPInstanceUID", "")) == f"1.2.826.0.1.3680043.10.999.{tag}":
                        report["violations"].append({"file": name, "keyword": h["keyword"], "nested_keep": True})
        for el in ds.iterall():
            if el.tag.is_private:
                report["private_left"] += 1
    print(json.dumps(report))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    else:
        check(sys.argv[2], sys.argv[3], sys.argv[4])
