"""Cleaning of conversation text (HTML to markdown, unicode repair, whitespace), column-at-a-time over Arrow.

Only values whose cheap regex test says they need HTML or unicode work go through Python; whitespace rules run as
vectorised regex over whole columns. See `xwin_data.text.cleaning` for what each step does.
"""
from __future__ import annotations

from functools import partial
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from xwin_data.ops.base import Op, Params, register
from xwin_data.ops.text import stats as stats_op
from xwin_data.text.message_arrays import flat_messages, rebuild_messages


class CleanParams(Params):
    html: bool = Field(True, description="convert assistant values that are HTML (ShareGPT page scrapes) to markdown")
    unicode: Literal["fast", "full", "off"] = Field(
        "fast", description="ftfy repair: fast = values with mojibake signatures, entities or control characters; "
                            "full = every non-ASCII value; off")
    whitespace: bool = Field(True, description="CRLF→LF, nbsp/zero-width, trailing spaces, 3+ newlines→2, trim")
    on_bad_turn: Literal["truncate", "drop_conversation"] = Field(
        "truncate", description="a message empty once cleaned: truncate keeps the turns before it when they end on "
                                "an assistant turn (the cut is a drops row, unit cuts); drop_conversation drops "
                                "the conversation")
    batch_size: int = Field(10_000, ge=1)
    stats: stats_op.StatsParams | None = Field(
        None, description="also add conversation_stats' columns (n_turns, n_chars, turn_tokens, n_tokens, language) "
                          "to the cleaned rows, in the same pass: the table is read and written once instead of "
                          "twice. Its options as conversation_stats' ({} for the defaults); batch_size is this op's")


@register
class CleanConversations(Op):
    """Clean every message value; a conversation left with an empty value is dropped (`empty_after_cleaning`)."""

    name = "clean_conversations"
    needs, keeps, adds = {"id", "messages"}, True, set()
    Params = CleanParams
    schema = "conversations"
    min_inputs = max_inputs = 1
    runs = "batches"
    summary = "HTML→markdown, unicode repair (ftfy, fast path), whitespace normalisation; with stats: {}, " \
              "conversation_stats' columns in the same pass"

    def output_columns(self, table, main, params: CleanParams, input_columns):
        if params.stats is None:
            return super().output_columns(table, main, params, input_columns)
        return None if input_columns is None else set(input_columns) | {n for n, _ in stats_op.STAT_FIELDS}

    def external_fingerprint(self, params: CleanParams) -> dict:
        return {} if params.stats is None else stats_op.ConversationStats().external_fingerprint(params.stats)

    def run(self, ctx, params: CleanParams) -> None:
        totals = {"html_values": 0, "unicode_values": 0, "empty_after_cleaning": 0, "truncated_after_cleaning": 0}

        def record(extra: tuple[dict, list]) -> None:
            counts, drops = extra
            totals["html_values"] += counts["html"]
            totals["unicode_values"] += counts["unicode"]
            for rid, reason, detail, unit in drops:
                totals["truncated_after_cleaning" if unit else "empty_after_cleaning"] += 1
                ctx.drop(rid, reason, detail, unit=unit)

        _prepare(params)
        schema = ctx.con.sql(f"SELECT * FROM {ctx.input()} LIMIT 0").to_arrow_table().schema
        stats, forks = params.stats, params.stats is None or params.stats.forks()
        if stats is not None:
            schema = stats_op.with_stat_fields(schema)
        ctx.executor.map_input(ctx, partial(clean_batch, params=params), schema, record, batch_size=params.batch_size,
                               description=f"{ctx.stage_id}: cleaning" + (" + stats + language" if stats else ""),
                               threads=None if forks else 1, processes=forks)
        if stats is not None:
            stats_op.release_stats(stats)
        ctx.stats.update(totals)


def _prepare(params: CleanParams) -> None:
    """Import what cleaning needs here, once, so forked workers start with it."""
    from xwin_data.text import cleaning  # noqa: F401

    if params.html:
        import markdownify  # noqa: F401
    if params.unicode != "off":
        import ftfy  # noqa: F401
    if params.stats is not None:
        stats_op.prepare_stats(params.stats)


def clean_batch(batch: pa.RecordBatch, params: CleanParams) -> tuple[pa.Table, tuple[dict, list]]:
    """One batch cleaned, with the step counts and the drops: conversations left with an empty value are cut
    before it (a drop in unit `cuts`) or, where nothing usable is left or the policy says so, dropped."""
    from xwin_data.text.cleaning import clean_column

    table = pa.Table.from_batches([batch])
    messages = table.column("messages").combine_chunks()
    role, content, parents, offsets = flat_messages(messages)
    content, counts = clean_column(content, role, params.html, params.unicode, params.whitespace)
    table = table.set_column(table.schema.get_field_index("messages"), "messages",
                             rebuild_messages(role, content, offsets))
    drops: list = []
    empty = pc.equal(pc.utf8_length(content), 0)
    if pc.any(empty).as_py():
        bad_rows = pc.unique(pc.filter(parents, empty)).to_pylist()
        table, drops = _cut_at_empty(table, bad_rows, params.on_bad_turn)
    if params.stats is not None:
        table = stats_op.add_stats_to_table(table, params.stats)
    return table, (counts, drops)


def _cut_at_empty(table: pa.Table, bad_rows: list[int], on_bad_turn: str) -> tuple[pa.Table, list]:
    """Rows with an empty message truncated before it (when the turns before it end on the assistant and the policy
    is truncate) or removed; one drops row (id, reason, detail, unit) each."""
    from xwin_data.text.records import truncate_at

    ids = table.column("id").to_pylist()
    msgs_col = table.column("messages")
    drops, remove, replace = [], [], {}
    for row in bad_rows:
        msgs = msgs_col[row].as_py()
        k = next(i for i, m in enumerate(msgs) if not m["content"])
        what = f"turn {k} ({msgs[k]['role']}) is empty once cleaned"
        kept = truncate_at([(m["role"], m["content"]) for m in msgs], k, "empty_after_cleaning", what) \
            if on_bad_turn == "truncate" else None
        if kept is None:
            remove.append(row)
            drops.append((ids[row], "empty_after_cleaning", what, None))
        else:
            turns, cut = kept
            replace[row] = [{"role": r, "content": c} for r, c in turns]
            drops.append((ids[row], cut.reason, cut.detail, "cuts"))
    if replace:  # splice the truncated rows into the column (slices of the rest are not copied into Python)
        col = msgs_col.combine_chunks() if isinstance(msgs_col, pa.ChunkedArray) else msgs_col
        parts, start = [], 0
        for row in sorted(replace):
            parts += [col.slice(start, row - start), pa.array([replace[row]], type=col.type)]
            start = row + 1
        parts.append(col.slice(start))
        table = table.set_column(table.schema.get_field_index("messages"), "messages", pa.concat_arrays(parts))
    if remove:
        table = table.filter(pc.invert(pc.is_in(pa.array(range(table.num_rows)), pa.array(remove))))
    return table, drops
