"""The chat page of a running `strata serve` (argv[1]) in headless Chromium (Debian's chromium and
chromium-driver, driven by selenium): the key entered, two models picked, a prompt sent, both answers
stream in, each the same text and token count as the server's own greedy answer to that request. Prints OK."""
import json
import sys
import time
import urllib.request

from selenium.webdriver.common.by import By

import chromium

driver = chromium.driver()
try:
    driver.get(sys.argv[1] + "/")
    key = driver.find_element(By.ID, "key")
    key.clear()
    key.send_keys("sk-clinic")
    driver.execute_script("document.getElementById('key').dispatchEvent(new Event('change'))")
    deadline = time.time() + 20
    boxes = []
    while time.time() < deadline:
        boxes = driver.find_elements(By.CSS_SELECTOR, "input.model")
        if len(boxes) == 3:
            break
        time.sleep(0.1)
    time.sleep(0.3)  # the list may be redrawn once the key is taken
    ids = [b.get_attribute("value") for b in driver.find_elements(By.CSS_SELECTOR, "input.model")]
    assert sorted(ids) == ["base", "med-lora", "us-lora"], ids
    # pick base and us-lora (clicking the labels a user would click); the list is redrawn when the key
    # changes, so a click may hit an element that was just replaced: try again
    from selenium.common.exceptions import StaleElementReferenceException
    for _ in range(50):
        try:
            for label in driver.find_elements(By.CSS_SELECTOR, "#models label"):
                box = label.find_element(By.CSS_SELECTOR, "input.model")
                if box.is_selected() != (box.get_attribute("value") in ("base", "us-lora")):
                    label.click()
            picked = sorted(b.get_attribute("value") for b in driver.find_elements(By.CSS_SELECTOR, "input.model:checked"))
            if picked == ["base", "us-lora"]:
                break
        except StaleElementReferenceException:
            pass
        time.sleep(0.1)
    driver.find_element(By.ID, "prompt").send_keys("Describe the liver.")
    driver.find_element(By.ID, "max").clear()
    driver.find_element(By.ID, "max").send_keys("16")
    driver.find_element(By.ID, "send").click()
    # one snapshot of every card's text and meta, taken by the page's own script: reading texts and metas in
    # separate calls raced with the stream (a text read before its last pieces, its meta read after the
    # usage chunk, which comes last, showed a cut answer as done)
    snap = """return [...document.querySelectorAll('.answer')].map(c => [c.dataset.model,
        c.querySelector('.text').textContent, c.querySelector('.meta').textContent]);"""
    cards = []
    while time.time() < deadline + 20:
        cards = driver.execute_script(snap)
        if len(cards) == 2 and all("tokens in" in m for _, _, m in cards):
            break
        time.sleep(0.1)
    answers = {m: t for m, t, _ in cards}
    metas = {m: meta for m, _, meta in cards}
    assert sorted(answers) == ["base", "us-lora"], answers
    # each card holds what the server answers to the same request (greedy, so the same tokens), and counts
    # its tokens: a tiny model's greedy answer may be special tokens only, which print as nothing, so the
    # text itself is compared, not required to be non-empty
    for model, meta in metas.items():
        body = {"model": model, "messages": [{"role": "user", "content": "Describe the liver."}],
                "max_tokens": 16, "temperature": 0}
        req = urllib.request.Request(sys.argv[1] + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": "Bearer sk-clinic"})
        reply = json.load(urllib.request.urlopen(req, timeout=60))
        want = reply["choices"][0]["message"]["content"]
        assert answers[model] == want, (model, answers[model], want)
        n = reply["usage"]["completion_tokens"]
        assert n > 0 and meta.startswith(f"{n} tokens in"), (model, meta, n)
    print("OK", answers)
finally:
    driver.quit()
