"""Models an agent can run: offline (echo, scripted, function) and OpenAI-compatible HTTP."""

from actor_orch.models.base import Model, ModelRequest
from actor_orch.models.echo import EchoModel
from actor_orch.models.function import FunctionModel
from actor_orch.models.openai_compat import OpenAICompatibleModel
from actor_orch.models.scripted import ScriptedModel

__all__ = [
    "EchoModel",
    "FunctionModel",
    "Model",
    "ModelRequest",
    "OpenAICompatibleModel",
    "ScriptedModel",
]
