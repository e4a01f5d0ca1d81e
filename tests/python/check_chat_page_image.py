"""The chat page of a running `strata serve` (argv[1]) in headless Chromium (Debian's chromium and
chromium-driver, driven by selenium): a vision-language model (argv[2]) picked alone, an image (argv[3])
attached with the file picker, a question sent: the card shows the image and the answer streams in; it equals
argv[4]'s contents (what the openai client got for the same image and question, greedy). Prints OK."""
import sys
import time

from selenium.webdriver.common.by import By

import chromium

url, model, png, expect = sys.argv[1:5]
want = open(expect).read().strip()
driver = chromium.driver()
try:
    driver.get(url + "/")
    deadline = time.time() + 30
    while time.time() < deadline and not driver.find_elements(By.CSS_SELECTOR, "input.model"):
        time.sleep(0.1)
    for box in driver.find_elements(By.CSS_SELECTOR, "input.model"):
        if box.is_selected() != (box.get_attribute("value") == model):
            box.click()
    picked = [b.get_attribute("value") for b in driver.find_elements(By.CSS_SELECTOR, "input.model:checked")]
    assert picked == [model], picked
    driver.find_element(By.ID, "image").send_keys(png)
    while time.time() < deadline and driver.find_element(By.ID, "preview").get_attribute("hidden"):
        time.sleep(0.1)
    assert driver.find_element(By.ID, "preview").get_attribute("src").startswith("data:image/png;base64,")
    driver.find_element(By.ID, "prompt").send_keys("Write the report for this ultrasound image.")
    driver.find_element(By.ID, "max").clear()
    driver.find_element(By.ID, "max").send_keys("12")
    driver.find_element(By.ID, "send").click()
    text, meta = "", ""
    while time.time() < deadline + 30:
        cards = driver.find_elements(By.CSS_SELECTOR, ".answer")
        if cards:
            meta = cards[0].find_element(By.CSS_SELECTOR, ".meta").text
            text = cards[0].find_element(By.CSS_SELECTOR, ".text").text
            if "tokens in" in meta or "error" in cards[0].find_element(By.CSS_SELECTOR, ".meta").get_attribute("class"):
                break
        time.sleep(0.1)
    assert "tokens in" in meta, meta
    card = driver.find_elements(By.CSS_SELECTOR, ".answer")[0]
    assert card.find_element(By.TAG_NAME, "img").get_attribute("src").startswith("data:image/png"), "no image shown"
    assert text.strip() == want, (text, want)
    print("OK")
finally:
    driver.quit()
