"""Read a pyinstrument session of admitd's main thread: where the busy time goes.

Every sample ends in a leaf frame. Samples whose stack waits in the event loop's
``select`` are idle. Each busy sample is put in the category of the innermost frame that
belongs to a known part (admitd's modules, OpenTelemetry, redis-py, json, protobuf,
asyncio, grpc); C code run directly by a task step (``Context.run`` with no Python frame
below it) is grpc.aio's Cython server code: reading the request, calling the handler,
serializing and sending the response. Inclusive times of chosen admitd functions are
added up as well.
"""

from __future__ import annotations

from typing import Any

from pyinstrument.frame import Frame
from pyinstrument.renderers import ConsoleRenderer
from pyinstrument.session import Session

# Inclusive time of these (function, module) frames is reported (share of busy time).
FUNCTIONS = [
    ("Acquire", "admitd/_api/service.py"),
    ("Release", "admitd/_api/service.py"),
    ("_caller", "admitd/_api/service.py"),
    ("_spec", "admitd/_api/service.py"),
    ("_lease", "admitd/_api/service.py"),
    ("acquire", "admitd/_engine.py"),
    ("release", "admitd/_engine.py"),
    ("observed", "admitd/_engine.py"),
    ("admitted", "admitd/_engine.py"),
    ("submit", "admitd/_engine.py"),
    ("ticket", "admitd/_requests.py"),
    ("limits", "admitd/_policy.py"),
    ("acquire", "admitd/_backends/memory/backend.py"),
    ("release", "admitd/_backends/memory/backend.py"),
    ("_tick", "admitd/_backends/memory/backend.py"),
    ("acquire", "admitd/_backends/redis/backend.py"),
    ("release", "admitd/_backends/redis/backend.py"),
    ("_run", "admitd/_backends/redis/backend.py"),
    ("ticket_json", "admitd/_backends/redis/codec.py"),
    ("admitted", "admitd/_telemetry.py"),
    ("settled", "admitd/_telemetry.py"),
    ("decision", "admitd/_telemetry.py"),
]

_PARTS = [
    ("opentelemetry/", "OpenTelemetry (metrics, spans)"),
    ("redis/", "redis-py client"),
    ("json/", "json"),
    ("google/protobuf", "protobuf (Python)"),
    ("grpc/", "grpc (Python)"),
    ("asyncio/", "asyncio event loop"),
    ("selectors.py", "asyncio event loop"),
    ("contextlib.py", "contextlib"),
]
IDLE = "idle (waiting in epoll)"
CYTHON = "grpc.aio Cython/C (request, response, call machinery)"


def _part(frame: Frame) -> str | None:
    path = frame.file_path_short or ""
    if path.startswith("admitd/") and not path.startswith("admitd/v1"):
        return f"admitd {path.removeprefix('admitd/')}"
    for prefix, part in _PARTS:
        if path.startswith(prefix):
            return part
    return None


def _category(stack: list[Frame]) -> str:
    if any(f.function == "select" and f.file_path_short == "selectors.py" for f in stack):
        return IDLE
    for i in range(len(stack) - 1, -1, -1):
        frame = stack[i]
        if frame.function == "Context.run" and i == len(stack) - 2:
            return CYTHON  # a task step's own C code, no Python frame below
        part = _part(frame)
        if part is not None:
            return part
    return "other"


def breakdown(session: Session) -> dict[str, Any]:
    """Busy time by category and by chosen function, as shares of all busy time."""
    root = session.root_frame(trim_stem=False)
    categories: dict[str, float] = {}
    functions: dict[str, float] = {}
    wanted = set(FUNCTIONS)

    def walk(frame: Frame, stack: list[Frame]) -> None:
        stack.append(frame)
        if (frame.function, frame.file_path_short) in wanted:
            # Not below another frame of the same function (no double counting).
            name = f"{frame.file_path_short}:{frame.function}"
            if not any(
                f is not frame
                and f.function == frame.function
                and f.file_path_short == frame.file_path_short
                for f in stack
            ):
                functions[name] = functions.get(name, 0.0) + frame.time
        if not frame.children:
            category = _category(stack)
            categories[category] = categories.get(category, 0.0) + frame.time
        for child in frame.children:
            walk(child, stack)
        stack.pop()

    if root is not None:
        walk(root, [])
    busy = sum(t for c, t in categories.items() if c != IDLE) or 1.0
    return {
        "sampled_s": session.duration,
        "busy_s": busy,
        "categories": dict(
            sorted(
                ((c, t / busy) for c, t in categories.items() if c != IDLE),
                key=lambda item: -item[1],
            )
        ),
        "functions": dict(
            sorted(((f, t / busy) for f, t in functions.items()), key=lambda item: -item[1])
        ),
    }


def render_text(session: Session) -> str:
    renderer = ConsoleRenderer(
        unicode=False, color=False, processor_options={"filter_threshold": 0.005}
    )
    return str(renderer.render(session))
