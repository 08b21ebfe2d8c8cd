"""Fuzzing the file loader: any input gives a clean error or a valid model, never a traceback."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reliable.errors import TopologyFileError
from reliable.topology import Topology
from reliable.topology_file import loads

KEYS = [
    "vhost",
    "exchanges",
    "queues",
    "bindings",
    "policies",
    "name",
    "type",
    "durable",
    "exclusive",
    "auto_delete",
    "dead_letter",
    "exchange",
    "routing_key",
    "strategy",
    "overflow",
    "delivery_limit",
    "message_ttl",
    "expires",
    "max_length",
    "max_length_bytes",
    "max_priority",
    "single_active_consumer",
    "max_age",
    "arguments",
    "source",
    "destination",
    "destination_type",
    "pattern",
    "apply_to",
    "priority",
    "definition",
    "internal",
    "alternate_exchange",
    "x-message-ttl",
    "x-max-priority",
    "x-foo",
    "quorum",
    "classic",
    "stream",
    "reject-publish",
    "at-least-once",
    "topic",
    "10m",
    "1GB",
    "amq.topic",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.sampled_from(KEYS),
    st.text(max_size=12),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers()),
            inner,
            max_size=5,
        ),
    ),
    max_leaves=30,
)
top_level = st.fixed_dictionaries(
    {},
    optional={
        "vhost": scalars,
        "exchanges": st.lists(documents, max_size=3),
        "queues": st.lists(
            st.dictionaries(st.sampled_from(KEYS), documents, max_size=6), max_size=3
        ),
        "bindings": st.lists(documents, max_size=3),
        "policies": st.lists(documents, max_size=2),
    },
)


def check(text: str) -> None:
    problems: list[tuple[str, str]] = []
    result: Topology | None = None
    try:
        result = loads(text, "fuzz.yaml")
    except TopologyFileError as exc:
        problems = exc.problems
    if result is None:
        assert problems
        assert all(isinstance(loc, str) and isinstance(m, str) for loc, m in problems)
    else:
        assert isinstance(result, Topology)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_any_text_gives_a_model_or_a_file_error(text: str) -> None:
    check(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(documents, top_level))
def test_any_yaml_structure_gives_a_model_or_a_file_error(data: Any) -> None:
    check(yaml.safe_dump(data))
