"""
rawsvc-stx: a rawsvc plugin for devices that talk in STX/ETX frames.

- L{rawsvc_stx.trigger.StxEtxTrigger} (type C{stx-etx}): one job per frame,
  answered ACK/NAK (built on rawsvc's framer API, L{rawsvc.triggers.api});
- L{rawsvc_stx.checksum.ChecksumAction} (type C{checksum}): a flow step
  that computes a checksum of the payload and can insist on a value.
"""

__version__ = "1.0.0"
