"""Pixel parity of Strata's DICOM reader with pydicom (the independent reference).

make DIR   writes DICOM files with pydicom into DIR: every transfer syntax Strata reads (explicit and implicit VR
           little endian, explicit big endian, deflated, RLE Lossless, JPEG baseline), 8- and 16-bit, signed and
           unsigned, gray and RGB (planar configuration 0 and 1), single- and multi-frame; plus the DICOM test
           files that ship inside the pydicom package that use those syntaxes. Also DIR/expected/<name>.npy:
           pydicom's pixel_array in Strata's convention (frames first; signed 16-bit + 32768 as uint16).
bad DIR    writes DICOM files Strata must quarantine (truncated, JPEG 2000, JPEG-LS, 1-bit, an unknown transfer
           syntax).
check DIR DATASET   compares every image of the Strata dataset (records.jsonl + PNGs) with the expected arrays;
           prints one JSON line per file: frames compared, largest absolute difference.
"""
import io, json, pathlib, shutil, sys

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
                         DeflatedExplicitVRLittleEndian, RLELossless, JPEGBaseline8Bit, generate_uid)

BAD_FILES = {"truncated.dcm": "MR_truncated.dcm", "jpeg2000.dcm": "JPEG2000.dcm", "jpeg_ls.dcm": "MR_small_jpeg_ls_lossless.dcm",
             "one_bit.dcm": "liver_1frame.dcm"}

PYDICOM_FILES = [
    "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
    "CT_small.dcm", "SC_rgb_rle.dcm", "SC_rgb_rle_2frame.dcm", "SC_rgb_rle_16bit.dcm", "SC_rgb_rle_16bit_2frame.dcm",
    "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_dcmtk_+eb+cy+s2.dcm", "examples_ybr_color.dcm",
    "examples_rgb_color.dcm", "image_dfl.dcm", "SC_rgb_small_odd.dcm",
]
LOSSY = {"SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_dcmtk_+eb+cy+s2.dcm",
         "examples_ybr_color.dcm", "made_jpeg_baseline_rgb.dcm", "made_jpeg_baseline_gray.dcm"}


def base(rows, cols, spp, bits, signed, frames, photometric):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.PatientID = "PARITY"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = spp
    ds.PhotometricInterpretation = photometric
    if spp == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    return ds


def pattern(rows, cols, spp, dtype, frames, seed):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    shape = (frames, rows, cols) + ((spp,) if spp > 1 else ())
    smooth = np.add.outer(np.arange(rows), np.arange(cols)).astype(np.float64)
    a = rng.integers(info.min, info.max, size=shape, dtype=np.int64)
    a[..., : rows // 2, :] = 0  # a flat half, a noisy half: RLE runs and literals both exercised
    a = a + (smooth[None, ..., None] if spp > 1 else smooth[None])
    return np.clip(a, info.min, info.max).astype(dtype)


def save(ds, arr, path, ts, planar=0):
    frames = ds.get("NumberOfFrames", 1)
    a = arr if frames > 1 else arr[0]
    if ds.SamplesPerPixel == 3 and planar == 1:
        ds.PlanarConfiguration = 1
        # planar layout: per frame, RRR…GGG…BBB…
        a = np.moveaxis(arr, -1, 1).copy() if frames > 1 else np.moveaxis(arr[0], -1, 0).copy()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = a.tobytes()
    if ts == RLELossless:
        ds.PlanarConfiguration = 0 if ds.SamplesPerPixel == 3 else None
        if ds.SamplesPerPixel != 3:
            del ds.PlanarConfiguration
        ds.PixelData = (arr if frames > 1 else arr[0]).tobytes()
        ds.compress(RLELossless, encoding_plugin="pydicom")
    elif ts in (ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian):
        ds.file_meta.TransferSyntaxUID = ts
    ds.save_as(path, enforce_file_format=True)


def jpeg(path, rgb):
    from PIL import Image
    rows, cols = 48, 64
    arr = (np.linspace(0, 255, rows * cols).reshape(rows, cols)[..., None] * np.ones(3)).astype(np.uint8) if rgb else \
        np.linspace(0, 255, rows * cols).reshape(rows, cols).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90, subsampling=0)
    ds = base(rows, cols, 3 if rgb else 1, 8, False, 1, "YBR_FULL" if rgb else "MONOCHROME2")
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = pydicom.encaps.encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    ds.save_as(path, enforce_file_format=True)


def expected(path):
    ds = pydicom.dcmread(path)
    a = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        a = a[None]
    if a.dtype.kind == "i":
        a = (a.astype(np.int32) + 32768).astype(np.uint16)
    return a


def make(out):
    out = pathlib.Path(out)
    (out / "expected").mkdir(parents=True, exist_ok=True)
    made = []
    for name, (rows, cols, spp, bits, signed, frames, ts, planar) in {
        "made_explicit_u8": (40, 52, 1, 8, False, 1, ExplicitVRLittleEndian, 0),
        "made_implicit_u16": (33, 47, 1, 16, False, 1, ImplicitVRLittleEndian, 0),
        "made_bigendian_s16": (32, 30, 1, 16, True, 1, ExplicitVRBigEndian, 0),
        "made_deflated_u8": (32, 32, 1, 8, False, 1, DeflatedExplicitVRLittleEndian, 0),
        "made_rgb_planar1": (24, 36, 3, 8, False, 1, ExplicitVRLittleEndian, 1),
        "made_cine_u8_5frames": (32, 40, 1, 8, False, 5, ExplicitVRLittleEndian, 0),
        "made_rle_u8": (40, 52, 1, 8, False, 1, RLELossless, 0),
        "made_rle_s16_3frames": (31, 29, 1, 16, True, 3, RLELossless, 0),
        "made_rle_rgb": (24, 36, 3, 8, False, 1, RLELossless, 0),
    }.items():
        dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}[(bits, signed)]
        arr = pattern(rows, cols, spp, dtype, frames, sum(name.encode()))
        ds = base(rows, cols, spp, bits, signed, frames, "RGB" if spp == 3 else "MONOCHROME2")
        save(ds, arr, out / f"{name}.dcm", ts, planar)
        made.append(f"{name}.dcm")
    jpeg(out / "made_jpeg_baseline_rgb.dcm", True)
    jpeg(out / "made_jpeg_baseline_gray.dcm", False)
    made += ["made_jpeg_baseline_rgb.dcm", "made_jpeg_baseline_gray.dcm"]
    for f in PYDICOM_FILES:
        shutil.copy(get_testdata_file(f), out / f)
        made.append(f)
    for f in made:
        np.save(out / "expected" / (f[:-4] + ".npy"), expected(out / f))
    print(json.dumps({"files": len(made)}))


def read_png(path):
    """A minimal PNG reader (non-interlaced gray/RGB, 8 or 16 bits), so that the check does not depend on how
    an imaging library converts 16-bit colour."""
    import struct, zlib
    data = pathlib.Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    assert interlace == 0 and color in (0, 2) and depth in (8, 16), (path, color, depth)
    ch = 3 if color == 2 else 1
    bpp = ch * depth // 8
    stride = w * bpp
    raw = zlib.decompress(idat)
    out = np.zeros((h, stride), dtype=np.int32)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = np.frombuffer(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)], dtype=np.uint8).astype(np.int32)
        cur = np.zeros(stride, dtype=np.int32)
        for x in range(stride):
            a = cur[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 0:
                p = 0
            elif f == 1:
                p = a
            elif f == 2:
                p = b
            elif f == 3:
                p = (a + b) // 2
            else:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                p = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[x] = (line[x] + p) & 0xFF
        out[y] = cur
        prev = cur
    b = out.astype(np.uint8)
    a = b.view(">u2").astype(np.uint16) if depth == 16 else b
    return a.reshape(h, w, ch) if ch == 3 else a.reshape(h, w)


def check(out, dataset):
    out, dataset = pathlib.Path(out), pathlib.Path(dataset)
    recs = [json.loads(l) for l in (dataset / "records.jsonl").read_text().splitlines() if l.strip()]
    by_source = {}
    for r in recs:
        by_source.setdefault(pathlib.Path(r["source"]).name, []).append(r)
    for npy in sorted((out / "expected").glob("*.npy")):
        name = npy.stem + ".dcm"
        exp = np.load(npy)
        got_recs = sorted(by_source.get(name, []), key=lambda r: r["frame"])
        result = {"file": name, "frames_expected": int(exp.shape[0]), "frames": len(got_recs), "lossy": name in LOSSY}
        diffs = []
        for r in got_recs:
            a = read_png(dataset / r["file"])
            e = exp[r["frame"]]
            if a.shape != e.shape:
                result["shape"] = [list(a.shape), list(e.shape)]
                diffs.append(10**9)
                continue
            diffs.append(int(np.abs(a.astype(np.int64) - e.astype(np.int64)).max()))
            result.setdefault("mean_abs", 0.0)
            result["mean_abs"] = max(result["mean_abs"], float(np.abs(a.astype(np.float64) - e).mean()))
        result["max_abs"] = max(diffs) if diffs else None
        print(json.dumps(result))


def bad(out):
    """Files Strata must quarantine with a one-line reason: pydicom's own truncated file, transfer syntaxes
    without a codec here (JPEG 2000, JPEG-LS), 1-bit pixels, and a file whose transfer syntax UID is unknown."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, src in BAD_FILES.items():
        shutil.copy(get_testdata_file(src), out / name)
    ds = base(8, 8, 1, 8, False, 1, "MONOCHROME2")
    ds.PixelData = bytes(64)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(out / "unknown_ts.dcm", enforce_file_format=True)
    raw = (out / "unknown_ts.dcm").read_bytes()
    # same length, so the meta group length stays right: 1.2.840.10008.1.2.1 -> 1.2.840.99999.1.2.1
    (out / "unknown_ts.dcm").write_bytes(raw.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.99999.1.2.1\x00", 1))
    print(json.dumps({"files": len(BAD_FILES) + 1}))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    elif sys.argv[1] == "bad":
        bad(sys.argv[2])
    else:
        check(sys.argv[2], sys.argv[3])
