"""
The console in a real Chromium (Debian's C{/usr/bin/chromium}, driven by
Playwright for Python; never a browser of Playwright's own): a real
C{twistd rawsvc}, a ZPL label printed to its virtual printer over a
socket, the job found and opened in the console, its preview image loaded
and not blank; then a job whose delivery fails (its printer is off,
C{retries = 0}) is retried from the page once the printer is back, and is
seen done; the printers page draws its charts, and pausing the forwarding
trigger (its port refuses) and then the printer's destination (a job waits
in its queue, unsent) from the page takes effect until resumed.
Screenshots land in the test's tmp dir when it fails.

Skipped when Chromium or Playwright is missing, unless C{CI=true}: then it fails.
C{RAWSVC_SCREENSHOTS=DIR} keeps screenshots of the job and printers pages there.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
import zlib

import pytest
from delivery_support import Printer, free_port, jobs, start_twistd, wait_for

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
LABEL = (b"^XA^PW600^LL400^FO40,40^A0N,60,60^FDConsole test^FS^FO40,140^BY2^BCN,100,Y,N,N^FD4711^FS"
         b"^FO400,40^BQN,2,6^FDQA,rawsvc^FS^FO30,30^GB540,340,4^FS^XZ")


def _need_browser():
    missing = []
    if not os.path.exists(CHROMIUM):
        missing.append(CHROMIUM)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package")
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser test needs {' and '.join(missing)} (CI installs them: .ci/run)")
        pytest.skip(f"no {' and '.join(missing)}")


def png_pixels(data: bytes) -> tuple[int, int, list[int]]:
    """Width, height and one grey level per pixel of a non-interlaced 8-bit PNG (grey, RGB or RGBA)."""
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and interlace == 0, header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    raw = zlib.decompress(idat)
    stride = width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], (prev[i - channels] if i >= channels else 0)
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    grey = [row[x * channels] for row in rows for x in range(width)]
    return width, height, grey


def _print(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(10)
        while s.recv(4096):
            pass


@pytest.fixture
def console(tmp_path):
    """A twistd rawsvc with a virtual printer, a forwarding trigger (printer off) and the console."""
    _need_browser()
    printer_port, forward_port, http_port, dest_port = free_port(), free_port(), free_port(), free_port()
    config = tmp_path / "rawsvc.toml"
    config.write_text(f"""
[service]
state_dir = "{tmp_path}/state"

[admin.http]
listen = "tcp:{http_port}:interface=127.0.0.1"

[[trigger]]
name = "virtual"
type = "printer"
listen = "tcp:{printer_port}:interface=127.0.0.1"
flow = "archive"

[[trigger]]
name = "forward"
type = "tcp"
listen = "tcp:{forward_port}:interface=127.0.0.1"
execute_on = "disconnect"
flow = "forward"

[[flow]]
name = "archive"
actions = [ {{ type = "file", folder = "{tmp_path}/jobs", name = "${{job_id}}.prn" }} ]

[[flow]]
name = "forward"
actions = [ {{ type = "send_tcp", destination = "127.0.0.1:{dest_port}", connect_timeout = 1, retries = 0 }} ]
""")
    proc = start_twistd(str(config), str(tmp_path / "twistd.log"))
    base = f"http://127.0.0.1:{http_port}"

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", http_port), timeout=1):
                return True
        except OSError:
            return proc.poll() is not None

    wait_for(up, 30, "the admin listener")
    assert proc.poll() is None, (tmp_path / "twistd.log").read_text()
    printer = Printer(dest_port)
    yield {"base": base, "printer_port": printer_port, "forward_port": forward_port, "printer": printer,
           "state_dir": str(tmp_path / "state"), "tmp": tmp_path}
    printer.stop()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except Exception:
        proc.kill()


@pytest.fixture
def page(console):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            pg = browser.new_page()
            pg.set_default_timeout(15_000)
            yield pg
        finally:
            browser.close()


def _job_ids(state_dir: str, trigger: str) -> list[str]:
    return [j for j, row in jobs(state_dir).items() if row["trigger"] == trigger]


def test_a_printed_zpl_label_shows_as_a_non_blank_image_in_the_console(console, page, tmp_path):
    _print(console["printer_port"], LABEL)
    wait_for(lambda: _job_ids(console["state_dir"], "virtual"), 10, "the job in the spool")
    job_id = _job_ids(console["state_dir"], "virtual")[0]
    try:
        started = time.monotonic()
        page.goto(console["base"] + "/console/")
        page.get_by_role("link", name=job_id).click()
        page.wait_for_url(f"**/console/job/{job_id}")
        image = page.locator("img#label-0")
        image.wait_for()
        page.wait_for_function("document.getElementById('label-0').complete && "
                               "document.getElementById('label-0').naturalWidth > 0")
        took = time.monotonic() - started
        assert page.evaluate("document.getElementById('label-0').naturalWidth") == 600
        width, height, grey = png_pixels(image.screenshot())
        dark = sum(1 for g in grey if g < 128)
        assert 0.02 < dark / len(grey) < 0.9, (dark, len(grey))  # ink on paper, not a blank square
        assert page.locator("#payload-text").inner_text().startswith("^XA^PW600")
        print(f"\n[console] job {job_id} previewed in the browser {took:.2f} s after opening the jobs page")
        if os.environ.get("RAWSVC_SCREENSHOTS"):  # keep a picture of the page (README's "done when")
            os.makedirs(os.environ["RAWSVC_SCREENSHOTS"], exist_ok=True)
            page.screenshot(path=os.path.join(os.environ["RAWSVC_SCREENSHOTS"], "console-job.png"), full_page=True)
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        raise


def test_a_failed_job_is_retried_from_the_page_once_the_printer_is_back(console, page, tmp_path):
    _print(console["forward_port"], b"label for a printer that is off\n")
    wait_for(lambda: [j for j in _job_ids(console["state_dir"], "forward")
                      if jobs(console["state_dir"])[j]["state"] == "failed"], 20, "the job failed")
    job_id = _job_ids(console["state_dir"], "forward")[0]
    try:
        page.goto(console["base"] + "/console/?state=failed")
        page.get_by_role("link", name=job_id).click()
        assert page.locator("#state").inner_text() == "failed"
        console["printer"].listen()
        with page.expect_navigation():  # the page reloads itself after a successful action
            page.locator("#retry").click()
        page.wait_for_function("document.getElementById('action-result').textContent.includes('queued again')")
        wait_for(lambda: jobs(console["state_dir"])[job_id]["state"] == "done", 20, "the job done")
        page.reload()
        assert page.locator("#state").inner_text() == "done"
        assert console["printer"].received == [b"label for a printer that is off\n"]
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        raise


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def _click_and_see(page, selector: str, words: str) -> None:
    """Click an action button of the printers page; wait for its result, then for the page's reload."""
    page.locator(selector).click()
    page.wait_for_function(f"document.getElementById('action-result').textContent.includes({words!r})")
    page.wait_for_load_state("load")


def test_pausing_a_trigger_and_a_destination_from_the_printers_page_takes_effect(console, page, tmp_path):
    printer, forward = console["printer"], console["forward_port"]
    printer.listen()
    _print(forward, b"first\n")
    wait_for(lambda: printer.received == [b"first\n"], 20, "the first job printed")
    destination = f"127.0.0.1:{printer.port}"
    try:
        page.goto(console["base"] + "/console/printers")
        for chart in ("#chart-jobs-hour", "#chart-ack-hour", "#chart-jobs-day", "#chart-ack-day"):
            assert page.locator(chart).is_visible(), chart
        assert page.locator("#chart-jobs-hour polyline").count() >= 1
        assert "1 done, 0 failed" in page.locator("#charts-hour").inner_text()

        # The trigger: paused, its port refuses; resumed, it takes jobs again.
        _click_and_see(page, "#pause-trigger-forward", "trigger forward paused")
        wait_for(lambda: _refused(forward), 10, "the paused trigger to refuse")
        page.locator("#resume-trigger-forward").wait_for()
        assert "paused" in page.locator("#triggers").inner_text()
        _click_and_see(page, "#resume-trigger-forward", "trigger forward resumed")
        wait_for(lambda: not _refused(forward), 10, "the resumed trigger to accept")

        # The destination: paused, a job waits in its queue; resumed, it is printed.
        page.reload()
        _click_and_see(page, f'[id="pause-destination-{destination}"]', f"destination {destination} paused")
        with socket.create_connection(("127.0.0.1", forward), timeout=10) as s:
            s.sendall(b"second\n")  # the trigger answers once the flow ends: do not wait for it
            s.shutdown(socket.SHUT_WR)
        page.reload()
        page.locator(f'[id="resume-destination-{destination}"]').wait_for()
        wait_for(lambda: _queued(page, destination) == "1", 10, "the job queued behind the pause")
        time.sleep(0.5)
        assert printer.received == [b"first\n"]
        _click_and_see(page, f'[id="resume-destination-{destination}"]', f"destination {destination} resumed")
        wait_for(lambda: printer.received == [b"first\n", b"second\n"], 20, "the queued job printed")
        page.reload()
        assert page.locator(f'[id="pause-destination-{destination}"]').is_visible()
        if os.environ.get("RAWSVC_SCREENSHOTS"):
            os.makedirs(os.environ["RAWSVC_SCREENSHOTS"], exist_ok=True)
            page.screenshot(path=os.path.join(os.environ["RAWSVC_SCREENSHOTS"], "console-printers.png"), full_page=True)
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        raise


def _queued(page, destination: str) -> str:
    """The queue depth cell of C{destination}'s row on the printers page (reloaded)."""
    page.reload()
    row = page.locator("#destinations tr", has_text=destination)
    return row.locator("td").nth(2).inner_text()
