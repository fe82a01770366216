"""The conversation, defined once: the messages Arrow type, the role vocabulary and how a prompt is cut from messages.

Every table that holds a conversation stores it as `messages: list<struct<role, content>>` with roles `system`,
`user` and `assistant`; readers map the spellings other formats use (ShareGPT's `human`/`gpt`, ...) onto these.
"""
from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa

SYSTEM, USER, ASSISTANT = "system", "user", "assistant"
ROLES = (SYSTEM, USER, ASSISTANT)
# How source formats spell the roles (ShareGPT, OpenAssistant, Bing/Bard exports, Gemini), lower-cased.
ROLE_SPELLINGS = {
    "human": USER, "user": USER, "prompter": USER,
    "gpt": ASSISTANT, "chatgpt": ASSISTANT, "bing": ASSISTANT, "bard": ASSISTANT, "assistant": ASSISTANT,
    "model": ASSISTANT,
    "system": SYSTEM,
}

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES_TYPE = pa.list_(MESSAGE_TYPE)
MESSAGES_SQL_TYPE = "STRUCT(role VARCHAR, content VARCHAR)[]"
ROLES_SQL = "(" + ", ".join(f"'{r}'" for r in ROLES) + ")"

Messages = list[dict[str, str]]


def canonical_role(raw: Any) -> str | None:
    """A source role spelling (any case, surrounding blanks) -> system / user / assistant, or None if unknown."""
    return ROLE_SPELLINGS.get(str(raw).strip().lower())


def valid_messages(value: Any) -> Messages | None:
    """A non-empty list of {role, content} with canonical roles and text content, copied; None if it is not one."""
    if not isinstance(value, list) or not value:
        return None
    out = []
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            return None
        out.append({"role": m["role"], "content": m["content"]})
    return out


def turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def with_response(prompt: Messages, response: str) -> Messages:
    """The prompt's turns followed by one assistant turn (what a reward model or judge scores)."""
    return [dict(m) for m in prompt] + [turn(ASSISTANT, response)]


def prompt_turns(messages: Any, upto: Literal["last", "first"] = "last") -> Messages | None:
    """The turns of a conversation up to and including its last (or first) user turn, so a full SFT conversation
    becomes a prompt; None when there is no user turn."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages or []]
    users = [i for i, m in enumerate(msgs) if m["role"] == USER]
    if not users:
        return None
    return msgs[:(users[-1] if upto == "last" else users[0]) + 1]


def prompt_turns_sql(expr: str, upto: Literal["last", "first"] = "last") -> str:
    """`prompt_turns` in DuckDB SQL over a messages expression (an empty list when there is no user turn)."""
    roles = f"list_transform({expr}, lambda x: x.role)"
    if upto == "first":
        return f"list_slice({expr}, 1, coalesce(list_position({roles}, 'user'), 0))"
    return (f"list_slice({expr}, 1, len({expr}) + 1 - "
            f"coalesce(list_position(list_reverse({roles}), 'user'), len({expr}) + 1))")
