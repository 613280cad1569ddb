"""A driver for tests/nionswift/test_swift_window.py, loaded into a real Swift window (only that test puts
it on Swift's path): once the project window is up it arms the scanlens plug-in, acquires a usim
synchronized spectrum image exactly as the headless tests do, shows the class map, and writes
``ready.json`` (or ``error.txt``) into $SCANLENS_DRIVER_OUT for the test to take its screenshot."""

from __future__ import annotations

import json
import os
import pathlib
import threading
import time
import traceback
import typing
import uuid


class ScanlensWindowDriverExtension:
    extension_id = "scanlens.test.window-driver"

    def __init__(self, api_broker: typing.Any) -> None:
        self.api = api_broker.get_api(version="~1.0", ui_version="~1.0")
        self.out = pathlib.Path(os.environ["SCANLENS_DRIVER_OUT"])
        threading.Thread(target=self._run, name="scanlens-window-driver", daemon=True).start()

    def close(self) -> None:
        pass

    def _on_main(self, dc: typing.Any, fn: typing.Callable[[], typing.Any], timeout: float = 30) -> typing.Any:
        done = threading.Event()
        box: dict[str, typing.Any] = {}

        def call() -> None:
            try:
                box["value"] = fn()
            except Exception as exc:  # noqa: BLE001 - re-raised on the driver's thread
                box["error"] = exc
            done.set()

        dc.queue_task(call)
        if not done.wait(timeout):
            raise TimeoutError("Swift's main thread did not run the driver's task")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def _run(self) -> None:
        try:
            self._drive()
        except Exception:  # noqa: BLE001
            (self.out / "error.txt").write_text(traceback.format_exc())

    def _drive(self) -> None:
        from nion.instrumentation import Acquisition, DataChannel, HardwareSource
        from nion.utils import Geometry

        from nionswift_plugin.scanlens import panel

        deadline = time.monotonic() + 120
        while not self.api.application.document_windows:
            if time.monotonic() > deadline:
                raise TimeoutError("no Swift project window within 120 s")
            time.sleep(0.2)
        time.sleep(2.0)
        window = self.api.application.document_windows[0]
        dc = window._document_controller
        document_model = dc.document_model
        recognition = panel.recognition

        def operate_the_panel() -> None:  # as an operator does: show it, type the endpoints, tick Arm
            dock = dc.find_dock_panel(panel.PANEL_ID)
            if dock is not None:
                dock.show()
            handler = next(fn.__self__ for fn in recognition.listeners
                           if isinstance(getattr(fn, "__self__", None), panel.ScanlensHandler))
            handler.ingest = os.environ["SCANLENS_INGEST"]
            handler.publish = os.environ["SCANLENS_PUBLISH"]
            handler.control = os.environ["SCANLENS_CONTROL"]
            handler.armed = True

        self._on_main(dc, operate_the_panel)
        assert recognition.armed
        manager = HardwareSource.HardwareSourceManager()
        scan = manager.get_hardware_source_for_hardware_source_id("usim_scan_device")
        camera = manager.get_hardware_source_for_hardware_source_id("usim_eels_camera")
        rows = cols = int(os.environ.get("SCANLENS_DRIVER_SIZE", "32"))
        scan_parameters = scan.get_current_frame_parameters()
        scan_parameters.scan_id = uuid.uuid4()
        scan_parameters.size = Geometry.IntSize(rows, cols)
        camera_parameters = camera.get_current_frame_parameters()
        camera_parameters.processing = "sum_project"
        camera_parameters.exposure_ms = 1000.0 / (2 * cols)
        channel = self._on_main(dc, lambda: DataChannel.DataItemDataChannel(document_model, "Spectrum Image", {
            Acquisition.Channel(scan.hardware_source_id, "0"): "HAADF",
            Acquisition.Channel(camera.hardware_source_id): "EELS"}))
        scan.grab_synchronized(data_channel=channel, scan_frame_parameters=scan_parameters, camera=camera,
                               camera_frame_parameters=camera_parameters)
        (scan_id, writer), = recognition.writers.items()
        stats = recognition.streamer.wait(scan_id, timeout=60)
        deadline = time.monotonic() + 20
        while not writer.data_item("eels-mlp", "class") and time.monotonic() < deadline:
            time.sleep(0.2)

        def show() -> None:
            item = writer.data_item("eels-mlp", "class")
            if item is not None:
                window.display_data_item(self.api.library.get_data_item_by_uuid(item.uuid))

        self._on_main(dc, show)
        time.sleep(3.0)  # let the window draw
        summary = stats.summary
        (self.out / "ready.json").write_text(json.dumps({
            "scan_id": scan_id, "problem": stats.problem, "lines_sent": stats.lines_sent,
            "state": summary.state if summary else None,
            "pixels_recognized": summary.pixels_recognized if summary else None,
            "data_items": sorted(i.title for i in writer.data_items.values()),
            "notices": recognition.notices, "problems": recognition.problems}))
