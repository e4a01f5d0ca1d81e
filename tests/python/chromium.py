"""Headless Chromium for the chat-page checks: Debian's chromium and chromium-driver (scripts/ensure-chromium.sh),
driven by selenium."""
from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def driver():
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
