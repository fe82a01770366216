"""Splitting of conversations longer than a token budget at turn boundaries.

Conversations within the budget pass through (copied by Arrow threads, in input order). Longer ones are cut
greedily into pieces of whole user→assistant pairs, each piece starting with a user turn and repeating the system
prompt, with ids `orig#0`, `orig#1`, ... and `conversation_id = orig` on every row (pieces and whole conversations
alike), so later stages keep a conversation's pieces together; a single pair that alone exceeds the budget cannot
be kept whole and is dropped (a drops row per pair, `pair_over_token_budget`, counted in turn pairs). Stat columns
are recomputed for the pieces from the per-message token counts.
"""
from __future__ import annotations

from functools import partial

import pyarrow as pa
from pydantic import Field

from xwin_data.ops.base import Op, Params, register


class SplitParams(Params):
    max_tokens: int = Field(4096, ge=1, description="token budget of one conversation (system prompt included)")


def split_conversation(messages: list[dict], tokens: list[int], budget: int) -> tuple[list[tuple[list[dict], list[int]]], list[tuple[int, int]]]:
    """Pieces (messages, tokens) of one conversation, and the (pair index, tokens) of pairs over the budget."""
    head, head_tok, start = [], [], 0
    if messages and messages[0]["role"] == "system":
        head, head_tok, start = [messages[0]], [tokens[0]], 1
    base = sum(head_tok)
    pieces, oversize = [], []
    cur, cur_tok = [], []
    for k, i in enumerate(range(start, len(messages) - 1, 2)):
        pair, pair_tok = messages[i:i + 2], tokens[i:i + 2]
        cost = sum(pair_tok)
        if base + cost > budget:
            oversize.append((k, base + cost))
            if cur:
                pieces.append((head + cur, head_tok + cur_tok))
                cur, cur_tok = [], []
            continue
        if cur and base + sum(cur_tok) + cost > budget:
            pieces.append((head + cur, head_tok + cur_tok))
            cur, cur_tok = [], []
        cur, cur_tok = cur + pair, cur_tok + pair_tok
    if cur:
        pieces.append((head + cur, head_tok + cur_tok))
    return pieces, oversize


@register
class SplitLong(Op):
    """Split conversations over a token budget into pieces at turn boundaries (needs `turn_tokens`)."""

    name = "split_long_conversations"
    needs, keeps, adds = {"id", "messages", "turn_tokens", "n_tokens"}, True, {"conversation_id"}
    Params = SplitParams
    schema = "conversations"
    min_inputs = max_inputs = 1
    summary = "cut conversations over max_tokens at user-turn boundaries, ids orig#0, orig#1, …"

    def output_unit(self, table: str, main: str, params: SplitParams) -> str:
        return "pieces"

    def run(self, ctx, params: SplitParams) -> None:
        from xwin_data.text.batches import map_input_parallel

        src, budget = ctx.input(), params.max_tokens
        have = {r[0] for r in ctx.con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
        if not {"turn_tokens", "n_tokens"} <= have:
            raise ValueError(f"{ctx.stage_id}: the input needs turn_tokens and n_tokens; put a conversation_stats "
                             "stage before it")
        rows = (f"(SELECT * REPLACE (coalesce(conversation_id, id) AS conversation_id) FROM {src})"
                if "conversation_id" in have else f"(SELECT *, id AS conversation_id FROM {src})")
        long_sql = f"SELECT * FROM {rows} WHERE n_tokens > {budget}"
        schema = ctx.con.sql(f"{long_sql} LIMIT 0").to_arrow_table().schema
        # The conversations within budget are copied by Arrow threads, in input order; the pieces follow them.
        map_input_parallel(ctx, partial(_within_budget, budget=budget, schema=schema), schema, batch_size=5_000,
                           threads=2, description=f"{ctx.stage_id}: copying conversations within the budget")
        ctx.con.execute("SET threads = 1")  # finding the long ones: one thread holds one row group of conversations
        stats = {"split_conversations": 0, "pieces": 0, "oversize_pairs": 0}

        def split(batch: pa.RecordBatch) -> pa.Table:
            out = []
            for row in batch.to_pylist():
                pieces, oversize = split_conversation(row["messages"], row["turn_tokens"], budget)
                for k, n in oversize:
                    ctx.drop(row["id"], "pair_over_token_budget", f"turn pair {k}: {n} tokens > {budget}",
                             unit="turn_pairs")
                stats["split_conversations"] += 1
                stats["oversize_pairs"] += len(oversize)
                for j, (msgs, toks) in enumerate(pieces):
                    piece = dict(row, id=f"{row['id']}#{j}", messages=msgs, turn_tokens=toks, n_tokens=sum(toks),
                                 n_turns=sum(m["role"] == "assistant" for m in msgs),
                                 n_chars=sum(len(m["content"]) for m in msgs))
                    out.append(piece)
            stats["pieces"] += len(out)
            return pa.Table.from_pylist(out, schema=schema)

        ctx.map_batches(long_sql, split, schema, batch_size=2_000, description=f"{ctx.stage_id}: splitting")
        ctx.stats.update(stats)


def _within_budget(batch: pa.RecordBatch, budget: int, schema: pa.Schema) -> tuple[pa.Table, None]:
    """The batch's conversations of at most `budget` tokens, each its own `conversation_id` unless it has one."""
    import pyarrow.compute as pc

    table = pa.Table.from_batches([batch])
    table = table.filter(pc.less_equal(table.column("n_tokens"), budget))
    ids = table.column("id")
    if "conversation_id" in table.column_names:
        at = table.column_names.index("conversation_id")
        table = table.set_column(at, schema.field("conversation_id"), pc.coalesce(table.column(at), ids))
    else:
        table = table.append_column(schema.field("conversation_id"), ids)
    return table.cast(schema), None
