"""ModelAdmin → ModelAdminResult: load, unload or reload a model version (docs/protocol.md).

With auth on, the dispatcher lets only authenticated connections this far; with
admin.enabled off every ModelAdmin is PERMISSION_DENIED.
"""

from __future__ import annotations

from twisted.python.failure import Failure

from aiServer.commands.registry import CommandHandler, commands
from aiServer.model_versions import AdminResult, admin_error, run_admin
from aiServer.session import Session
from commonlib.wire import pb
from util.errors import ErrorCode, ServiceError

_ACTIONS = {
    pb.ADMIN_ACTION_LOAD: "load",
    pb.ADMIN_ACTION_UNLOAD: "unload",
    pb.ADMIN_ACTION_RELOAD: "reload",
}


@commands.register("model_admin")
class ModelAdminHandler(CommandHandler):
    """Runs one admin command; the reply comes once the version is verified, loaded and warm."""

    def handle(self, envelope: pb.Envelope, connection: Session) -> None:
        """Start the command, or raise its typed error."""
        if not self.context.admin_enabled:
            raise ServiceError(
                ErrorCode.PERMISSION_DENIED, "model admin commands are disabled (admin.enabled)"
            )
        request = envelope.model_admin
        action = _ACTIONS.get(request.action)
        if action is None:
            raise ServiceError(
                ErrorCode.INVALID_INPUT,
                f"unknown admin action {request.action}; use 0 (load), 1 (unload) or 2 (reload)",
            )
        request_id = envelope.request_id
        d = run_admin(self.facade.versions, action, request.model, request.version)
        d.addCallbacks(
            self._reply,
            self._fail,
            callbackArgs=(request_id, connection),
            errbackArgs=(request_id, connection),
        )

    @staticmethod
    def _reply(result: AdminResult, request_id: int, connection: Session) -> None:
        connection.send_envelope(
            pb.Envelope(
                request_id=request_id,
                model_admin_result=pb.ModelAdminResult(
                    model=result.model,
                    versions=result.versions,
                    default_version=result.default_version,
                    message=result.message,
                ),
            )
        )

    @staticmethod
    def _fail(failure: Failure, request_id: int, connection: Session) -> None:
        error = admin_error(failure.value or RuntimeError(failure.getErrorMessage()))
        connection.send_error(request_id, error.code, error.message)
