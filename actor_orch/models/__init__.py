"""Models an agent can run: offline (echo, scripted, function, demo) and OpenAI-compatible HTTP."""

from actor_orch.models.base import (
    FinalMessage,
    Model,
    ModelRequest,
    ModelStreamEvent,
    StreamingModel,
    TextDelta,
)
from actor_orch.models.demo import DemoModel
from actor_orch.models.echo import EchoModel
from actor_orch.models.function import FunctionModel
from actor_orch.models.openai_compat import OpenAICompatibleModel
from actor_orch.models.scripted import ScriptedModel
from actor_orch.models.settings import ModelSettings

__all__ = [
    "DemoModel",
    "EchoModel",
    "FinalMessage",
    "FunctionModel",
    "Model",
    "ModelRequest",
    "ModelSettings",
    "ModelStreamEvent",
    "OpenAICompatibleModel",
    "ScriptedModel",
    "StreamingModel",
    "TextDelta",
]
