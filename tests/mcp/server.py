"""A small MCP server for the gateway's end-to-end test (tests/tests/gateway_mcp.rs).

FastMCP from the official `mcp` package, served over Streamable HTTP at `/mcp` by uvicorn on
127.0.0.1. The socket is bound here, on port 0, before uvicorn starts, so there is no port race:
the port is printed on stdout as `PORT <n>` once the socket listens, and the caller connects to it.
Run it by hand with `python tests/mcp/server.py`, then `python tests/mcp/client.py --url
http://127.0.0.1:<n>/mcp`.

The DNS-rebinding check of recent `mcp` versions is kept on and pinned to this exact address:
`postern expose` rewrites `Host` to the origin's `127.0.0.1:<port>`, so a request whose Host
arrives any other way is refused (421) and the test fails.
"""

import argparse
import json
import os
import socket
import sys
import threading

import uvicorn
from mcp.server.fastmcp import Context, FastMCP


def build(port: int) -> FastMCP:
    options = {}
    try:
        from mcp.server.transport_security import TransportSecuritySettings
    except ImportError:  # mcp < 1.10 has no Host/Origin checks at all
        pass
    else:
        options["transport_security"] = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[f"127.0.0.1:{port}"],
            allowed_origins=[f"http://127.0.0.1:{port}"],
        )
    server = FastMCP("postern-mcp-demo", host="127.0.0.1", port=port, **options)

    @server.tool()
    def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    @server.tool()
    def echo(text: str) -> str:
        """Returns the text unchanged."""
        return text

    @server.tool()
    def seen_headers(ctx: Context) -> str:
        """The HTTP request headers this call arrived with, as a JSON object (lower-case names)."""
        request = getattr(ctx.request_context, "request", None)
        headers = {} if request is None else {k.lower(): v for k, v in request.headers.items()}
        return json.dumps(headers)

    return server


def exit_when_stdin_closes() -> None:
    """The test holds our stdin open: if it dies without killing us, we go too."""
    sys.stdin.buffer.read()
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description="MCP demo server for the gateway test")
    parser.add_argument(
        "--exit-with-stdin", action="store_true", help="exit when stdin reaches end of file"
    )
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    app = build(port).streamable_http_app()
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    if args.exit_with_stdin:
        threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    print(f"PORT {port}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    sys.exit(main())
