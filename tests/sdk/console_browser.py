"""Drives anya's web console in headless Chromium (selenium + chromedriver), for tests/console.rs.

Usage: console_browser.py OPEN_BASE GUARDED_BASE TOKEN OUT_DIR

OPEN_BASE serves both real models without auth; GUARDED_BASE requires a token (TOKEN is a good
one). Each page's screenshot is written to OUT_DIR and checked to be non-blank. Prints
"checks passed" at the end; any failure raises.
"""

import json
import os
import sys
import threading
import time
import urllib.request

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

OPEN, GUARDED, TOKEN, OUT = sys.argv[1:5]
os.makedirs(OUT, exist_ok=True)
EMBEDDER = "all-minilm-l6-v2"
GENERATOR = "smollm2-135m-instruct"


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("ANYA_TEST_CHROMIUM", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(os.environ.get("ANYA_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(options=options, service=service)


def wait(what, check, timeout=60.0, every=0.1):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as e:  # the element may not exist yet
            last = e
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def shot(driver, name):
    """A screenshot of the whole page, checked to be more than a blank or one-colour image."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(800, min(int(height) + 40, 2400)))
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.3)
    path = os.path.join(OUT, name + ".png")
    driver.save_screenshot(path)
    with Image.open(path) as img:
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        distinct = len(colours) if colours else 1 << 20
        w, h = img.size
    assert distinct > 50, f"{path} looks blank: {distinct} colours"
    print(f"screenshot {path} {w}x{h} {distinct} colours")
    driver.set_window_size(1280, 1000)
    return path


def post(base, path, body, token=None):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def no_console_errors(driver):
    errors = [e for e in driver.get_log("browser")
              if e["level"] == "SEVERE" and "401" not in e["message"]
              and "favicon" not in e["message"]]
    assert not errors, f"console errors: {errors}"


def open_server(driver):
    # Models: both real models listed, ready, with their versions' figures.
    driver.get(OPEN + "/")
    cards = wait("both models listed", lambda: (
        len(driver.find_elements(By.CSS_SELECTOR, "#models .card.model")) >= 2
        and driver.find_elements(By.CSS_SELECTOR, "#models .card.model")))
    states = {c.get_attribute("data-model"): c.get_attribute("data-state") for c in cards}
    assert states.get(EMBEDDER) == "ready" and states.get(GENERATOR) == "ready", states
    for model in (EMBEDDER, GENERATOR):
        row = driver.find_element(By.CSS_SELECTOR, f'.card[data-model="{model}"] tbody tr')
        assert "ready" in row.text and "cpu" in row.text, row.text
    # No token needed without auth: the admin actions show.
    assert driver.find_elements(By.CSS_SELECTOR, ".card .actions button"), "no admin actions"
    print("models page: both real models ready")
    shot(driver, "models")

    # Playground: a chat reply streams in, with time to first token and tokens/s.
    driver.get(OPEN + "/#playground")
    # The repository serves more than one generation model: pick ours from the list.
    wait("generation model offered", lambda: driver.find_elements(
        By.CSS_SELECTOR, f'#chat-model option[value="{GENERATOR}"]'))
    Select(driver.find_element(By.ID, "chat-model")).select_by_value(GENERATOR)
    wait("generation model chosen", lambda: driver.find_element(By.ID, "chat-model").get_attribute("value") == GENERATOR)
    driver.find_element(By.ID, "chat-max").clear()
    driver.find_element(By.ID, "chat-max").send_keys("48")
    driver.find_element(By.ID, "chat-input").send_keys("Write one sentence about the sea.")
    driver.find_element(By.ID, "chat-send").click()
    lengths = []
    deadline = time.time() + 120
    while time.time() < deadline:
        msgs = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")
        if msgs:
            text = msgs[-1].find_element(By.CSS_SELECTOR, ".text").text
            if not lengths or lengths[-1] != len(text):
                lengths.append(len(text))
            if msgs[-1].get_attribute("data-done") == "true":
                break
        time.sleep(0.02)
    reply = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant .text")[-1].text
    assert reply.strip(), "empty reply"
    growth = [n for n in lengths if n > 0]
    assert len(growth) >= 3, f"the reply did not stream in: lengths seen {lengths}"
    ttft = driver.find_element(By.ID, "chat-ttft").text
    tps = driver.find_element(By.ID, "chat-tps").text
    assert ttft.endswith(" ms") and float(ttft.split()[0]) > 0, ttft
    assert float(tps) > 0, tps
    print(f"playground chat: {len(reply)} chars in {len(growth)} steps, ttft {ttft}, {tps} tokens/s")

    # Embeddings: four sentences, a 4x4 cosine-similarity heat map.
    wait("embedding model offered", lambda: driver.find_element(By.ID, "embed-model").get_attribute("value") == EMBEDDER)
    driver.find_element(By.ID, "embed-run").click()
    wait("heat map drawn", lambda: driver.find_element(By.ID, "heatmap").get_attribute("data-size") == "4")
    print("playground embeddings: " + driver.find_element(By.ID, "embed-status").text)
    shot(driver, "playground")

    # Live: the charts move once requests arrive.
    driver.get(OPEN + "/#live")
    wait("charts drawn", lambda: int(driver.find_element(By.ID, "canvas-rps").get_attribute("data-points")) >= 2)
    before = int(driver.find_element(By.ID, "charts").get_attribute("data-requests"))
    stop = threading.Event()

    def load():
        i = 0
        while not stop.is_set():
            post(OPEN, "/v1/embeddings", {"model": EMBEDDER, "input": [f"sentence number {i}", "another one"]})
            if i % 4 == 0:
                post(OPEN, "/v1/chat/completions", {"model": GENERATOR, "max_tokens": 8,
                                                     "messages": [{"role": "user", "content": f"Count to {i}"}]})
            i += 1

    workers = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for t in workers:
        t.start()
    try:
        wait("request rate above zero", lambda: int(driver.find_element(By.ID, "canvas-rps").get_attribute("data-nonzero")) >= 3, timeout=60)
        wait("tokens/s above zero", lambda: int(driver.find_element(By.ID, "canvas-tps").get_attribute("data-nonzero")) >= 1, timeout=60)
        wait("latency and batch charts", lambda: all(
            int(driver.find_element(By.ID, f"canvas-{k}").get_attribute("data-nonzero")) >= 1
            for k in ("p50", "p99", "batch", "ttft")), timeout=60)
        time.sleep(4)
        shot(driver, "live")  # under load, so the charts show it
    finally:
        stop.set()
        for t in workers:
            t.join(timeout=120)
    after = int(driver.find_element(By.ID, "charts").get_attribute("data-requests"))
    assert after > before, (before, after)
    values = {k: driver.find_element(By.ID, "value-" + k).text for k in ("rps", "p50", "p99", "batch", "tps", "ttft")}
    print(f"live page: requests {before} -> {after}, latest {values}")

    # API: the OpenAPI document rendered, operations expandable.
    driver.get(OPEN + "/#api")
    wait("operations listed", lambda: int(driver.find_element(By.ID, "api-ops").get_attribute("data-operations") or 0) >= 20)
    ops = driver.find_elements(By.CSS_SELECTOR, "#api-ops details.op")
    paths = [o.find_element(By.CSS_SELECTOR, ".path").text for o in ops]
    assert "/v1/chat/completions" in paths and "/stats" in paths, paths
    for o in ops:
        if o.find_element(By.CSS_SELECTOR, ".path").text == "/v1/chat/completions":
            o.find_element(By.TAG_NAME, "summary").click()
            assert "messages" in o.text, o.text
            break
    print(f"api page: {len(ops)} operations")
    shot(driver, "api")
    no_console_errors(driver)


def guarded_server(driver):
    # Without a token: asked for one, no data shown, and the data routes answer 401.
    driver.get(GUARDED + "/")
    wait("token prompt", lambda: driver.find_element(By.ID, "auth").is_displayed())
    assert not driver.find_elements(By.CSS_SELECTOR, "#models .card"), "data shown without a token"
    status = driver.execute_script(
        "return Promise.all(['/models', '/stats', '/openapi.json'].map(p => fetch(p).then(r => r.status)))")
    assert status == [401, 401, 401], status
    shot(driver, "auth")
    # A wrong token is refused.
    driver.find_element(By.ID, "token").send_keys("not-a-token")
    driver.find_element(By.ID, "auth-submit").click()
    wait("wrong token refused", lambda: driver.find_element(By.ID, "auth").is_displayed()
         and "refused" in driver.find_element(By.ID, "auth-error").text)
    assert driver.execute_script("return localStorage.length + sessionStorage.length") == 0
    # With the token: the models show, the live page polls.
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.ID, "auth-submit").click()
    wait("models with a token", lambda: driver.find_elements(
        By.CSS_SELECTOR, f'#models .card[data-model="{EMBEDDER}"][data-state="ready"]'))
    assert not driver.find_element(By.ID, "auth").is_displayed()
    # The token's scopes lack admin: no admin actions offered.
    assert not driver.find_elements(By.CSS_SELECTOR, ".card .actions button"), "admin actions without admin"
    assert driver.execute_script("return localStorage.length + sessionStorage.length") == 0
    assert driver.get_cookies() == []
    driver.get(GUARDED + "/ui#live")  # a new page load: the token is gone again
    wait("token prompt after reload", lambda: driver.find_element(By.ID, "auth").is_displayed())
    print("auth: refused without a token, works with one, forgotten on reload")


def main():
    driver = browser()
    try:
        open_server(driver)
        guarded_server(driver)
    finally:
        driver.quit()
    print("checks passed")


if __name__ == "__main__":
    main()
