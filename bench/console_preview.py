"""
How long from printing a ZPL label to seeing it in the console, in Debian's
Chromium (Playwright, never a browser of its own), against a running
service: README's first command (``twistd -n rawsvc --config etc/rawsvc.toml``),
whose ``archive-in`` trigger (127.0.0.1:9201) stores jobs and whose console
is on 127.0.0.1:8080.  For each label: the jobs page is open, the label is
sent, and the times are when it is acknowledged, when its row appears (by
polling, no reload), when its page is open after a click, and when its
preview image is loaded.

    .venv/bin/python bench/console_preview.py [--labels 5] [--screenshot /tmp/shots/job.png]
"""

from __future__ import annotations

import argparse
import socket
import time

LABEL = (b"^XA^PW600^LL400^FO40,40^A0N,60,60^FDHello rawsvc %d^FS^FO40,140^BY2^BCN,100,Y,N,N^FD4711^FS"
         b"^FO400,40^BQN,2,6^FDQA,rawsvc^FS^FO30,30^GB540,340,4^FS^XZ")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, default=5)
    parser.add_argument("--console", default="http://127.0.0.1:8080")
    parser.add_argument("--printer", default="127.0.0.1:9201")
    parser.add_argument("--screenshot", default="")
    args = parser.parse_args()
    host, port = args.printer.rsplit(":", 1)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
        page = browser.new_page()
        for n in range(args.labels):
            page.goto(args.console + "/console/")
            started = time.monotonic()
            with socket.create_connection((host, int(port))) as s:
                s.sendall(LABEL % n)
                s.shutdown(socket.SHUT_WR)
                reply = s.recv(4096)
            acked = time.monotonic() - started
            job_id = reply.split()[1].decode()
            link = f'#jobs a[href="/console/job/{job_id}"]'
            page.wait_for_function(f"document.querySelector({link!r})")
            listed = time.monotonic() - started
            page.locator(link).click()
            page.wait_for_function("location.pathname.startsWith('/console/job/')")
            opened = time.monotonic() - started
            page.wait_for_function("document.getElementById('label-0') && document.getElementById('label-0').complete"
                                   " && document.getElementById('label-0').naturalWidth > 0")
            shown = time.monotonic() - started
            print(f"label {n}: acknowledged {acked:.2f} s, listed {listed:.2f} s, page open {opened:.2f} s, "
                  f"preview loaded {shown:.2f} s after printing")
        if args.screenshot:
            page.screenshot(path=args.screenshot, full_page=True)
            print(f"screenshot: {args.screenshot}")
        browser.close()


if __name__ == "__main__":
    main()
