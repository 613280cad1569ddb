"""The scanlens panel in Swift (Window > scanlens): the service's endpoints, its recognizers, arm.

Imported only inside Swift (``ScanlensExtension`` registers it). One ``Recognition`` per Swift process:
arming it tees every acquisition that Swift's panels start (see ``acquisition.arm``).
"""

from __future__ import annotations

import gettext
import typing

from nion.swift import Panel, Workspace
from nion.ui import Declarative

from . import acquisition

_ = gettext.gettext

PANEL_ID = "scanlens-panel"

#: the plug-in's state for this Swift process (endpoints, armed, the streamer)
recognition = acquisition.Recognition()


class ScanlensHandler(Declarative.Handler):
    """Endpoint fields, "List recognizers" (the ``models`` control request), "Arm", one status line."""

    def __init__(self, document_controller: typing.Any) -> None:
        super().__init__()
        self.document_controller = document_controller
        self._ingest, self._publish, self._control = recognition.ingest, recognition.publish, recognition.control
        self._armed = recognition.armed
        self._status = _("Not armed.")
        self._listener = self._on_problem
        recognition.listeners.append(self._listener)
        u = Declarative.DeclarativeUI()
        self.ui_view = u.create_column(
            u.create_row(u.create_label(text=_("Ingest")), u.create_line_edit(text="@binding(ingest)"), spacing=8),
            u.create_row(u.create_label(text=_("Publish")), u.create_line_edit(text="@binding(publish)"), spacing=8),
            u.create_row(u.create_label(text=_("Control")), u.create_line_edit(text="@binding(control)"), spacing=8),
            u.create_row(u.create_push_button(text=_("List recognizers"), on_clicked="list_models"),
                         u.create_check_box(text=_("Arm"), checked="@binding(armed)"), u.create_stretch(), spacing=8),
            u.create_label(text="@binding(status)", word_wrap=True),
            u.create_stretch(), spacing=8, margin=8)

    def close(self) -> None:
        if self._listener in recognition.listeners:
            recognition.listeners.remove(self._listener)
        super().close()

    # ---- bound properties

    def _set(self, name: str, value: typing.Any) -> None:
        if getattr(self, f"_{name}") != value:
            setattr(self, f"_{name}", value)
            self.notify_property_changed(name)

    @property
    def ingest(self) -> str:
        return self._ingest

    @ingest.setter
    def ingest(self, value: str) -> None:
        self._set("ingest", value.strip())
        self._apply_endpoints()

    @property
    def publish(self) -> str:
        return self._publish

    @publish.setter
    def publish(self, value: str) -> None:
        self._set("publish", value.strip())
        self._apply_endpoints()

    @property
    def control(self) -> str:
        return self._control

    @control.setter
    def control(self, value: str) -> None:
        self._set("control", value.strip())
        self._apply_endpoints()

    @property
    def armed(self) -> bool:
        return self._armed

    @armed.setter
    def armed(self, value: bool) -> None:
        self._set("armed", bool(value))
        if value:
            acquisition.arm(recognition, self.document_controller.document_model)
            self.status = (_("Armed: spectrum images, scan frames and the scan's live view from now on are sent to ")
                           + recognition.ingest + ".")
        else:
            acquisition.disarm()
            self.status = _("Not armed.")

    @property
    def status(self) -> str:
        return self._status

    @status.setter
    def status(self, value: str) -> None:
        self._set("status", value)

    # ---- actions

    def list_models(self, widget: typing.Any) -> None:
        """Ask the service for its recognizers, without blocking Swift; the answer lands in the status line."""
        self.status = _("Asking ") + recognition.control + " ..."
        future = recognition.streamer.models()

        def done(f: typing.Any) -> None:
            try:
                models = f.result()
                text = ", ".join(f"{name} ({card.get('modality', '?')})" for name, card in sorted(models.items()))
                message = _("Recognizers: ") + (text or _("none"))
            except Exception as exc:  # noqa: BLE001 - shown, not raised
                message = _("No answer from ") + recognition.control + f": {type(exc).__name__} {exc}".rstrip()
            self.document_controller.queue_task(lambda: setattr(self, "status", message))

        future.add_done_callback(done)

    def _apply_endpoints(self) -> None:
        recognition.set_endpoints(self._ingest, self._publish, self._control)

    def _on_problem(self, scan_id: str, message: str) -> None:
        self.document_controller.queue_task(lambda: setattr(self, "status", message))


class ScanlensPanel(Panel.Panel):
    def __init__(self, document_controller: typing.Any, panel_id: str, properties: typing.Mapping[str, typing.Any]):
        super().__init__(document_controller, panel_id, "scanlens-panel")
        self.widget = Declarative.DeclarativeWidget(document_controller.ui, document_controller.event_loop,
                                                    ScanlensHandler(document_controller))


def register() -> None:
    Workspace.WorkspaceManager().register_panel(ScanlensPanel, PANEL_ID, _("scanlens"), ["left", "right"], "right",
                                                {"min-width": 300})


def unregister() -> None:
    Workspace.WorkspaceManager().unregister_panel(PANEL_ID)
    recognition.close()
