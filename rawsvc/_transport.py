"""Moved to L{rawsvc.compat}; this name stays until every import points there."""
from rawsvc.compat import AckProbe, IStreamTransport, reset_if_abandoned, stream_transport  # noqa: F401
