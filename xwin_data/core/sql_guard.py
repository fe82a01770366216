"""SQL that users and recipes hand to DuckDB, kept to the access it needs.

Three guards, all built on DuckDB's own parser and settings rather than on pattern matching:
- statement checks (`duckdb.extract_statements`): a recipe query is exactly one SELECT, a predicate is one
  expression, and read-only `xwin-data sql` runs only statements that cannot write files;
- typed `${var}` substitution: a value lands in SQL as a literal of its type, never as raw text;
- confinement: external access off, reads limited to the files a connection needs, configuration locked.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable

import duckdb

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*)\}")
_GLOB_CHARS = "*?["

# Statements read-only `xwin-data sql` runs. They act on the in-memory connection only: with external access
# off and no ATTACH, nothing they do reaches a file. COPY, EXPORT, ATTACH, SET, LOAD/INSTALL and the rest
# are refused by type before DuckDB sees them.
READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN", "PRAGMA", "CREATE", "DROP", "INSERT", "UPDATE", "DELETE"}


class SqlRefused(ValueError):
    """SQL that asks for more than it may do; the message says what and why in one line."""


def statement_types(sql: str) -> list[str]:
    """The type of each statement in `sql` (e.g. ['SELECT', 'COPY']); raises SqlRefused if it does not parse."""
    try:
        return [s.type.name for s in duckdb.extract_statements(sql)]
    except duckdb.Error as err:
        raise SqlRefused(f"SQL does not parse: {_first_line(err)}") from None


def check_select(sql: str, what: str = "query") -> str:
    """Return `sql` (trailing `;` removed) if it is exactly one SELECT; raise SqlRefused otherwise."""
    types = statement_types(sql)
    if len(types) != 1:
        raise SqlRefused(f"{what} must be exactly one SELECT statement, got {len(types)} statements "
                         f"({', '.join(types) or 'none'})")
    if types[0] != "SELECT":
        raise SqlRefused(f"{what} must be a SELECT statement, got {types[0]}")
    return re.sub(r"[;\s]+$", "", sql)


def check_expression(expr: str, what: str = "expression") -> str:
    """Return `expr` if it is one SQL expression (it is checked inside `SELECT (...)`)."""
    try:
        check_select(f"SELECT (\n{expr}\n)", what)
    except SqlRefused as err:
        raise SqlRefused(f"{what} must be one SQL expression: {err}") from None
    return expr


def check_read_only(sql: str) -> str:
    """Refuse a statement that could write outside the in-memory connection; exactly one statement."""
    types = statement_types(sql)
    if len(types) != 1:
        raise SqlRefused(f"one statement at a time in read-only mode (got {len(types)}); "
                         "run them one by one, or pass --write")
    if types[0] not in READ_ONLY_STATEMENTS:
        raise SqlRefused(f"{types[0]} statements are refused: the catalog is read-only unless --write")
    return sql


# ---------------------------------------------------------------------------------------------- ${var} in SQL
def sql_literal(value: Any, where: str = "") -> str:
    """A Python value as a DuckDB literal of its type."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            return f"'{value}'::DOUBLE"
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(sql_literal(v, where) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{sql_literal(str(k))}: {sql_literal(v, where)}" for k, v in value.items()) + "}"
    raise SqlRefused(f"{where}: a {type(value).__name__} cannot be used in SQL")


def _quote_contexts(text: str) -> list[str | None]:
    """For each character: "'" inside a string literal, '"' inside a quoted identifier, '-' or '/' in a
    comment, None in plain SQL."""
    ctx: list[str | None] = [None] * len(text)
    i, state = 0, None
    while i < len(text):
        c = text[i]
        if state is None:
            if c in "'\"":
                state = c
            elif text.startswith("--", i):
                state = "-"
            elif text.startswith("/*", i):
                state = "/"
            ctx[i] = state if c not in "'\"" else None
        else:
            ctx[i] = state
            if state in "'\"" and c == state:
                if text[i + 1:i + 2] == state:  # doubled quote: still inside
                    ctx[i + 1] = state
                    i += 1
                else:
                    ctx[i] = None
                    state = None
            elif state == "-" and c == "\n":
                state = None
            elif state == "/" and text.startswith("*/", i):
                ctx[i + 1] = state
                i += 1
                state = None
        i += 1
    return ctx


def render_sql(text: str, lookup: Callable[[str], Any], where: str = "") -> str:
    """Substitute `${var}` in SQL: inside a string literal the value is escaped text, inside a quoted identifier
    an escaped name, elsewhere a typed literal (numbers and booleans as such, strings quoted, lists as lists)."""
    if "${" not in text:
        return text
    ctx = _quote_contexts(text)
    out, last = [], 0
    for m in _VAR.finditer(text):
        value = lookup(m.group(1))
        kind = ctx[m.start()]
        if kind == "'":
            piece = (value if isinstance(value, str) else json.dumps(value)).replace("'", "''")
        elif kind == '"':
            piece = str(value).replace('"', '""')
        elif kind in ("-", "/"):
            piece = m.group(0)  # a comment: left as written
        else:
            piece = sql_literal(value, where)
        out.append(text[last:m.start()])
        out.append(piece)
        last = m.end()
    out.append(text[last:])
    return "".join(out)


# ---------------------------------------------------------------------------------------------- confinement
def named_paths(sql: str) -> list[str]:
    """The string literals of `sql` that may name files or folders (a separator, an extension, a wildcard, or
    an existing path)."""
    paths = []
    try:
        tokens = duckdb.tokenize(sql)
    except duckdb.Error:
        return paths
    for n, (pos, kind) in enumerate(tokens):
        if kind != duckdb.token_type.string_const:
            continue
        end = tokens[n + 1][0] if n + 1 < len(tokens) else len(sql)
        raw = sql[pos:end].strip()
        if len(raw) >= 2 and raw[0] == "'" and raw.rstrip().endswith("'"):
            value = raw[1:raw.rstrip().rfind("'")].replace("''", "'")
            if value and ("/" in value or Path(value).suffix or any(c in value for c in _GLOB_CHARS)
                          or Path(value).exists()):
                paths.append(value)
    return paths


def access_for(paths: Iterable[str]) -> tuple[list[str], list[str]]:
    """(directories, files) to allow for paths that may be globs: a glob opens its folder before the first
    wildcard, a plain path the file itself (as written and resolved)."""
    dirs, files = [], []
    for p in paths:
        if any(ch in p for ch in _GLOB_CHARS):
            head = p[:min(p.index(ch) for ch in _GLOB_CHARS if ch in p)]
            base = head if head.endswith("/") else (head.rsplit("/", 1)[0] + "/" if "/" in head else "./")
            dirs += [base, str(Path(base).resolve()) + "/"]
        else:
            files += [p, str(Path(p).resolve())]
    return sorted(set(dirs)), sorted(set(files))


def confine(con: duckdb.DuckDBPyConnection, *, dirs: Iterable[str] = (), files: Iterable[str] = ()) -> None:
    """Limit a connection to the given folders and files, turn external access off and lock the settings."""
    dirs = sorted({d if d.endswith("/") else d + "/" for d in dirs})
    files = sorted(set(files))
    if dirs:
        con.execute("SET allowed_directories = " + sql_literal(dirs))
    if files:
        con.execute("SET allowed_paths = " + sql_literal(files))
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET lock_configuration = true")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
