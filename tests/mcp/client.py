"""An MCP client for the gateway's end-to-end test (tests/tests/gateway_mcp.rs).

The official `mcp` client over Streamable HTTP: initialize, list the tools, call `add`, `echo`
and `seen_headers`. Output is one JSON object per line, `{"<name>": <value>}`, keys sorted and
compact so the test can compare them as text:

    {"server":"postern-mcp-demo"}
    {"tools":["add","echo","seen_headers"]}
    {"add":"42"}
    {"echo":"hello through postern"}
    {"seen":{"authorization":null,"host":"127.0.0.1:1234","x-api-key":null}}
    {"statuses":[200,202,200,...]}

Exit 0 on success. On any failure (including the overall --timeout) it prints `{"error": ...}`
and the `statuses` line (every HTTP status answered so far) and exits 1, so the caller can tell
"the gateway refused" from "something else broke".
"""

import argparse
import json
import ssl
import sys

import anyio
import httpx
from mcp import ClientSession

try:  # newer mcp (1.30 has it, 1.21 not): the transport takes a ready httpx client
    from mcp.client.streamable_http import streamable_http_client
except ImportError:  # older: a factory for the client
    streamable_http_client = None
    from mcp.client.streamable_http import streamablehttp_client

# The request headers the server's `seen_headers` tool reports back.
SEEN = ["authorization", "host", "x-api-key"]


def emit(key: str, value) -> None:
    print(json.dumps({key: value}, sort_keys=True, separators=(",", ":")), flush=True)


def trust(ca_path: str | None):
    """An SSL context trusting only the CA in `ca_path` (PEM or DER); system roots without one."""
    if ca_path is None:
        return True
    with open(ca_path, "rb") as f:
        data = f.read()
    cadata = data.decode("ascii") if b"-----BEGIN" in data else data
    return ssl.create_default_context(cadata=cadata)


def text_of(result, tool: str) -> str:
    """The single text content of a successful tool call."""
    if getattr(result, "isError", False):
        raise RuntimeError(f"tool {tool} failed: {result.content}")
    texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
    if len(texts) != 1:
        raise RuntimeError(f"tool {tool}: expected one text content, got {result.content}")
    return texts[0]


async def run(args, statuses: list[int]) -> None:
    headers = {}
    if args.api_key and args.header == "x-api-key":
        headers["X-API-Key"] = args.api_key
    elif args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    verify = trust(args.ca)

    async def record(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    def make_client(headers=None, timeout=None, auth=None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            headers=headers,
            timeout=timeout or httpx.Timeout(args.timeout),
            auth=auth,
            verify=verify,
            event_hooks={"response": [record]},
        )

    if streamable_http_client is not None:
        http_client = make_client(headers=headers)
        transport = streamable_http_client(args.url, http_client=http_client)
    else:
        http_client = None
        transport = streamablehttp_client(args.url, headers=headers, httpx_client_factory=make_client)

    try:
        async with transport as (read, write, _session_id):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                emit("server", init.serverInfo.name)
                tools = await session.list_tools()
                emit("tools", sorted(t.name for t in tools.tools))
                add = await session.call_tool("add", {"a": 2, "b": 40})
                emit("add", text_of(add, "add"))
                echo = await session.call_tool("echo", {"text": args.echo})
                emit("echo", text_of(echo, "echo"))
                seen = json.loads(text_of(await session.call_tool("seen_headers", {}), "seen_headers"))
                emit("seen", {name: seen.get(name) for name in SEEN})
    finally:
        if http_client is not None:
            await http_client.aclose()


async def bounded(args, statuses: list[int]) -> None:
    with anyio.fail_after(args.timeout):
        await run(args, statuses)


def describe(exc: BaseException) -> str:
    """Flattens exception groups (anyio task groups) into one readable line."""
    inner = getattr(exc, "exceptions", None)  # an ExceptionGroup (builtin from Python 3.11)
    if isinstance(inner, (list, tuple)) and inner:
        return "; ".join(describe(e) for e in inner)
    return f"{type(exc).__name__}: {exc}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the MCP endpoint, e.g. https://localhost:8443/peer/x/mcp")
    parser.add_argument("--ca", help="CA certificate (PEM or DER) to trust instead of the system roots")
    parser.add_argument("--api-key", help="gateway API key; omit to send none")
    parser.add_argument("--header", choices=["authorization", "x-api-key"], default="authorization")
    parser.add_argument("--echo", default="hello through postern")
    parser.add_argument("--timeout", type=float, default=30.0, help="for the whole session, in seconds")
    args = parser.parse_args()

    statuses: list[int] = []
    try:
        anyio.run(bounded, args, statuses)
    except BaseException as exc:  # noqa: BLE001 — every failure is reported the same way
        emit("error", describe(exc))
        emit("statuses", statuses)
        return 1
    emit("statuses", statuses)
    return 0


if __name__ == "__main__":
    sys.exit(main())
