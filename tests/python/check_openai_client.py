"""The official `openai` client (PyPI, pinned) against a running `strata serve` (argv[1]: its URL), whose
key file holds sk-admin (*), sk-clinic (base, med-lora, us-lora) and sk-base (base only). Prints OK."""
import json
import sys

import httpx
import openai

url = sys.argv[1] + "/v1"
client = openai.OpenAI(base_url=url, api_key="sk-clinic", max_retries=0)
msgs = [{"role": "user", "content": "Describe the liver."}]

# chat, plain: usage adds up, finish reason is set
r = client.chat.completions.create(model="med-lora", messages=msgs, max_tokens=12, temperature=0)
c = r.choices[0]
assert r.object == "chat.completion" and c.message.role == "assistant", r
assert c.finish_reason in ("stop", "length"), c
u = r.usage
assert u.total_tokens == u.prompt_tokens + u.completion_tokens and u.completion_tokens <= 12, u

# streaming with usage: deltas concatenate to the plain answer; a last chunk with usage and no choices
chunks = list(client.chat.completions.create(model="med-lora", messages=msgs, max_tokens=12, temperature=0,
                                             stream=True, stream_options={"include_usage": True}))
text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
assert text == c.message.content, (text, c.message.content)
assert chunks[-1].choices == [] and chunks[-1].usage is not None, chunks[-1]
assert chunks[-1].usage.completion_tokens == u.completion_tokens, (chunks[-1].usage, u)
assert all(ch.usage is None for ch in chunks[:-1])

# completions, plain and streamed
r = client.completions.create(model="us-lora", prompt="The liver", max_tokens=10, temperature=0)
assert r.object == "text_completion" and r.usage.completion_tokens <= 10, r
s = "".join(ch.choices[0].text for ch in client.completions.create(
    model="us-lora", prompt="The liver", max_tokens=10, temperature=0, stream=True) if ch.choices)
assert s == r.choices[0].text, (s, r.choices[0].text)

# stop sequences: the text ends before the stop string
full = client.completions.create(model="base", prompt="The liver", max_tokens=24, temperature=0,
                                 extra_body={"ignore_eos": True}).choices[0].text
stop = full[4:6]
assert stop.strip(), full
cut = client.completions.create(model="base", prompt="The liver", max_tokens=24, temperature=0, stop=[stop],
                                extra_body={"ignore_eos": True}).choices[0]
assert cut.text == full[:full.index(stop)] and cut.finish_reason == "stop", (cut, full, stop)

# seed: sampled twice with one seed → the same; another seed → (almost surely) different
def sample(seed):
    return client.chat.completions.create(model="us-lora", messages=msgs, max_tokens=20, temperature=1.0,
                                          seed=seed, extra_body={"ignore_eos": True}).choices[0].message.content
a, b, other = sample(7), sample(7), sample(8)
assert a == b, (a, b)
assert a != other, (a, other)

# JSON mode: the content parses as an object when the model ends it (else: a valid prefix, cut by length)
for seed in range(3):
    r = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "JSON please"}],
                                       response_format={"type": "json_object"}, max_tokens=30, seed=seed)
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict), r

# n and logprobs
r = client.chat.completions.create(model="base", messages=msgs, max_tokens=5, n=2, seed=1,
                                   logprobs=True, top_logprobs=3)
assert len(r.choices) == 2 and len(r.choices[0].logprobs.content[0].top_logprobs) == 3, r

# models: the key's three
ids = sorted(m.id for m in client.models.list().data)
assert ids == ["base", "med-lora", "us-lora"], ids

# errors, each the client's own exception class
def expect(exc, f):
    try:
        f()
    except exc as e:
        return e
    raise AssertionError(f"no {exc.__name__}")

e = expect(openai.NotFoundError, lambda: client.chat.completions.create(model="radiology", messages=msgs))
assert "radiology" in str(e), e
bad = openai.OpenAI(base_url=url, api_key="sk-wrong", max_retries=0)
expect(openai.AuthenticationError, lambda: bad.chat.completions.create(model="base", messages=msgs))
narrow = openai.OpenAI(base_url=url, api_key="sk-base", max_retries=0)
e = expect(openai.PermissionDeniedError,
           lambda: narrow.chat.completions.create(model="us-lora", messages=msgs, max_tokens=2))
assert "us-lora" in str(e), e
e = expect(openai.BadRequestError,
           lambda: client.chat.completions.create(model="base", messages=msgs, max_tokens=100000))
assert "max_tokens" in str(e), e
e = expect(openai.BadRequestError,
           lambda: client.completions.create(model="base", prompt="liver " * 400, max_tokens=10))
assert "maximum context length" in str(e), e
h = {"Authorization": "Bearer sk-clinic", "Content-Type": "application/json"}
resp = httpx.post(url + "/chat/completions", content=b'{"model": "base", "messages": [', headers=h)
assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error", resp.text
resp = httpx.post(url + "/chat/completions", content=b"{}", headers={"Content-Type": "application/json"})
assert resp.status_code == 401 and "API key" in resp.json()["error"]["message"], resp.text

# adapters at run time: unload, list, load again (admin key only)
admin = {"Authorization": "Bearer sk-admin"}
assert "us-lora" in [a["id"] for a in httpx.get(url + "/adapters", headers=admin).json()["data"]]
assert httpx.delete(url + "/adapters/us-lora", headers=h).status_code == 403
assert httpx.delete(url + "/adapters/us-lora", headers=admin).json()["deleted"] is True
assert "us-lora" not in [a["id"] for a in httpx.get(url + "/adapters", headers=admin).json()["data"]]
r = httpx.post(url + "/adapters", json={"name": "us-lora"}, headers=admin).json()
assert r["chain"] == ["med-lora", "us-lora"] and r["base"] == "base", r
assert sample(7) == a  # reloaded, the same adapter gives the same text
print("OK")
