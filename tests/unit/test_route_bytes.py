"""Route pieces are written as bytes, not built as messages: each must be exactly the deterministic
encoding of the message it stands for, whatever the strings (empty, non-ASCII, long enough for a
multi-byte length)."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from kxds.translate import routes
from kxds.translate.encoded import field_head, length_delimited, serialized

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=400)


@settings(max_examples=300, deadline=None)
@given(key=text, value=text)
def test_a_header_option_is_the_bytes_its_message_serialises_to(key: str, value: str) -> None:
    routes._header_option.cache_clear()
    message = base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value.replace("%", "%%")),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )
    assert routes._header_option(key, value) == serialized(message)


@given(number=st.integers(min_value=1, max_value=63), size=st.integers(min_value=0, max_value=70_000))
def test_a_field_head_and_its_data_are_the_field(number: int, size: int) -> None:
    data = b"x" * size
    assert field_head(number, size) + data == length_delimited(number, data)
    # Against the runtime: DataSource's inline_bytes (field 2, in a oneof: written even when empty).
    assert length_delimited(2, data) == base_pb2.DataSource(inline_bytes=data).SerializeToString()
