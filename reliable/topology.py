"""
Topology models: exchanges, queues, bindings and policies of one vhost.

The models are the file format (decision 1 of the style guide): frozen,
``extra="forbid"`` so a misspelt key fails, with RabbitMQ's broker-wide rules
as model validators. Version-dependent rules live in `reliable.declare_plan`,
which knows the broker version. ``Queue.declare_arguments()`` renders the
exact ``x-*`` arguments RabbitMQ expects (durations as integer milliseconds);
the Celery helper and ``apply`` both use it, so they never disagree (no 406).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictInt,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from reliable.topology_rules import (
    ALL_QUEUE_ARGUMENTS,
    DURATION_PATTERN,
    EXCHANGE_ARGUMENTS,
    EXCHANGE_TYPES,
    MAX_MS,
    POLICY_BYTES,
    POLICY_KEYS,
    POLICY_MS,
    QUEUE_ARGUMENTS,
    SIZE_PATTERN,
    TYPED_QUEUE_ARGUMENTS,
    did_you_mean,
    format_duration,
    format_size,
    milliseconds,
    parse_duration,
    parse_size,
)

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": DURATION_PATTERN},
                {"type": "integer", "minimum": 0, "maximum": MAX_MS},
            ],
            "description": "500ms, 30s, 10m, 2h, 7d, or integer milliseconds",
        }
    ),
]
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    PlainSerializer(format_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": SIZE_PATTERN},
                {"type": "integer", "minimum": 1},
            ],
            "description": "bytes, or 1GB (10^9), 512MiB (2^29) ...",
        }
    ),
]
PositiveInt = Annotated[StrictInt, Field(ge=1)]
Scalar = str | bool | int | float


def _scalar(value: object) -> object:
    # One clear error instead of one per member of a str|bool|int|float union.
    if not isinstance(value, str | bool | int | float):
        msg = f"argument values must be a string, number or boolean, got {value!r}"
        raise ValueError(msg)
    return value


Arguments = dict[
    str,
    Annotated[
        Any,
        AfterValidator(_scalar),
        WithJsonSchema({"type": ["string", "number", "boolean"]}),
    ],
]


def _not_reserved(name: str) -> str:
    if name.startswith("amq."):
        msg = f"name {name!r} starts with 'amq.', which RabbitMQ reserves; choose another name"
        raise ValueError(msg)
    return name


Name = Annotated[
    str, Field(min_length=1, max_length=255), AfterValidator(_not_reserved)
]
#: A reference may name a built-in (``amq.topic``) or the default exchange ``""``.
Ref = Annotated[str, Field(max_length=255)]


# -- models ----------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Exchange(_Model):
    """An exchange; durable unless said otherwise."""

    name: Name
    #: direct, topic, fanout, headers, or a plugin type such as x-delayed-message.
    type: str = "direct"
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    #: Where messages that match no binding go (rendered as ``alternate-exchange``).
    alternate_exchange: Ref | None = None
    arguments: Arguments = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in EXCHANGE_TYPES and not value.startswith("x-"):
            msg = (
                f"unknown exchange type {value!r}{did_you_mean(value, EXCHANGE_TYPES)}"
            )
            raise ValueError(msg)
        return value

    @field_validator("arguments")
    @classmethod
    def _known_arguments(cls, value: Arguments) -> Arguments:
        for key in value:
            if key == "alternate-exchange":
                msg = "use the 'alternate_exchange' field instead of arguments['alternate-exchange']"
                raise ValueError(msg)
            if key not in EXCHANGE_ARGUMENTS and key.startswith("x-"):
                hint = did_you_mean(key, EXCHANGE_ARGUMENTS) or (
                    f"; known exchange arguments: {', '.join(sorted(EXCHANGE_ARGUMENTS))}"
                )
                msg = f"unknown exchange argument {key!r}{hint}"
                raise ValueError(msg)
        return value

    def declare_arguments(self) -> dict[str, Scalar]:
        args: dict[str, Scalar] = dict(self.arguments)
        if self.alternate_exchange is not None:
            args["alternate-exchange"] = self.alternate_exchange
        return args


class DeadLetter(_Model):
    """Where rejected, expired or over-limit messages go."""

    #: The dead-letter exchange; ``""`` (default exchange) needs a routing_key.
    exchange: Ref
    #: Replaces the message's routing key when set.
    routing_key: str | None = None
    #: ``at-least-once`` (quorum only) needs ``overflow: reject-publish``.
    strategy: Literal["at-most-once", "at-least-once"] | None = None

    @model_validator(mode="after")
    def _default_exchange_needs_key(self) -> DeadLetter:
        if self.exchange == "" and not self.routing_key:
            msg = "dead-lettering to the default exchange '' needs a routing_key (the target queue name)"
            raise ValueError(msg)
        return self


class Queue(_Model):
    """A queue with its dead-lettering, limits and type; quorum by default."""

    name: Name
    #: quorum unless there is a reason not to (priorities, transient data).
    type: Literal["quorum", "classic", "stream"] = "quorum"
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    dead_letter: DeadLetter | None = None
    overflow: Literal["drop-head", "reject-publish", "reject-publish-dlx"] | None = None
    #: Quorum only: dead-letter (or drop) after this many redeliveries.
    delivery_limit: Annotated[StrictInt, Field(ge=-1)] | None = None
    message_ttl: Duration | None = None
    #: Delete the queue after this long unused.
    expires: Duration | None = None
    max_length: PositiveInt | None = None
    max_length_bytes: Size | None = None
    #: Classic queues only (x-max-priority is refused on new quorum queues).
    max_priority: Annotated[StrictInt, Field(ge=1, le=255)] | None = None
    single_active_consumer: bool | None = None
    #: Streams only: drop segments older than this.
    max_age: Duration | None = None
    #: Escape hatch for other ``x-`` arguments, still checked against the known keys.
    arguments: Arguments = Field(default_factory=dict)

    @field_validator("arguments")
    @classmethod
    def _known_arguments(cls, value: Arguments, info: ValidationInfo) -> Arguments:
        qtype = info.data.get("type", "quorum")
        problems = []
        for key in value:
            if key in TYPED_QUEUE_ARGUMENTS:
                field = TYPED_QUEUE_ARGUMENTS[key]
                problems.append(
                    f"{key!r} duplicates a typed field; write '{field}' instead"
                )
            elif key not in ALL_QUEUE_ARGUMENTS:
                hint = did_you_mean(key, ALL_QUEUE_ARGUMENTS) or (
                    "; RabbitMQ would accept it silently and ignore it"
                )
                problems.append(f"unknown queue argument {key!r}{hint}")
            elif key not in QUEUE_ARGUMENTS.get(qtype, ALL_QUEUE_ARGUMENTS):
                problems.append(f"argument {key!r} is not valid for {qtype} queues")
        if problems:
            # One line per problem: the file loader reports each on its own.
            raise ValueError("\n".join(problems))
        return value

    @model_validator(mode="after")
    def _broker_rules(self) -> Queue:
        problems = self._type_problems()
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _type_problems(self) -> list[str]:  # noqa: C901 - one check per broker rule
        problems: list[str] = []
        strategy = self.dead_letter.strategy if self.dead_letter else None
        if self.expires is not None and not self.expires:
            problems.append("expires must be positive; RabbitMQ refuses x-expires 0")
        if self.type in ("quorum", "stream"):
            for flag, bad in (
                ("exclusive", self.exclusive),
                ("auto_delete", self.auto_delete),
                ("durable: false", not self.durable),
            ):
                if bad:
                    problems.append(f"{self.type} queues cannot be {flag}")
        if self.type == "quorum":
            if self.max_priority is not None:
                problems.append(
                    "quorum queues refuse max_priority (x-max-priority); use a classic "
                    "queue, or RabbitMQ 4.0+ where quorum queues prioritise without it"
                )
            if self.overflow == "reject-publish-dlx":
                problems.append(
                    "quorum queues ignore overflow 'reject-publish-dlx' (the broker falls "
                    "back to drop-head); use 'reject-publish'"
                )
            if strategy == "at-least-once" and self.overflow != "reject-publish":
                problems.append(
                    "dead_letter.strategy 'at-least-once' needs overflow: reject-publish "
                    "(otherwise RabbitMQ silently falls back to at-most-once)"
                )
            if self.max_age is not None:
                problems.append("max_age applies to streams only")
        else:
            if self.delivery_limit is not None:
                problems.append("delivery_limit applies to quorum queues only")
            if strategy is not None:
                problems.append(
                    "dead_letter.strategy applies to quorum queues only; remove it"
                )
        if self.type == "classic" and self.max_age is not None:
            problems.append("max_age applies to streams only")
        if self.type == "stream":
            for name in (
                "dead_letter",
                "overflow",
                "message_ttl",
                "expires",
                "max_length",
                "max_priority",
                "single_active_consumer",
            ):
                if getattr(self, name) is not None:
                    problems.append(
                        f"streams do not support {name}; use max_age / max_length_bytes for retention"
                    )
        return problems

    def declare_arguments(self) -> dict[str, Scalar]:
        """Return the ``x-*`` arguments RabbitMQ expects (durations in integer milliseconds)."""
        args: dict[str, Scalar] = {"x-queue-type": self.type}
        if self.dead_letter is not None:
            args["x-dead-letter-exchange"] = self.dead_letter.exchange
            if self.dead_letter.routing_key is not None:
                args["x-dead-letter-routing-key"] = self.dead_letter.routing_key
            if self.dead_letter.strategy is not None:
                args["x-dead-letter-strategy"] = self.dead_letter.strategy
        scalars: dict[str, Scalar | None] = {
            "x-overflow": self.overflow,
            "x-delivery-limit": self.delivery_limit,
            "x-max-length": self.max_length,
            "x-max-length-bytes": self.max_length_bytes,
            "x-max-priority": self.max_priority,
            "x-single-active-consumer": self.single_active_consumer,
        }
        args.update({k: v for k, v in scalars.items() if v is not None})
        if self.message_ttl is not None:
            args["x-message-ttl"] = milliseconds(self.message_ttl)
        if self.expires is not None:
            args["x-expires"] = milliseconds(self.expires)
        if self.max_age is not None:
            # RabbitMQ's own format (Y, M, D, h, m, s); seconds are always exact.
            args["x-max-age"] = f"{int(self.max_age.total_seconds())}s"
        args.update(self.arguments)
        return args


class Binding(_Model):
    """Route messages from an exchange to a queue or another exchange."""

    source: Ref
    destination: Ref
    destination_type: Literal["queue", "exchange"] = "queue"
    routing_key: str = ""
    arguments: Arguments = Field(default_factory=dict)

    @model_validator(mode="after")
    def _not_default_exchange(self) -> Binding:
        if self.source == "":
            msg = "the default exchange '' cannot be bound; every queue is reachable through it by name"
            raise ValueError(msg)
        if not self.destination:
            msg = "destination must name a queue or an exchange"
            raise ValueError(msg)
        return self

    @property
    def key(self) -> tuple[str, str, str, str, tuple[tuple[str, str], ...]]:
        """Identity on the broker: a binding has no name, only these parts."""
        args = tuple(sorted((k, repr(v)) for k, v in self.arguments.items()))
        return (
            self.source,
            self.destination_type,
            self.destination,
            self.routing_key,
            args,
        )

    def describe(self) -> str:
        arrow = "=>" if self.destination_type == "exchange" else "->"
        return f"{self.source} {arrow} {self.destination} [{self.routing_key}]"


class Policy(_Model):
    """A policy: settings RabbitMQ lets you change in place, by name pattern."""

    name: Annotated[str, Field(min_length=1, max_length=255)]
    pattern: str
    apply_to: Literal[
        "all", "queues", "exchanges", "classic_queues", "quorum_queues", "streams"
    ] = "all"
    priority: StrictInt = 0
    #: Policy keys (message-ttl, max-length ...); durations and sizes may use units.
    definition: dict[str, Any] = Field(min_length=1)

    @field_validator("pattern")
    @classmethod
    def _valid_regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            msg = f"pattern {value!r} is not a valid regular expression ({exc})"
            raise ValueError(msg) from None
        return value

    @field_validator("definition")
    @classmethod
    def _known_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key not in POLICY_KEYS and (hint := did_you_mean(key, POLICY_KEYS)):
                msg = f"unknown policy key {key!r}{hint}"
                raise ValueError(msg)
            if key in POLICY_MS:
                item = milliseconds(parse_duration(item))
            elif key in POLICY_BYTES:
                item = parse_size(item)
            out[key] = item
        return out


def applies_to(apply_to: str, kind: str, qtype: str) -> bool:
    """Whether a policy's ``apply-to`` covers a *kind* (queue/exchange) of *qtype*."""
    if apply_to == "all":
        return True
    if kind == "exchange":
        return apply_to == "exchanges"
    return apply_to == "queues" or apply_to == {
        "classic": "classic_queues",
        "quorum": "quorum_queues",
        "stream": "streams",
    }.get(qtype)


class Topology(_Model):
    """Everything declared in one vhost."""

    vhost: Annotated[str, Field(min_length=1)] = "/"
    exchanges: list[Exchange] = Field(default_factory=list)
    queues: list[Queue] = Field(default_factory=list)
    bindings: list[Binding] = Field(default_factory=list)
    policies: list[Policy] = Field(default_factory=list)

    def queue(self, name: str) -> Queue | None:
        return next((q for q in self.queues if q.name == name), None)

    def exchange(self, name: str) -> Exchange | None:
        return next((e for e in self.exchanges if e.name == name), None)

    def problems(self) -> list[tuple[Loc, str]]:
        """
        Cross-object problems: duplicates and references to objects declared nowhere.

        Checked on the merged topology (all files of a vhost), so a binding may
        reference an exchange declared in another file.
        """
        exchanges = {e.name for e in self.exchanges}
        queues = {q.name for q in self.queues}
        out = _duplicates(self)
        refs: list[tuple[Loc, str, str]] = []
        for i, b in enumerate(self.bindings):
            refs.append((("bindings", i, "source"), "exchange", b.source))
            refs.append(
                (("bindings", i, "destination"), b.destination_type, b.destination)
            )
        for i, q in enumerate(self.queues):
            if q.dead_letter:
                loc: Loc = ("queues", i, "dead_letter", "exchange")
                refs.append((loc, "exchange", q.dead_letter.exchange))
        for i, e in enumerate(self.exchanges):
            if e.alternate_exchange is not None:
                loc = ("exchanges", i, "alternate_exchange")
                refs.append((loc, "exchange", e.alternate_exchange))
        for loc, kind, name in refs:
            known = queues if kind == "queue" else exchanges
            if name not in known and not (
                kind == "exchange" and is_builtin_exchange(name)
            ):
                out.append((loc, _nowhere(kind, name, known)))
        return out


Loc = tuple[str | int, ...]


def _duplicates(topology: Topology) -> list[tuple[Loc, str]]:
    out: list[tuple[Loc, str]] = []
    for kind in ("exchanges", "queues", "policies"):
        seen: set[str] = set()
        for i, item in enumerate(getattr(topology, kind)):
            if item.name in seen:
                out.append(((kind, i, "name"), f"{item.name!r} is declared twice"))
            seen.add(item.name)
    keys: set[object] = set()
    for i, b in enumerate(topology.bindings):
        if b.key in keys:
            out.append((("bindings", i), f"binding {b.describe()} is declared twice"))
        keys.add(b.key)
    return out


def is_builtin_exchange(name: str) -> bool:
    return name == "" or name.startswith("amq.")


def _nowhere(kind: str, name: str, declared: set[str]) -> str:
    hint = did_you_mean(name, declared) or f"; declare it under {kind}s:"
    return f"{kind} {name!r} is declared nowhere{hint}"


def merge(topologies: list[Topology]) -> Topology:
    """Concatenate topologies of one vhost (duplicates are reported by `Topology.problems`)."""
    if not topologies:
        return Topology()
    vhosts = {t.vhost for t in topologies}
    if len(vhosts) > 1:
        msg = f"cannot merge topologies of different vhosts {sorted(vhosts)!r}"
        raise ValueError(msg)
    return Topology.model_construct(
        vhost=topologies[0].vhost,
        exchanges=[e for t in topologies for e in t.exchanges],
        queues=[q for t in topologies for q in t.queues],
        bindings=[b for t in topologies for b in t.bindings],
        policies=[p for t in topologies for p in t.policies],
    )
