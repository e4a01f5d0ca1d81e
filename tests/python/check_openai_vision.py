"""The official `openai` client (PyPI, pinned) sends images to a running `strata serve` (argv[1]: its URL) and a
vision-language model (argv[2]) answers; argv[3] and argv[4] are two of its PNG images, argv[5] a text model of
the same store, argv[6] the file holding what `strata generate --image argv[3]` answered greedily to QUESTION.
The server runs with --max-image-bytes 60000 --image-url-hosts 127.0.0.1. Prints OK.

Checks: the answer over HTTP equals the CLI's; image and text requests sent together (one continuous batch)
answer as each alone; a repeated image is served from the feature cache (/metrics); an http URL on the allowed
host is fetched and answers as the data URL; bad input is an OpenAI-shaped 400 or 413 naming what is wrong
(a host not allowed, a 404, a redirect, an image over the limit), and the server keeps serving."""
import base64
import concurrent.futures
import io
import sys
import urllib.request

import openai
from PIL import Image

url, model, png1, png2, text_model, expect_file = sys.argv[1:7]
QUESTION = "Write the report for this ultrasound image."
client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)


def data_url(raw, mime="image/png"):
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def ask(image_urls, question=QUESTION, m=model, max_tokens=12):
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in image_urls]
    parts.append({"type": "text", "text": question})
    r = client.chat.completions.create(model=m, messages=[{"role": "user", "content": parts}],
                                       max_tokens=max_tokens, temperature=0)
    return r.choices[0].message.content


img1, img2 = open(png1, "rb").read(), open(png2, "rb").read()
want = open(expect_file).read().strip()
got = ask([data_url(img1)])
assert got.strip() == want, (got, want)

# the same image as JPEG decodes too; a text request beside image requests: each answers as alone
jpeg = io.BytesIO()
Image.open(png2).convert("RGB").save(jpeg, format="JPEG", quality=95)
alone = {"a": ask([data_url(img1)]), "b": ask([data_url(jpeg.getvalue(), "image/jpeg")]),
         "t": client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Describe the liver."}],
                                             max_tokens=12, temperature=0).choices[0].message.content}
with concurrent.futures.ThreadPoolExecutor(6) as pool:
    futs = {
        "a": pool.submit(ask, [data_url(img1)]),
        "b": pool.submit(ask, [data_url(jpeg.getvalue(), "image/jpeg")]),
        "t": pool.submit(lambda: client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Describe the liver."}], max_tokens=12,
            temperature=0).choices[0].message.content),
    }
    together = {k: f.result() for k, f in futs.items()}
assert together == alone, (together, alone)

metrics = urllib.request.urlopen(url + "/metrics").read().decode()
hits = [l for l in metrics.splitlines() if l.startswith("strata_images_total") and f'model="{model}"' in l]
assert any('cached="true"' in l for l in hits) and any('cached="false"' in l for l in hits), hits


def refused(status, words, **kw):
    try:
        client.chat.completions.create(model=kw.pop("m", model), max_tokens=4, **kw)
    except openai.APIStatusError as e:
        assert e.status_code == status, (e.status_code, e.message)
        assert all(w in e.message for w in words), (e.message, words)
        return
    raise AssertionError(f"accepted: {kw}")


def user(parts):
    return [{"role": "user", "content": parts}]


refused(400, ["not base64"], messages=user([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]))
refused(400, ["not fetched from URLs"], messages=user([{"type": "image_url", "image_url": {"url": "https://example.org/a.png"}}]))
refused(400, ["not a PNG, JPEG or BMP"], messages=user([{"type": "image_url", "image_url": {"url": data_url(b"not an image at all")}}]))
refused(400, ["5 images", "at most 4"], messages=user([{"type": "image_url", "image_url": {"url": data_url(img1)}}] * 5))
refused(400, ["text model"], m=text_model, messages=user([{"type": "image_url", "image_url": {"url": data_url(img1)}}]))
refused(400, ["placeholders"], messages=user("<image>\nWhat is this?"))
import random
noise = io.BytesIO()
Image.frombytes("L", (300, 300), random.Random(1).randbytes(90000)).save(noise, format="PNG")
refused(413, ["larger than", "60000"], messages=user([{"type": "image_url", "image_url": {"url": data_url(noise.getvalue())}}]))

# images at http URLs on the allowed host: fetched, the same answer; a 404, a redirect (even to the same host)
# and a body over --max-image-bytes are refused by name
import http.server
import threading


class Images(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = {"/a.png": img1, "/noise.png": noise.getvalue()}.get(self.path)
        if self.path == "/moved.png":
            self.send_response(302)
            self.send_header("Location", "/a.png")
            self.end_headers()
        elif body is None:
            self.send_error(404)
        else:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args):
        pass


files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Images)
threading.Thread(target=files.serve_forever, daemon=True).start()
base = f"http://127.0.0.1:{files.server_address[1]}"
assert ask([base + "/a.png"]).strip() == want
refused(400, ["HTTP 404", "/missing.png"], messages=user([{"type": "image_url", "image_url": {"url": base + "/missing.png"}}]))
refused(400, ["redirects are not followed"], messages=user([{"type": "image_url", "image_url": {"url": base + "/moved.png"}}]))
refused(413, ["larger than", "60000"], messages=user([{"type": "image_url", "image_url": {"url": base + "/noise.png"}}]))
refused(400, ["--image-url-hosts"], messages=user([{"type": "image_url", "image_url": {"url": "http://localhost:1/a.png"}}]))
files.shutdown()

# still serving
assert ask([data_url(img1)]).strip() == want
print("OK")
