"""Screenshot a Dagster UI page after opening one metadata entry's Markdown (a picture) — headless Chromium
driven over the DevTools protocol, so the picture itself is in the shot, not the "[Show Markdown]" link.

    python scripts/ui_markdown_shot.py URL METADATA_KEY OUT.png [--port 9333]
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request

import websocket  # websocket-client (the docs extra)

OPEN_ENTRY = """(() => {
  const key = [...document.querySelectorAll('td')].find(cell => cell.textContent.trim() === %s);
  const link = key && [...key.parentElement.querySelectorAll('a')]
    .find(node => node.textContent.trim() === '[Show Markdown]');
  if (link) { link.click(); return true; }
  return false;
})()"""


class Page:
    def __init__(self, socket_url: str) -> None:
        self.socket = websocket.create_connection(socket_url, timeout=60, suppress_origin=True)
        self.ids = itertools.count(1)

    def call(self, method: str, **params):
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.socket.recv())
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("out")
    parser.add_argument("--port", type=int, default=9333)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        browser = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             f"--remote-debugging-port={args.port}", f"--user-data-dir={profile}", "--window-size=1440,900",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            for _ in range(60):
                try:
                    targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{args.port}/json", timeout=5))
                    break
                except OSError:
                    time.sleep(0.5)
            else:
                raise SystemExit(f"chromium did not open its DevTools port {args.port} within 30 s")
            page = Page(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
            page.call("Emulation.setDeviceMetricsOverride", width=1440, height=900, deviceScaleFactor=1, mobile=False)
            page.call("Page.navigate", url=args.url)
            for _ in range(120):  # the metadata table renders after the page's queries answer
                time.sleep(0.5)
                if page.evaluate(OPEN_ENTRY % json.dumps(args.key)):
                    break
            else:
                raise SystemExit(f"{args.url}: no '[Show Markdown]' beside metadata key {args.key!r}")
            time.sleep(2)
            shot = page.call("Page.captureScreenshot", format="png")["data"]
            with open(args.out, "wb") as out:
                out.write(base64.b64decode(shot))
        finally:
            os.killpg(browser.pid, signal.SIGTERM)  # the browser and its renderer processes
            browser.wait(timeout=30)


if __name__ == "__main__":
    main()
