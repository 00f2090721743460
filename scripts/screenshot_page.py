#!/usr/bin/env python3
"""Screenshot of the browser demo after its automatic run, for the docs.

Drives headless Chromium over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON
messages separated by NUL bytes on fds 3/4, so no websocket library is needed), opens the page with
`auto=full`, waits until the page marks itself finished, and writes a full-page PNG.

    cargo run --release -p convrec -- serve --port 8080 --adapter tests/fixtures/adapters/smollm2_sft \\
        --data rows.jsonl --catalog ../shared/data/reddit-v2/catalog.tsv &
    python3 scripts/screenshot_page.py "http://127.0.0.1:8080/?auto=full&rows=2&max_new_tokens=160" \\
        docs/images/browser-demo.png
"""
import base64
import json
import os
import subprocess
import sys
import tempfile
import time


class Browser:
    def __init__(self, chromium):
        self.profile = tempfile.mkdtemp(prefix="convrec-shot-")
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()
        # The child reads commands on fd 3 and writes replies on fd 4.
        # (via high numbers: either pipe end may itself be fd 3 or 4).
        def fds():
            os.dup2(to_child_r, 100)
            os.dup2(from_child_w, 101)
            os.dup2(100, 3)
            os.dup2(101, 4)
        self.proc = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--enable-features=Vulkan",
             "--no-first-run", "--hide-scrollbars", "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
             "about:blank"],
            preexec_fn=fds, close_fds=False, stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self.next_id = 0
        self.buffer = b""

    def send(self, method, params=None, session=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_child, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self.read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def read(self):
        while b"\0" not in self.buffer:
            chunk = os.read(self.from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the pipe")
            self.buffer += chunk
        msg, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(msg)

    def close(self):
        self.proc.kill()
        self.proc.wait()


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    url, out = sys.argv[1], sys.argv[2]
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    b = Browser(chromium)
    try:
        target = b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        b.send("Emulation.setDeviceMetricsOverride",
               {"width": 1100, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session)
        b.send("Page.navigate", {"url": url}, session)
        deadline = time.time() + float(os.environ.get("SHOT_TIMEOUT_S", "1800"))
        while time.time() < deadline:
            r = b.send("Runtime.evaluate", {"expression": "document.body && document.body.dataset.finished",
                                            "returnByValue": True}, session)
            if r["result"].get("value") == "yes":
                break
            time.sleep(2)
        else:
            sys.exit("the page did not finish in time")
        time.sleep(1)
        size = b.send("Page.getLayoutMetrics", {}, session)["cssContentSize"]
        shot = b.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                      "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}},
                      session)
        with open(out, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        print(f"wrote {out} ({size['width']:.0f}x{size['height']:.0f})")
    finally:
        b.close()


if __name__ == "__main__":
    main()
