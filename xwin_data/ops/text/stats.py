"""Computed columns of a conversation table: n_turns (assistant turns), n_chars, tokens per message, language.

`language` is the macrolanguage users filter by (`zh` for Mandarin, Wu or Cantonese), `language_raw` the detector's
own code (see `xwin_data.text.language.macrolanguage`).

Counts are vectorised over Arrow columns; tokens use the built-in approximation (regex pieces, see
`xwin_data.text.tokens`) or a Hugging Face tokenizer; language comes from py3langid on a short text sample.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from xwin_data.ops.base import Op, Params, register
from xwin_data.text.message_arrays import flat_messages

STAT_FIELDS = [("n_turns", pa.int32()), ("n_chars", pa.int64()), ("turn_tokens", pa.list_(pa.int32())),
               ("n_tokens", pa.int64()), ("language", pa.string()),
               ("language_raw", pa.string())]


class StatsParams(Params):
    tokenizer: str = Field("approx", description="'approx' (regex pieces, fast, no download) or a HF tokenizer "
                                                 "path / hub id loaded with AutoTokenizer.from_pretrained")
    language: bool = Field(True, description="identify the language (py3langid, model inside the package)")
    language_chars: int = Field(400, ge=20, description="characters of the first messages used to decide the language")
    batch_size: int = Field(10_000, ge=1)

    def forks(self) -> bool:
        """Whether batches run in forked workers: the approximate counter does; a HF tokenizer runs in one thread
        (it has threads of its own)."""
        return self.tokenizer == "approx"


def with_stat_fields(schema: pa.Schema) -> pa.Schema:
    """A conversation table's schema with the stat columns (replacing any it had)."""
    names = {n for n, _ in STAT_FIELDS}
    return pa.schema([f for f in schema if f.name not in names] + [pa.field(n, t) for n, t in STAT_FIELDS])


def _segment_sums(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    csum = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
    return csum[offsets[1:]] - csum[offsets[:-1]]


def add_stats(table: pa.Table, tokenizer: str, language: bool, lang_text: pa.Array | None = None) -> pa.Table:
    """The table with the stat columns (re)computed from `messages` (language from `lang_text`, if given)."""
    from xwin_data.text.language import detect_batch, macrolanguage
    from xwin_data.text.tokens import APPROX, approx_count_column, count_with_tokenizer

    messages = table.column("messages").combine_chunks()
    role, content, _, offsets = flat_messages(messages)
    offs = offsets.to_numpy()
    if tokenizer == APPROX:
        tokens = approx_count_column(content)
    else:
        tokens = pa.array(count_with_tokenizer(tokenizer, content.to_pylist()), pa.int32())
    is_asst = pc.equal(role, "assistant").to_numpy(zero_copy_only=False).astype(np.int32)
    cols = {
        "n_turns": pa.array(_segment_sums(is_asst, offs).astype(np.int32)),
        "n_chars": pa.array(_segment_sums(pc.utf8_length(content).to_numpy(), offs)),
        "turn_tokens": pa.ListArray.from_arrays(offsets, tokens),
        "n_tokens": pa.array(_segment_sums(tokens.to_numpy(), offs)),
    }
    if language and lang_text is not None:
        raw = detect_batch(lang_text.to_pylist())
        cols["language_raw"] = pa.array(raw, pa.string())
        cols["language"] = pa.array([macrolanguage(c) for c in raw], pa.string())
    else:
        cols["language_raw"] = cols["language"] = pa.nulls(table.num_rows, pa.string())
    table = table.drop_columns([n for n, _ in STAT_FIELDS if n in table.column_names])
    for name, typ in STAT_FIELDS:
        table = table.append_column(pa.field(name, typ), cols[name].cast(typ))
    return table


@register
class ConversationStats(Op):
    """Add n_turns, n_chars, turn_tokens (per message), n_tokens and language to a conversation table."""

    name = "conversation_stats"
    needs, keeps, adds = {"messages"}, True, {n for n, _ in STAT_FIELDS}
    Params = StatsParams
    schema = "conversations"
    min_inputs = max_inputs = 1
    runs = "batches"
    summary = "n_turns, n_chars, tokens per message (approx or a HF tokenizer), language (py3langid)"

    def external_fingerprint(self, params: StatsParams) -> dict:
        from xwin_data.text.tokens import tokenizer_fingerprint

        import py3langid

        from importlib.metadata import version

        return {**tokenizer_fingerprint(params.tokenizer), "py3langid": getattr(py3langid, "__version__", ""),
                "iso639-lang": version("iso639-lang")}

    def run(self, ctx, params: StatsParams) -> None:
        schema = with_stat_fields(ctx.con.sql(f"SELECT * FROM {ctx.input()} LIMIT 0").to_arrow_table().schema)
        prepare_stats(params)
        ctx.executor.map_input(ctx, partial(stats_batch, params=params), schema, batch_size=params.batch_size,
                               description=f"{ctx.stage_id}: stats + language", threads=None if params.forks() else 1,
                               processes=params.forks())
        release_stats(params)


def release_stats(params: StatsParams) -> None:
    if params.language:
        from xwin_data.text.language import release_model

        release_model()  # the workers had it; later stages of the build need not carry it


def prepare_stats(params: StatsParams) -> None:
    """Load the language model and the token classes here, once, so forked workers start with them."""
    if not params.forks():
        return
    from xwin_data.text.tokens import _char_classes

    _char_classes()
    if params.language:
        from xwin_data.text.language import detect_batch, macrolanguage

        detect_batch(["warm up"])
        macrolanguage("en")


def stats_batch(batch: pa.RecordBatch, params: StatsParams) -> tuple[pa.Table, None]:
    return add_stats_to_table(pa.Table.from_batches([batch]), params), None


def add_stats_to_table(table: pa.Table, params: StatsParams) -> pa.Table:
    from xwin_data.text.language import sample_column

    text = sample_column(table.column("messages"), 4, params.language_chars) if params.language else None
    return add_stats(table, params.tokenizer, params.language, text)
