"""The socket-level limits the server derives from its settings: one place, stated in docs/protocol.md §6.

* ingest: a frame over ``max_message_bytes`` (or a header over 64 KiB) is refused by libzmq while its
  size prefix arrives (``MAXMSGSIZE``), before it is received: the sender's connection is dropped, the
  message never reaches the service, and its seq ends up ``lost``.
* control: requests up to ``request_bytes`` (room for a uint8 label image of the largest scan) are
  answered; up to twice that, with an ``oversized`` error reply; beyond, the connection is dropped.
  At most ``control_send_hwm`` replies wait for a client that does not read; more are dropped and
  counted (``control_replies_dropped``).
* publish: a subscriber that does not read holds at most ``publish_hwm`` messages in the service,
  chosen so that ``publish_hwm x largest publication <= publish_queue_bytes`` (a sixteenth of the
  memory budget), but never fewer than 256 messages (a burst of results or summaries must fit): the
  bound is max(memory_budget_bytes / 16, 256 x largest publication).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol.codec import DEFAULT_LIMITS
from .config import Settings

MIN_PUBLISH_HWM = 256  # bursts (a batch of lines, many summaries at once) must fit


@dataclass(frozen=True)
class WireLimits:
    ingest_frame_bytes: int
    request_bytes: int
    control_frame_bytes: int
    control_send_hwm: int
    publish_hwm: int
    publish_queue_bytes: int
    largest_publication: int

    @classmethod
    def derive(cls, s: Settings, largest_publication: int) -> WireLimits:
        request = max(2**20, s.max_scan_pixels + DEFAULT_LIMITS.max_header_bytes)
        queue = s.memory_budget_bytes // 16
        hwm = min(s.publish_hwm, max(MIN_PUBLISH_HWM, queue // max(largest_publication, 1)))
        return cls(ingest_frame_bytes=max(s.max_message_bytes, DEFAULT_LIMITS.max_header_bytes),
                   request_bytes=request, control_frame_bytes=2 * request, control_send_hwm=4,
                   publish_hwm=hwm, publish_queue_bytes=queue, largest_publication=largest_publication)
