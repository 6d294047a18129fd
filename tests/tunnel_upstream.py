"""A private MCP server for the tunnel's tests and benchmark (the ``mcp`` SDK, streamable HTTP).

Run: ``python tunnel_upstream.py --port N [--json | --redirect]``. ``--json`` answers with JSON
bodies, otherwise with SSE streams; ``--redirect`` is no MCP server but answers every request
with a redirect (to a cloud metadata address), for the test that the tunnel never follows one. Tools: ``echo``, ``add``, ``big`` (a text of N bytes), ``slow``
(progress notifications every 50 ms for N seconds, then a result) and ``delete_everything``
(harmless; there to be denied).
"""

from __future__ import annotations

import argparse
import http.server

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("tunnel-test-upstream")


@server.tool()
def echo(text: str) -> str:
    """Return the text."""
    return text


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def big(size: int) -> str:
    """A text of ``size`` bytes."""
    return "x" * size


@server.tool()
async def slow(seconds: float, ctx: Context) -> str:
    """Report progress every 50 ms for ``seconds``, then answer."""
    steps = max(1, int(seconds / 0.05))
    for step in range(steps):
        await ctx.report_progress(step + 1, steps)
        await anyio.sleep(0.05)
    return f"slept {seconds}"


@server.tool()
def delete_everything() -> str:
    """Pretend to do something dangerous."""
    return "deleted nothing"


class Redirect(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.send_response(307)
        self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_DELETE = do_POST


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--redirect", action="store_true")
    args = parser.parse_args()
    if args.redirect:
        http.server.HTTPServer(("127.0.0.1", args.port), Redirect).serve_forever()
        return
    app = server.streamable_http_app(json_response=args.json)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
