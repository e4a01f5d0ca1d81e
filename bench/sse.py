"""A streaming OpenAI-style request over the standard library (http.client), timed: the benchmarks of
bench/ use it for Strata and llama-server alike."""
import http.client
import json
import time


def stream(host, port, path, body, key=None, timeout=600):
    """POSTs `body` with stream=True; returns (text, seconds to the first content, seconds in all, completion
    tokens from the usage chunk or None, error or None)."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        conn.request("POST", path, json.dumps(dict(body, stream=True)), headers)
        resp = conn.getresponse()
        if resp.status != 200:
            return "", None, time.perf_counter() - t0, None, f"HTTP {resp.status}: {resp.read()[:300]!r}"
        text, first, usage, done = [], None, None, False
        for raw in resp:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            c = json.loads(data)
            if "error" in c:
                return "".join(text), first, time.perf_counter() - t0, None, str(c["error"])
            if c.get("usage"):
                usage = c["usage"]["completion_tokens"]
            for ch in c.get("choices") or []:
                piece = (ch.get("delta") or {}).get("content") or ch.get("text") or ""
                if piece:
                    if first is None:
                        first = time.perf_counter() - t0
                    text.append(piece)
        err = None if done else "stream ended without [DONE]"
        return "".join(text), first, time.perf_counter() - t0, usage, err
    except (OSError, http.client.HTTPException) as e:
        return "", None, time.perf_counter() - t0, None, repr(e)
    finally:
        conn.close()


def percentile(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]
