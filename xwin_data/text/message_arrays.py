"""The `messages` column (list<struct<role, content>>) as flat Arrow arrays and back, for column-at-a-time work on
every message of a batch."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


def flat_messages(messages: pa.ListArray) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array]:
    """(role, content, parent row index, offsets starting at 0) of a list<struct<role, content>> column."""
    flat = pc.list_flatten(messages)
    parents = pc.list_parent_indices(messages)
    offsets = pc.subtract(messages.offsets, messages.offsets[0])
    return flat.field("role"), flat.field("content"), parents, offsets


def rebuild_messages(role: pa.Array, content: pa.Array, offsets: pa.Array) -> pa.ListArray:
    struct = pa.StructArray.from_arrays([role, content], names=["role", "content"])
    return pa.ListArray.from_arrays(offsets, struct)
