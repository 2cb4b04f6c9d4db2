"""quick_init: the same objects as the dataclass's own __init__, still frozen; odd cases refused."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
import typing
from dataclasses import dataclass, field
from typing import Any

import pytest

from routing_sidecar import domain
from routing_sidecar.quick_init import quick_init


def _declare() -> type:
    """A new class each call: one is left as dataclasses made it, one gets quick_init."""

    @dataclass(frozen=True, slots=True)
    class Item:
        name: str
        tier: int
        score: float = 0.5
        tags: tuple[str, ...] = ()
        labels: dict[str, str] = field(default_factory=dict)
        note: str | None = field(default=None, kw_only=True)

    return Item


Plain: Any = _declare()
Quick: Any = quick_init(_declare())


def _fields(obj: object) -> dict[str, object]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}  # type: ignore[arg-type]


@pytest.mark.parametrize("args, kwargs", [
    (("a", 1), {}),
    (("a", 1, 0.9, ("x",)), {"labels": {"k": "v"}, "note": "n"}),
    ((), {"name": "b", "tier": 3, "note": None}),
])
def test_the_objects_are_those_the_dataclass_makes(args: tuple[object, ...],
                                                   kwargs: dict[str, object]) -> None:
    quick, plain = Quick(*args, **kwargs), Plain(*args, **kwargs)
    assert type(quick) is Quick
    assert _fields(quick) == _fields(plain)
    assert quick == Quick(*args, **kwargs)
    assert repr(quick) == repr(plain)


def test_the_signature_is_the_dataclass_one() -> None:
    quick = str(inspect.signature(Quick.__init__))
    assert quick == str(inspect.signature(Plain.__init__))
    assert "labels: 'dict[str, str]' = <factory>" in quick


def test_objects_stay_frozen_and_hashable() -> None:
    q = domain.Alternative("m", "p", 1, 0.5, 100, domain.Rejection.OUTSCORED, "why", 0.7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.model = "other"  # type: ignore[misc]
    assert hash(q) == hash(dataclasses.replace(q))
    assert dataclasses.replace(q, tier=2).tier == 2
    assert copy.deepcopy(q) == q
    assert pickle.loads(pickle.dumps(q)) == q


def test_a_default_factory_makes_a_new_value_each_time() -> None:
    a, b = Quick("a", 1), Quick("b", 2)
    assert a.labels == {} and a.labels is not b.labels


def test_missing_and_unknown_arguments_fail_as_before() -> None:
    with pytest.raises(TypeError, match="tier"):
        Quick("a")
    with pytest.raises(TypeError, match="colour"):
        Quick("a", 1, colour="red")
    with pytest.raises(TypeError):
        Quick("a", 1, 0.5, (), {}, "note")


def test_a_subclass_object_takes_the_dataclass_init() -> None:
    class Sub(Quick):  # type: ignore[misc]
        __slots__ = ()

    s = Sub("a", 1, note="n")
    assert type(s) is Sub
    assert _fields(s) == _fields(Quick("a", 1, note="n"))


def test_the_hot_domain_types_use_it() -> None:
    for cls in (domain.Task, domain.Alternative, domain.Decision, domain.Selection):
        assert "_Closed" in cls.__init__.__code__.co_freevars
        assert cls.__init__.__globals__ is vars(domain)  # its annotations resolve there
    assert typing.get_type_hints(domain.Task.__init__)["requires"] is domain.Requirements


def _refused(cls: type, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        quick_init(cls)


def test_cases_it_does_not_take_are_refused_when_decorated() -> None:
    @dataclass(slots=True)
    class Mutable:
        x: int

    @dataclass(frozen=True)
    class NoSlots:
        x: int

    @dataclass(frozen=True, slots=True)
    class PostInit:
        x: int

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True, slots=True)
    class Hidden:
        x: int
        y: int = field(init=False, default=0)

    @dataclass(frozen=True, slots=True)
    class Derived(Plain):  # type: ignore[misc]
        extra: int = 0

    @dataclass(frozen=True, slots=True)
    class Clash:
        _set: int

    _refused(Clash, "fields named")
    _refused(Mutable, "not a frozen, slotted dataclass")
    _refused(NoSlots, "not a frozen, slotted dataclass")
    _refused(PostInit, "__post_init__")
    _refused(Hidden, "outside its __init__")
    _refused(Derived, "derives from another class")
