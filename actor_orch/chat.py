"""An interactive chat with one orchestrated agent: what `actor-orch chat` runs.

[`Chat`][] reads one user message per line, sends it with `stream_message` and prints the
reply as the model produces it. Lines starting with `/` are commands (`/help` lists them).
Ctrl-C while a reply streams aborts that reply (the request is answered `Aborted`, the
conversation keeps what came before it) and the chat goes on; Ctrl-C at the prompt drops the
line; end of input (Ctrl-D) ends the chat. A request that fails prints `error: ...` and the
chat goes on, with the agent spawned again if the failure ended it (a named session continues
from the orchestrator's session store).

On a terminal the chat prompts with `you> `, prefixes replies with the agent's name and uses
`readline` for line editing. When the input is not a terminal (a pipe, a file) it prints only
the replies and the commands' output, so its stdout can be read by a program.

Example (input from a list instead of a terminal):
    >>> import io
    >>> from actor_orch import AgentOptions, AgentOrchestrator, EchoModel
    >>> with AgentOrchestrator() as orch:
    ...     orch.add_agent("echo", lambda: AgentOptions(EchoModel()))
    ...     lines = iter(["hello there", "/history", "/reset", "/history"])
    ...     chat = Chat(lambda: orch.spawn("echo"), read=lambda: next(lines, None),
    ...                 out=io.StringIO())
    ...     chat.run()
    ...     print(chat.out.getvalue(), end="")
    0
    hello there
    user: hello there
    assistant: hello there
    (history cleared)
    (no messages)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import IO

import msgspec

from actor_orch.errors import AgentError
from actor_orch.orchestrator import OrchestratedHandle
from actor_orch.types import (
    AgentMessage,
    TextContent,
    ToolCall,
    ToolResultMessage,
    UserMessage,
    text_of,
)

__all__ = ["DEFAULT_SESSION", "PROMPT", "Chat"]

DEFAULT_SESSION = "chat"
"""The session a chat talks in unless told otherwise: a named session, so the conversation
survives supervisor restarts and, with a `SqliteSessionStore`, the process."""

PROMPT = "you> "

_HELP = """\
/history  show the conversation, one line per message
/reset    forget the conversation (start afresh)
/help     this list
/exit     leave (so does Ctrl-D); Ctrl-C aborts a reply that is streaming"""

# Bounds the wait for /reset, which queues behind requests still running.
_CONTROL_TIMEOUT_S = 30.0


class Chat:
    """A chat with the agent that `spawn()` returns, in conversation `session`.

    `read()` returns the next line without its newline, or `None` at the end of input; it may
    raise `KeyboardInterrupt` (the line is dropped) or `EOFError` (the end). The default
    reads `sys.stdin`, with the `you> ` prompt when it is a terminal. Replies and command
    output go to `out`, errors and `[aborted]` to `err`. `timeout` (seconds) bounds each
    reply (None: no bound). `spawn` is called once at the start and again whenever the agent
    has ended (its supervisor stopped it), so the chat outlives a failed agent.
    """

    def __init__(
        self,
        spawn: Callable[[], OrchestratedHandle],
        *,
        session: str | None = DEFAULT_SESSION,
        read: Callable[[], str | None] | None = None,
        out: IO[str] | None = None,
        err: IO[str] | None = None,
        interactive: bool | None = None,
        timeout: float | None = None,
    ) -> None:
        self.spawn = spawn
        self.session = session
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.interactive = _is_terminal(sys.stdin) if interactive is None else interactive
        self.read = read if read is not None else self._read_stdin
        self.timeout = timeout
        self.handle: OrchestratedHandle | None = None

    def run(self) -> int:
        """Chat until `/exit` or the end of input; returns the exit code (0)."""
        if self.interactive:
            with contextlib.suppress(ImportError):  # line editing and history, where available
                import readline  # noqa: F401, PLC0415
            where = "its own conversation" if self.session is None else f"session {self.session!r}"
            name = self._handle().name
            self._say(f"chatting with {name!r} in {where}; /help lists the commands")
        while True:
            try:
                line = self.read()
            except KeyboardInterrupt:
                self._say("")  # Ctrl-C at the prompt: drop the line, prompt again
                continue
            except EOFError:
                line = None
            if line is None:
                if self.interactive:
                    self._say("")  # leave the shell's prompt on a line of its own
                return 0
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return 0
                continue
            self.send(line)

    def command(self, line: str) -> bool:
        """Run the command `line` (`/history`, `/reset`, ...); False when the chat should end."""
        name = line.split(maxsplit=1)[0].lower()
        if name in ("/exit", "/quit"):
            return False
        if name == "/help":
            self._say(_HELP)
        elif name == "/history":
            messages = self._handle().history(self.session)
            for message in messages:
                self._say(describe(message))
            if not messages:
                self._say("(no messages)")
        elif name == "/reset":
            try:
                self._handle().clear_history(self.session, timeout=_CONTROL_TIMEOUT_S)
            except AgentError as error:
                self._error(error)
            else:
                self._say("(history cleared)")
        else:
            self._error(f"unknown command {name}; /help lists the commands")
        return True

    def send(self, text: str) -> None:
        """Send `text` and print the reply as it streams; Ctrl-C aborts it."""
        last = ""  # the last piece printed, to end the reply with exactly one newline
        stream = None
        try:
            handle = self._handle()
            stream = handle.stream_message(text, timeout=self.timeout, session=self.session)
            if self.interactive:
                last = f"{handle.name}> "
                self._write(last)
            for delta in stream:
                if delta:
                    self._write(delta)
                    last = delta
            if not last.endswith("\n"):
                self._write("\n")  # an empty reply is an empty line
        except KeyboardInterrupt:
            if stream is not None:
                stream.cancel()
            if last and not last.endswith("\n"):
                self._write("\n")
            self._error("[aborted]", prefix="")
        except AgentError as error:
            if last and not last.endswith("\n"):
                self._write("\n")
            self._error(error)

    def _handle(self) -> OrchestratedHandle:
        if self.handle is None or self.handle.is_done():
            self.handle = self.spawn()
        return self.handle

    def _read_stdin(self) -> str | None:
        if self.interactive:
            return input(PROMPT)  # EOFError at the end of input
        line = sys.stdin.readline()
        return line.rstrip("\r\n") if line else None

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _say(self, text: str) -> None:
        self._write(text + "\n")

    def _error(self, error: object, *, prefix: str = "error: ") -> None:
        self.out.flush()  # what came before it first, when both go to one terminal
        self.err.write(f"{prefix}{error}\n")
        self.err.flush()


def describe(message: AgentMessage) -> str:
    """One line for `message`: its role, then its text (newlines shown as `\\n`); tool calls
    as `[call NAME {arguments}]`, tool results as `tool:` (`tool (error):` when failed).

    Example:
        >>> from actor_orch.types import user_message
        >>> describe(user_message("two\\nlines"))
        'user: two\\\\nlines'
    """
    if isinstance(message, UserMessage):
        return f"user: {_one_line(text_of(message.content))}"
    if isinstance(message, ToolResultMessage):
        role = "tool (error)" if message.is_error else "tool"
        return f"{role}: {_one_line(text_of(message.content))}"
    parts = []
    for block in message.content:
        if isinstance(block, TextContent):
            parts.append(_one_line(block.text))
        elif isinstance(block, ToolCall):
            arguments = msgspec.json.encode(block.arguments).decode()
            parts.append(f"[call {block.name} {arguments}]")
    return "assistant: " + " ".join(part for part in parts if part)


def _one_line(text: str) -> str:
    return text.replace("\r", "").replace("\n", "\\n")


def _is_terminal(stream: IO[str] | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (ValueError, OSError):  # closed
        return False
