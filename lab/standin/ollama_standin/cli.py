"""The `ollama` command inside the stand-in image: serve, list, ps, show, --version.

The client commands talk to the server at OLLAMA_HOST as the real CLI does, so
a compose healthcheck of `ollama list` fails while the server is not answering.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime

from . import VERSION


def base_url() -> str:
    from .server import parse_host

    host, port = parse_host(os.environ.get("OLLAMA_HOST"))
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def call(method: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base_url() + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        message = json.loads(error.read() or b"{}").get("error", str(error))
        raise SystemExit(f"Error: {message}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        raise SystemExit("Error: could not connect to ollama app, is it running?") from None


def human_size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def ago(stamp: str) -> str:
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return "Less than a second ago" if seconds < 1 else f"{seconds} seconds ago"


def table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("    ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())


def cmd_list(_args) -> None:
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    for model in call("GET", "/api/tags")["models"]:
        rows.append([model["name"], model["digest"][:12], human_size(model["size"]),
                     ago(model["modified_at"])])
    table(rows)


def cmd_ps(_args) -> None:
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    for model in call("GET", "/api/ps")["models"]:
        rows.append([model["name"], model["digest"][:12], human_size(model["size"]),
                     "100% CPU", str(model.get("context_length", "")), model["expires_at"]])
    table(rows)


def cmd_show(args) -> None:
    info = call("POST", "/api/show", {"model": args.model})
    details, meta = info["details"], info["model_info"]
    arch = details.get("family", "")
    print("  Model")
    for label, value in (("architecture", arch),
                         ("parameters", details.get("parameter_size")),
                         ("context length", meta.get(f"{arch}.context_length")),
                         ("embedding length", meta.get(f"{arch}.embedding_length")),
                         ("quantization", details.get("quantization_level"))):
        print(f"    {label:<20}{value}")
    print("\n  Capabilities")
    for capability in info.get("capabilities", []):
        print(f"    {capability}")
    if info.get("parameters"):
        print("\n  Parameters")
        for line in info["parameters"].splitlines():
            print(f"    {line}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-v", "--version"):
        print(f"ollama version is {VERSION}")
        return
    parser = argparse.ArgumentParser(prog="ollama", description="Ollama stand-in (lab only)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="Start the server")
    sub.add_parser("list", aliases=["ls"], help="List models")
    sub.add_parser("ps", help="List running models")
    show = sub.add_parser("show", help="Show information for a model")
    show.add_argument("model")
    args = parser.parse_args(argv)
    if args.command == "serve":
        from .server import serve

        serve()
    else:
        {"list": cmd_list, "ls": cmd_list, "ps": cmd_ps, "show": cmd_show}[args.command](args)


if __name__ == "__main__":
    main()
