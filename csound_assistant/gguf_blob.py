"""A versioned JSON value packed into one GGUF string key (the opcode table, the synopses):
compact JSON, gzip with mtime 0 (the same value gives the same bytes in every export), base64."""

from __future__ import annotations

import base64
import gzip
import json


def pack(version: int, key: str, payload, *, sort_keys: bool = False) -> str:
    blob = json.dumps({"version": version, key: payload}, separators=(",", ":"),
                      sort_keys=sort_keys)
    return base64.b64encode(gzip.compress(blob.encode(), mtime=0)).decode("ascii")


def unpack(value: str, version: int, key: str):
    """The payload ``pack`` wrote under ``key``; ValueError saying why when ``value`` is not
    one of this version."""
    try:
        data = json.loads(gzip.decompress(base64.b64decode(value, validate=True)))
        if data.get("version") != version:
            raise ValueError(f"version {data.get('version')!r}, this reader knows {version}")
        return data[key]
    except (ValueError, TypeError, KeyError, AttributeError, OSError, EOFError) as exc:
        raise ValueError(str(exc)) from None
