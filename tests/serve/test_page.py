"""The chat page in a real browser: headless Chromium, driven over its DevTools protocol (a websocket)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from gpt25.serve.api import Limits

from conftest import live_server, loader, post, wait_until_idle

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")


class Browser:
    """One headless Chromium tab: evaluate JavaScript in it, take screenshots."""

    def __init__(self, url: str, profile: Path) -> None:
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1000,640", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.is_file() or not port_file.read_text().strip():
            assert time.monotonic() < deadline and self.process.poll() is None, "chromium did not start"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        tabs = httpx.get(f"http://127.0.0.1:{port}/json/list").json()
        page = next(tab for tab in tabs if tab["type"] == "page")
        self.socket = connect(page["webSocketDebuggerUrl"], max_size=None, legacy=True)
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=30))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        guarded = f"(() => {{ try {{ return {expression}; }} catch (error) {{ return false; }} }})()"
        while not (value := self.js(guarded)):  # the page may not have loaded yet
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression}; the page shows "
                                     f"{self.js('document.body && document.body.innerText')!r}")
            time.sleep(0.02)
        return value

    def close(self) -> None:
        self.socket.close()
        self.process.terminate()
        self.process.wait(10)


def send_message(browser: Browser, text: str, max_tokens: int) -> None:
    browser.js(f"""document.getElementById("temperature").value = "0";
                   document.getElementById("max-tokens").value = "{max_tokens}";
                   document.getElementById("input").value = {json.dumps(text)};
                   document.getElementById("send").click()""")


LAST_REPLY = 'Array.from(document.querySelectorAll(".assistant")).pop()'


def test_the_page_streams_a_reply_and_stops_another(chat_model, tmp_path: Path) -> None:
    with live_server(loader(chat_model, step_delay=0.03), Limits(max_tokens=60)) as (url, app):
        expected = post(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hello"}],
                                                      "temperature": 0, "max_tokens": 40}).json()
        browser = Browser(url + "/", tmp_path / "profile")
        try:
            browser.wait_for('document.getElementById("mode").textContent.includes("chat")')
            send_message(browser, "Hello", 40)
            browser.wait_for('document.body.dataset.state === "streaming"')
            lengths = set()
            while browser.js('document.body.dataset.state') == "streaming":
                lengths.add(browser.js(f"{LAST_REPLY}.textContent.length"))
            assert len(lengths) >= 3, f"the reply did not arrive in pieces: lengths seen {sorted(lengths)}"
            assert browser.js(f"{LAST_REPLY}.textContent") == expected["choices"][0]["message"]["content"]
            assert "tokens/s" in browser.js('document.getElementById("rate").textContent')

            send_message(browser, "Tell me more", 60)
            browser.wait_for(f'document.body.dataset.state === "streaming" && {LAST_REPLY}.textContent.length > 5')
            browser.js('document.getElementById("stop").click()')
            browser.wait_for('document.body.dataset.state === "idle"')
            assert browser.js(f'{LAST_REPLY}.classList.contains("stopped")')
            assert browser.js(f"{LAST_REPLY}.textContent.length") < 40  # of up to 60 tokens, a character each
            assert wait_until_idle(app, timeout=3) == (0, 0)  # the server freed the stopped row
            assert browser.js('document.querySelectorAll(".user").length') == 2
            screenshot = browser.call("Page.captureScreenshot", format="png")["data"]
            (tmp_path / "serve.png").write_bytes(base64.b64decode(screenshot))
        finally:
            browser.close()
