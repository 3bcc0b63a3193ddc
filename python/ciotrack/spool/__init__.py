"""The disk spool: operations that cannot be delivered now wait here, and are replayed later.

* :mod:`ciotrack.spool.segments`: the durable format (append-only, CRC-framed segment files shared
  by processes through ``flock``) and :func:`spool_directory`, one subdirectory per workspace;
* :mod:`ciotrack.spool.replay`: :class:`~ciotrack.spool.replay.SpoolReplay`, which writes what the
  pipeline hands over and requeues spooled operations while the destination is up (its health is the
  delivery loop's :class:`~ciotrack.delivery.Health`, probed through ``destination.probe()``).
"""

from ciotrack.spool.segments import (
    HEADER_BYTES,
    MAGIC,
    SEGMENT_BYTES,
    VERSION,
    Segment,
    Spool,
    encode_record,
    spool_directory,
)

__all__ = ["HEADER_BYTES", "MAGIC", "SEGMENT_BYTES", "VERSION", "Segment", "Spool", "encode_record",
           "spool_directory"]
