"""
The job language detector (rawsvc.languages): what each printer language's
first bytes give, that only a bounded prefix is read, and the ZPL label
count, including under random input (hypothesis).
"""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rawsvc import languages as lang
from rawsvc.job import Job, Payload

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

UEL = b"\x1b%-12345X"

EXAMPLES = [
    (b"^XA^FO50,50^FDhello^FS^XZ", "zpl"),
    (b"\r\n~HS", "zpl"),
    (b"~DGR:LOGO.GRF,4,1,FF00\r\n^XA^XGR:LOGO.GRF^XZ", "zpl"),
    (b"%!PS-Adobe-3.0\n%%Pages: 1\n", "postscript"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "pdf"),
    (b"\x1bE\x1b&l0O\x1b(s0p12h0s0b4099T", "pcl"),
    (b"\x1b*r1A", "pcl"),
    (b") HP-PCL XL;2;0\r\n", "pclxl"),
    (b'\nN\nq609\nA50,0,0,1,1,1,N,"Example"\nP1\n', "epl"),
    (b'N\r\nB10,10,0,1,2,2,60,B,"123"\r\nP1\r\n', "epl"),
    (b"\x1b@Receipt line\n\x1dV\x00", "escpos"),
    (b"Total 12.50\n\x1b!\x08BOLD\n", "escpos"),
    (b"\x1bE\x01\x1bt\x00Order 42\n\x1dV\x00", "escpos"),  # ESC E 1 is bold here, not a PCL reset
    (b"plain text, \xc3\xa9t\xc3\xa9 too\r\n", "text"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "binary"),
    (b"", "empty"),
    (UEL + b"@PJL\r\n" + UEL, "empty"),
    # PJL: ENTER LANGUAGE wins; without it, the bytes after the PJL header decide.
    (UEL + b'@PJL JOB NAME="a"\r\n@PJL ENTER LANGUAGE = POSTSCRIPT\r\n%!PS\n', "postscript"),
    (UEL + b"@PJL ENTER LANGUAGE=PCL\r\n\x1bE", "pcl"),
    (UEL + b"@PJL ENTER LANGUAGE=PCLXL\r\n", "pclxl"),
    (UEL + b"@PJL ENTER LANGUAGE = ZPL\r\n^XA^XZ", "zpl"),
    (UEL + b"@PJL SET COPIES=2\r\n%PDF-1.4\n", "pdf"),
    (UEL + b"@PJL JOB\r\n\x1bE\x1b&l1X", "pcl"),
]


@pytest.mark.parametrize(("data", "expected"), EXAMPLES, ids=[e for _, e in EXAMPLES])
def test_detect_names_the_language_of_each_kind_of_job(data, expected):
    assert lang.detect(data) == expected


def test_the_printer_framers_pjl_language_wins_over_the_bytes():
    assert lang.detect(b"^XA^XZ", pjl_language="POSTSCRIPT") == "postscript"
    assert lang.detect(b"", pjl_language="ZPL") == "zpl"
    assert lang.detect(b"x", pjl_language="Acme") == "acme"


def test_only_the_prefix_is_read():
    head = b"^XA" + b"A" * (lang.PREFIX - 3)
    assert lang.detect(head + b"\x00\x01\x02" * 1000) == lang.detect(head) == "zpl"
    text = b"a" * lang.PREFIX
    assert lang.detect(text + b"\x00\xff") == "text"


@FUZZ
@given(st.binary(max_size=600), st.binary(max_size=200))
def test_detect_never_fails_and_looks_no_further_than_its_prefix(data, more):
    name = lang.detect(data)
    assert name in lang.LANGUAGES
    padded = data + b"\x00" * max(0, lang.PREFIX - len(data))
    assert lang.detect(padded + more) == lang.detect(padded)


PJL_TOKENS = st.sampled_from([UEL, b"@PJL ", b"@PJL ENTER LANGUAGE=", b"ZPL", b"\r\n", b"\n", b"%!", b"^XA",
                              b"\x1bE", b"\x1b@", b" ", b"N\n"])


@FUZZ
@given(st.lists(PJL_TOKENS | st.binary(max_size=4), max_size=30).map(b"".join))
def test_detect_takes_any_mix_of_pjl_and_language_bytes(data):
    name = lang.detect(data)
    # A name outside the table only comes from an ENTER LANGUAGE value.
    assert name in lang.LANGUAGES or b"ENTER LANGUAGE=" in data


def test_labels_counts_whole_formats_only():
    assert lang.labels(b"^XA^FDa^FS^XZ\r\n^xa^fdb^fs^xz") == 2
    assert lang.labels(b"^XA^FDa^FS") == 0  # not ended
    assert lang.labels(b"^XZ^XZ") == 0  # no format began
    assert lang.labels(b"~HS") == 0


ZPL_TOKENS = st.sampled_from([b"^XA", b"^XZ", b"^xa", b"^xz", b"^", b"X", b"Z", b"A", b"^FDx^FS", b"\r\n"])


@FUZZ
@given(st.lists(ZPL_TOKENS, max_size=60).map(b"".join), st.integers(3, 40))
def test_labels_of_a_spilled_file_read_in_blocks_equal_labels_of_its_bytes(data, block):
    assert lang.labels_in_file(io.BytesIO(data), block) == lang.labels(data)


def test_job_variables_of_a_spilled_zpl_job_count_every_format(tmp_path):
    payload = Payload(spool_dir=str(tmp_path), threshold=64)
    for _ in range(50):
        payload.write(b"^XA^FO10,10^FDlabel^FS^XZ\r\n")
    payload.close()
    assert not payload.in_memory
    assert lang.job_variables(payload, {}) == {"language": "zpl", "labels": "50"}
    payload.discard()


def test_a_job_made_without_a_trigger_still_has_language_and_labels():
    job = Job(trigger="t", payload=Payload(b"^XA^XZ^XA^XZ"))
    assert job.variables["language"] == "zpl"
    assert job.variables["labels"] == "2"
    assert job.summary()["language"] == "zpl"
