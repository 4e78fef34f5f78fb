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
from serve_helpers import live_server, loader, post, wait_until_idle
from websockets.sync.client import connect

from gpt25.serve.api import Limits

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


def test_ten_turns_on_a_small_context_model_all_get_their_reply(small_chat_model, tmp_path: Path) -> None:
    """Context 128, max tokens 200 on the page: the server keeps the newest turns that fit and caps each reply,
    every reply is the greedy one for the turns kept, and a turn that cannot fit fails alone and leaves nothing."""
    with live_server(loader(small_chat_model)) as (url, _):
        browser = Browser(url + "/", tmp_path / "profile")
        try:
            browser.wait_for('document.getElementById("mode").textContent.includes("chat")')
            notes = []
            for turn in range(10):
                messages = [*browser.js("conversation"), {"role": "user", "content": f"Turn {turn}: and then?"}]
                expected = post(url, "/v1/chat/completions", {"messages": messages, "temperature": 0, "max_tokens": 200,
                                                              "fit_context": True}).json()
                send_message(browser, messages[-1]["content"], 200)
                browser.wait_for('document.body.dataset.state === "idle"')
                reply = expected["choices"][0]["message"]["content"]
                assert browser.js(f"{LAST_REPLY}.textContent") == reply
                assert browser.js("conversation") == [*messages, {"role": "assistant", "content": reply}]
                notes.append(browser.js('document.getElementById("rate").textContent'))
            assert browser.js('document.querySelectorAll(".error").length') == 0
            assert browser.js('document.querySelectorAll(".user").length') == 10
            assert browser.js('document.querySelectorAll(".assistant").length') == 10
            assert all("reply capped at" in note for note in notes)  # 200 never fits beside a prompt in 128
            assert "oldest messages left out" in notes[-1]

            send_message(browser, "x" * 100, 200)  # alone more than the 64 tokens the history may take
            browser.wait_for('document.body.dataset.state === "idle"')
            assert "shorten the prompt" in browser.js('document.querySelector(".error").textContent')
            assert browser.js('document.querySelectorAll(".assistant").length') == 10  # no empty bubble
            assert browser.js('document.querySelectorAll(".user").length') == 10
            assert browser.js('document.getElementById("input").value') == "x" * 100  # back to send again
            assert len(browser.js("conversation")) == 20

            send_message(browser, "Short again.", 200)
            browser.wait_for('document.body.dataset.state === "idle"')
            assert browser.js('document.querySelectorAll(".assistant").length') == 11
            assert browser.js("conversation")[-2:][0] == {"role": "user", "content": "Short again."}
        finally:
            browser.close()
