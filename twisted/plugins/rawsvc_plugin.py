"""twistd dropin: makes C{twistd rawsvc} available.  No __init__.py here, ever."""

from twisted.application.service import ServiceMaker

rawsvc = ServiceMaker(
    "rawsvc",
    "rawsvc.tap",
    "Raw TCP/IP device and print integration service",
    "rawsvc",
)
