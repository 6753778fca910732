"""C{rawsvc preview FILE}: one PNG per label, warnings on stderr, no image for other languages."""

from __future__ import annotations

import struct
import subprocess
import sys

from rawsvc.cli.preview import output_names

#: Every common element: text in fonts 0 and A, Code 128, QR, DataMatrix, a box, a ^GF graphic.
EVERYTHING = (
    b"^XA^PW812^LL600"
    b"^FO30,30^A0N,50,50^FDFont 0 text^FS"
    b"^FO30,100^AAN,30,20^FDFont A text^FS"
    b"^FO30,160^BY2^BCN,80,Y,N,N^FD12345678^FS"
    b"^FO450,30^BQN,2,5^FDQA,https://example.invalid/label^FS"
    b"^FO450,300^BXN,8,200^FDDataMatrix^FS"
    b"^FO30,300^GB380,200,4^FS"
    b"^FO60,330^GFA,32,32,4," + b"FFFFFFFF" * 8 + b"^FS"
    b"^XZ"
)


def rawsvc(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "rawsvc", "preview", *args], capture_output=True, cwd=cwd,
                          timeout=60)


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return struct.unpack(">II", data[16:24])


def test_a_label_with_every_common_element_renders_to_one_png(tmp_path):
    job = tmp_path / "label.zpl"
    job.write_bytes(EVERYTHING)
    done = rawsvc(str(job), "-o", str(tmp_path / "out.png"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split() == [str(tmp_path / "out.png")]
    width, height = png_size((tmp_path / "out.png").read_bytes())
    assert (width, height) == (812, 600)  # the label's own ^PW and ^LL
    assert b"warning:" in done.stderr  # zplkit's note on resident fonts


def test_several_labels_give_one_numbered_png_each(tmp_path):
    job = tmp_path / "two.zpl"
    job.write_bytes(b"^XA^FO20,20^A0N,30,30^FDone^FS^XZ\n^XA^FO20,20^A0N,30,30^FDtwo^FS^XZ\n")
    done = rawsvc(str(job))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["two-1.png", "two-2.png"]
    assert (tmp_path / "two-1.png").read_bytes() != (tmp_path / "two-2.png").read_bytes()


def test_a_non_zpl_file_is_named_and_gives_no_image(tmp_path):
    job = tmp_path / "doc.pdf"
    job.write_bytes(b"%PDF-1.4\n...")
    done = rawsvc(str(job))
    assert done.returncode == 1
    assert b"is pdf, not ZPL" in done.stderr
    assert list(tmp_path.glob("*.png")) == []


def test_an_oversized_file_is_refused_before_rendering(tmp_path):
    job = tmp_path / "huge.zpl"
    job.write_bytes(b"^XA" + b"^FO1,1^GB5,5,1^FS" * 300_000 + b"^XZ")
    done = rawsvc(str(job))
    assert done.returncode == 1
    assert b"previews are drawn up to" in done.stderr


def test_a_missing_file_is_a_usage_error(tmp_path):
    done = rawsvc(str(tmp_path / "nope.zpl"))
    assert done.returncode == 2
    assert b"cannot read" in done.stderr and b"Traceback" not in done.stderr


def test_output_names():
    assert output_names("a.png", 1) == ["a.png"]
    assert output_names("a.png", 2) == ["a-1.png", "a-2.png"]
