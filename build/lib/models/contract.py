"""The session event contract: ``session_event.schema.json`` (JSON Schema 2020-12), shipped in the
package and printed by ``skipcache schema``. It is the one source of the event types and their
spellings, the id bounds, the track id form and the timestamp forms: the parser
(``parsing.py``) reads them from here, the README's table is rendered from it, and a test runs
both over the same values to keep them in step."""
from __future__ import annotations

import json
import re
from importlib.resources import files

SCHEMA_TEXT = files(__package__).joinpath("session_event.schema.json").read_text()
SCHEMA: dict = json.loads(SCHEMA_TEXT)
_DEFS = SCHEMA["$defs"]

KIND_ALIASES: dict[str, list[str]] = _DEFS["event_type"]["x-aliases"]
"""Each event type's spellings (matched in any case; a space may stand for an underscore)."""
MAX_ID: int = _DEFS["id"]["maximum"]
TRACK_ID_RE = re.compile(_DEFS["track_id"]["pattern"])
TRACK_ID_LEN = 22
ISO_TIMESTAMP_RE = re.compile(_DEFS["timestamp"]["oneOf"][0]["pattern"])
MAX_TIMESTAMP_LEN: int = _DEFS["timestamp"]["oneOf"][0]["maxLength"]
MAX_EPOCH_MS: int = _DEFS["timestamp"]["oneOf"][1]["maximum"]
MAX_EVENT_TYPE_LEN: int = _DEFS["event_type"]["maxLength"]
EVENT_TYPE_WHITESPACE = " \t\n\r\x0b\x0c"
FIELDS: dict[str, dict] = _DEFS["object"]["properties"]


def event_type_pattern(aliases: dict[str, list[str]]) -> str:
    """The schema's ``event_type`` pattern for these spellings: what the parser accepts."""
    ws = "[ \\t\\n\\r\\u000b\\u000c]*"
    alternatives = "|".join("".join("[_ ]" if c == "_" else f"[{c}{c.upper()}]" for c in a)
                            for spellings in aliases.values() for a in spellings)
    return f"^{ws}({alternatives}){ws}$"


def is_track_id(value: object) -> bool:
    return type(value) is str and len(value) == TRACK_ID_LEN and value.isascii() and value.isalnum()


def markdown_table() -> str:
    """The README's field table, from the schema."""
    required = set(_DEFS["object"]["required"])
    rows = ["| field | required | type | meaning |", "|---|---|---|---|"]
    for name, spec in FIELDS.items():
        ref = spec.get("$ref") or spec.get("anyOf", [{}])[0].get("$ref", "")
        form = _DEFS[ref.rsplit("/", 1)[-1]]["description"] if ref else ""
        if "anyOf" in spec:
            form += "; or null / \"\""
        need = "yes" if name in required else ("for play, skip, like" if name == "track_id" else "no")
        rows.append(f"| `{name}` | {need} | {form} | {spec['x-doc']} |")
    return "\n".join(rows)
