"""actor_orch: run LLM agents as supervised Pykka actors, on threads, with timeouts.

Logging is off by default, as in any library; turn it on with
`from loguru import logger; logger.enable("actor_orch")`.
"""

from actor_orch import _logging
from actor_orch.agent import Agent, AgentOptions
from actor_orch.checkpoint import (
    CheckpointedStep,
    CheckpointStore,
    MemoryCheckpointStore,
    SqliteCheckpointStore,
    WorkflowCheckpoint,
)
from actor_orch.combinators import (
    execute_loop,
    execute_pipeline,
    execute_steps_parallel_resumable,
)
from actor_orch.errors import (
    Aborted,
    AgentError,
    AuthError,
    ContentFiltered,
    ContextWindowOverflow,
    ModelThrottled,
    NetworkError,
    PluginError,
    RequestTimeout,
    StreamError,
    StructuredOutputFailed,
)
from actor_orch.events import (
    AgentFailed,
    AgentRestarted,
    AgentSpawned,
    AgentStopped,
    Event,
    ModelCallFinished,
    StepFinished,
    StepStarted,
    ToolCallFinished,
)
from actor_orch.executor import (
    DEFAULT_MAX_PARALLEL_TASKS,
    AgentExecutor,
    AgentStepSpec,
    LocalExecutor,
    StepOutcome,
    execute_steps_parallel,
)
from actor_orch.graph import GraphError, check_graph, execute_graph
from actor_orch.models import (
    DemoModel,
    EchoModel,
    FinalMessage,
    FunctionModel,
    Model,
    ModelRequest,
    ModelSettings,
    ModelStreamEvent,
    OpenAICompatibleModel,
    ScriptedModel,
    StreamingModel,
    TextDelta,
)
from actor_orch.orchestrator import AgentOrchestrator, AgentStream, OrchestratedHandle
from actor_orch.retry import Backoff, RetryPolicy
from actor_orch.sessions import MemorySessionStore, SessionStore, SqliteSessionStore
from actor_orch.supervisor import DefaultSupervisor, SupervisorAction, SupervisorPolicy
from actor_orch.tools import Tool, ToolSpec, tool
from actor_orch.types import (
    AgentMessage,
    AgentResult,
    AgentStatus,
    AssistantMessage,
    ContentBlock,
    Cost,
    StopReason,
    TextContent,
    ToolCall,
    ToolResultMessage,
    Usage,
    UserMessage,
    user_message,
)

_logging.install()

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_PARALLEL_TASKS",
    "Aborted",
    "Agent",
    "AgentError",
    "AgentExecutor",
    "AgentFailed",
    "AgentMessage",
    "AgentOptions",
    "AgentOrchestrator",
    "AgentRestarted",
    "AgentResult",
    "AgentSpawned",
    "AgentStatus",
    "AgentStepSpec",
    "AgentStopped",
    "AgentStream",
    "AssistantMessage",
    "AuthError",
    "Backoff",
    "CheckpointStore",
    "CheckpointedStep",
    "ContentBlock",
    "ContentFiltered",
    "ContextWindowOverflow",
    "Cost",
    "DefaultSupervisor",
    "DemoModel",
    "EchoModel",
    "Event",
    "FinalMessage",
    "FunctionModel",
    "GraphError",
    "LocalExecutor",
    "MemoryCheckpointStore",
    "MemorySessionStore",
    "Model",
    "ModelCallFinished",
    "ModelRequest",
    "ModelSettings",
    "ModelStreamEvent",
    "ModelThrottled",
    "NetworkError",
    "OpenAICompatibleModel",
    "OrchestratedHandle",
    "PluginError",
    "RequestTimeout",
    "RetryPolicy",
    "ScriptedModel",
    "SessionStore",
    "SqliteCheckpointStore",
    "SqliteSessionStore",
    "StepFinished",
    "StepOutcome",
    "StepStarted",
    "StopReason",
    "StreamError",
    "StreamingModel",
    "StructuredOutputFailed",
    "SupervisorAction",
    "SupervisorPolicy",
    "TextContent",
    "TextDelta",
    "Tool",
    "ToolCall",
    "ToolCallFinished",
    "ToolResultMessage",
    "ToolSpec",
    "Usage",
    "UserMessage",
    "WorkflowCheckpoint",
    "check_graph",
    "execute_graph",
    "execute_loop",
    "execute_pipeline",
    "execute_steps_parallel",
    "execute_steps_parallel_resumable",
    "tool",
    "user_message",
]
