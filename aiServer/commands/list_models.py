"""ListModels → ModelList: what can be asked for, with schemas."""

from __future__ import annotations

from aiServer.commands.registry import CommandHandler, commands
from aiServer.facade import describe_json
from aiServer.session import Session
from commonlib.wire import pb


@commands.register("list_models")
class ListModelsHandler(CommandHandler):
    """Lists every enabled model with version, description, load state and schemas."""

    def handle(self, envelope: pb.Envelope, session: Session) -> None:
        """Reply ModelList."""
        reply = pb.Envelope(request_id=envelope.request_id)
        for description in self.facade.describe_models():
            input_json, output_json = describe_json(description)
            reply.model_list.models.add(
                name=description.name,
                version=description.version,
                description=description.description,
                loaded=description.loaded,
                input_schema_json=input_json,
                output_schema_json=output_json,
            )
        session.send_envelope(reply)
