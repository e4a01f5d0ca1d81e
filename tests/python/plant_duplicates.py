"""Plants three near-duplicates into a folder written by `strata domain ultrasound-images`: us00000 re-encoded as
JPEG (quality 70), us00005 resized to 3/4, us00010 brightened by 25 levels; each as another patient in the test split (the
originals carry no split: train), appended to labels.jsonl. Pillow is the independent encoder. `convert PNG` rewrites one picture as BMP and JPEG."""
import json, pathlib, sys

from PIL import Image

if sys.argv[1] == "convert":
    # `convert PNG`: the picture also as BMP and JPEG beside it (the PNG removed)
    src = pathlib.Path(sys.argv[2])
    im = Image.open(src)
    im.save(src.with_suffix(".bmp"))
    im.save(src.with_suffix(".jpg"), quality=90)
    src.unlink()
    sys.exit(0)

root = pathlib.Path(sys.argv[1])
recs = {json.loads(l)["file"]: json.loads(l) for l in (root / "labels.jsonl").read_text().splitlines()}
out = []
for i, (kind, src) in enumerate([("jpeg", "us00000"), ("resize", "us00005"), ("bright", "us00010")]):
    r = recs[f"images/{src}.png"]
    im = Image.open(root / r["file"])
    if kind == "jpeg":
        name = f"images/zz-{kind}.jpg"
        im.save(root / name, quality=70)
    elif kind == "resize":
        name = f"images/zz-{kind}.png"
        im.resize((im.width * 3 // 4, im.height * 3 // 4), Image.BILINEAR).save(root / name)
    else:
        name = f"images/zz-{kind}.png"
        Image.eval(im, lambda v: min(255, v + 25)).save(root / name)
    out.append({"file": name, "labels": r["labels"], "patient": f"COPY{i}", "text": r["text"], "split": "test"})
with open(root / "labels.jsonl", "a") as f:
    for o in out:
        f.write(json.dumps(o) + "\n")
print(json.dumps({"planted": len(out)}))
