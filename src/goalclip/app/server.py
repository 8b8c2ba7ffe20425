"""The ``goalclip serve`` web app: a Starlette app serving one static page and a small JSON API.

Starlette (with uvicorn) rather than Gradio: the page is plain HTML and JavaScript whose element
ids are ours, so browser tests read exactly what a person sees without depending on a UI
framework's generated DOM, and the dependency is two small packages. Every model forward, image
decode and figure runs in Starlette's thread pool (``run_in_threadpool``), never on the event loop,
so one slow request does not freeze the page. A bad input answers ``{"error": message}`` with
status 400, which the page shows; the server keeps running.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from goalclip.app.backend import AppError, Pairs, Searcher, distinct_names, read_run, run_figure

logger = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
MAX_K = 100
NO_MODEL = "no model to search: start goalclip serve with --model M --images DIR (or --data MANIFEST)"


@dataclass
class ServeState:
    """What the page can show: searchers (one per ``--model``), the pairs manifest, the run folders."""

    searchers: list[Searcher] = field(default_factory=list)
    pairs: Pairs | None = None
    pairs_error: str | None = None
    runs: list[str] = field(default_factory=list)
    runs_lock: threading.Lock = field(default_factory=threading.Lock)
    evals: list[str] = field(default_factory=list)  # eval outputs outside the run folders (--evals)

    def model_names(self) -> list[str]:
        """What the page calls each model: the shortest path tail that tells them apart."""
        return distinct_names([s.model for s in self.searchers])

    def read_runs(self) -> list[dict[str, Any]]:
        """Every run, named by the shortest path tail that tells it apart (the demo's runs are all ``seedN``)."""
        folders = list(self.runs)
        return [read_run(f, name, self.evals) for f, name in zip(folders, distinct_names(folders))]


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _answer(work: Callable[[], Any]) -> Response:
    """Run ``work`` in the thread pool; AppError (bad input) and any failure become a message for the page."""
    try:
        result = await run_in_threadpool(work)
    except AppError as exc:
        return _error(str(exc))
    except Exception as exc:  # the page shows it and the server goes on
        logger.exception("serve: request failed")
        return _error(f"{type(exc).__name__}: {exc}", 500)
    return result if isinstance(result, Response) else JSONResponse(result)


def _number(request: Request, name: str, kind: type, default: Any = None) -> Any:
    text = request.query_params.get(name, "").strip()
    if not text:
        return default
    try:
        return kind(text)
    except ValueError:
        raise AppError(f"{name}: {text!r} is not a {'whole ' if kind is int else ''}number") from None


def build_app(state: ServeState) -> Starlette:
    """The app over ``state``; routes are thin, the work is in :mod:`goalclip.app.backend`.

    Over 80 lines on purpose: one short closure per route over ``state``, kept beside the URL table they
    serve so that a reader sees every endpoint of the page in one place."""

    def searcher(request: Request) -> Searcher:
        index = _number(request, "model", int, 0)
        if not 0 <= index < len(state.searchers):
            raise AppError(NO_MODEL if not state.searchers else f"model: no model number {index}")
        return state.searchers[index]

    async def index(_: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def status(_: Request) -> Response:
        return JSONResponse({
            "models": [{**s.status(), "name": name} for s, name in zip(state.searchers, state.model_names())],
            "pairs": {"error": state.pairs_error, "total": len(state.pairs.records) if state.pairs else 0},
            "runs": list(state.runs),
        })

    async def search(request: Request) -> Response:
        def work() -> dict[str, Any]:
            query = request.query_params.get("q", "").strip()
            if not query:
                raise AppError("the query is empty: type a description")
            k = _number(request, "k", int, 10)
            if not 1 <= k <= MAX_K:
                raise AppError(f"k must be between 1 and {MAX_K}, got {k}")
            if not state.searchers:
                raise AppError(NO_MODEL)
            columns = []
            for s, name in zip(state.searchers, state.model_names()):  # one failing leaves the other working
                try:
                    columns.append({"model": s.model, "name": name, "hits": s.search(query, k)})
                except AppError as exc:
                    columns.append({"model": s.model, "name": name, "error": str(exc)})
            return {"query": query, "models": columns}

        return await _answer(work)

    async def heatmap(request: Request) -> Response:
        return await _answer(lambda: searcher(request).heatmaps(request.query_params.get("id", ""),
                                                                 request.query_params.get("q", "")))

    async def image(request: Request) -> Response:
        return await _answer(lambda: FileResponse(searcher(request).path_of(request.query_params.get("id", ""))))

    async def pairs(request: Request) -> Response:
        def work() -> dict[str, Any]:
            if state.pairs is None:
                raise AppError(state.pairs_error or "no pairs: start goalclip serve with --pairs MINED.jsonl")
            return state.pairs.page(_number(request, "page", int, 0), _number(request, "min", float),
                                    _number(request, "max", float), request.query_params.get("source", ""))

        return await _answer(work)

    async def pair_png(request: Request) -> Response:
        def work() -> Response:
            if state.pairs is None:
                raise AppError(state.pairs_error or "no pairs")
            return Response(state.pairs.picture(int(request.path_params["n"])), media_type="image/png")

        return await _answer(work)

    async def runs(request: Request) -> Response:
        def work() -> dict[str, Any]:
            folder = request.query_params.get("add", "").strip()
            if folder:
                read_run(folder)  # a bad folder is refused before it joins the list
                with state.runs_lock:
                    if folder not in state.runs:
                        state.runs.append(folder)
            if not state.runs:
                raise AppError("no runs: start goalclip serve with --runs DIR, or add a run folder above")
            return {"runs": state.read_runs()}

        return await _answer(work)

    async def runs_png(_: Request) -> Response:
        return await _answer(lambda: Response(run_figure(state.read_runs()),
                                              media_type="image/png"))

    # Only loopback host names: a web page elsewhere cannot reach this server through DNS rebinding.
    hosts = Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "::1", "[::1]"])
    return Starlette(middleware=[hosts], routes=[
        Route("/", index),
        Route("/api/status", status),
        Route("/api/search", search),
        Route("/api/heatmap", heatmap),
        Route("/api/image", image),
        Route("/api/pairs", pairs),
        Route("/api/pair/{n:int}.png", pair_png),
        Route("/api/runs", runs),
        Route("/api/runs.png", runs_png),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])


def make_state(models: list[str], images: str | None, *, data: str | None = None, base: str | None = None,
               device: str = "cpu", index_dir: str | None = None, pairs: str | None = None,
               runs: list[str] | None = None, evals: list[str] | None = None, context: int | None = None,
               keep_positions: int = 20) -> ServeState:
    """The state for the CLI's flags; models start loading (and indexing) in background threads."""
    state = ServeState(runs=list(runs or []), evals=list(evals or []))
    for model in models:
        if images is None and data is None:
            raise ValueError("--model needs --images DIR or --data MANIFEST (the images to search)")
        searcher = Searcher(model, images, data=data, base=base, device=device, index_dir=index_dir, context=context,
                            keep_positions=keep_positions)
        searcher.start()
        state.searchers.append(searcher)
    if pairs:
        try:
            state.pairs = Pairs(pairs)
        except (AppError, OSError) as exc:  # shown on the Pairs view
            state.pairs_error = str(exc)
    return state


def serve(state: ServeState, host: str, port: int, ready: Callable[[str], None] | None = None) -> None:
    """Run the app until interrupted; ``ready(url)`` is told the address once the socket listens
    (bound here, so ``--port 0`` reports the free port the system chose)."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    bound = sock.getsockname()[1]
    if ready is not None:
        ready(f"http://{'[' + host + ']' if ':' in host else host}:{bound}/")
    config = uvicorn.Config(build_app(state), log_level="warning", lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
