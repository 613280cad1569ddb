"""Topic names of the PUB socket (the first frame of every published message).

Per-scan topics are ``scan/<scan_id>/<what>``: subscribing to ``scan/<scan_id>/`` gets exactly one
scan (the trailing slash stops ``scan/a`` from also matching ``scan/ab``). Service-wide topics start
with ``service/``.
"""

STATUS = "service/status"
SERVICE_EVENT = "service/event"  # errors that cannot be attributed to a scan (garbage bytes ...)

SCAN_STARTED = "started"
MAPS = "maps"
FRAME = "frame"
EVENT = "event"
SUMMARY = "summary"
TRAIN = "train"  # protocol 1.3: live training jobs of the scan (train_update)


def scan_prefix(scan_id: str) -> str:
    return f"scan/{scan_id}/"


def scan_topic(scan_id: str, what: str) -> str:
    return f"scan/{scan_id}/{what}"


def event_topic(scan_id: str | None) -> str:
    return scan_topic(scan_id, EVENT) if scan_id else SERVICE_EVENT
