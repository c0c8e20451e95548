"""Create an API key: prints the key once (give it to the client) and the inventory entry.

    python -m gemma_gateway.keys --name team-a --scope inference
    python -m gemma_gateway.keys --name prometheus --scope metrics

Only the sha256 goes into the inventory (ansible-vault); the key itself is never stored.
"""

from __future__ import annotations

import argparse
import json

from .auth import INFERENCE, SCOPES, hash_key, new_key


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--scope", action="append", choices=sorted(SCOPES))
    args = parser.parse_args(argv)
    key = new_key()
    entry = {"name": args.name, "sha256": hash_key(key), "scopes": args.scope or [INFERENCE]}
    print(f"key (give to the client, shown once): {key}")
    print(f"inventory entry (gateway_keys): {json.dumps(entry)}")


if __name__ == "__main__":
    main()
