"""Recording scans: every scan to one HDF5 file that HyperSpy opens (``scanlens serve --record DIR``).

A layer beside the pipeline and the client (``docs/architecture.md``): it imports only the protocol.
``Recorder`` (``recorder.py``) journals a scan's messages off the event loop (``journal.py``) and
converts the journal into ``<scan_id>.h5`` when the scan closes (``convert.py``, ``layout.py``,
``hyperspy.py``); ``recover`` does the same for journals a crash left behind (``scanlens recover``);
``open_recording`` reads a recording back (``reader.py``). ``docs/operations.md``, "Recording scans".
"""

from .convert import Converted, EmptyJournal, RecordingError, convert_journal, lock_directory, recover
from .journal import FSYNC_INTERVAL_S
from .layout import RECOVERED
from .reader import RecordedMessage, Recording, open_recording, received_data
from .recorder import Recorder

__all__ = ["FSYNC_INTERVAL_S", "RECOVERED", "Converted", "EmptyJournal", "RecordedMessage", "Recorder", "Recording",
           "RecordingError", "convert_journal", "lock_directory", "open_recording", "received_data", "recover"]
