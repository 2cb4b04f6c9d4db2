"""A faster __init__ for the frozen, slotted dataclasses made on every Route.

A frozen dataclass's generated __init__ stores each field through `object.__setattr__`, a
call per field (the class's own __setattr__ refuses). For the thirty or so such objects a
Route builds (its Task, Alternatives, budget lines, ledger entries, Decision, audit row),
those calls are about three times the cost of the objects themselves. `quick_init` gives a
class an __init__ that lends the new object for the duration of the call a twin class of the
same slots (no __setattr__ of its own, so each field is a plain store), then gives it back
its class: one `object.__setattr__` for the whole object instead of one per field. Nothing
else changes: equality, hashing, repr, `dataclasses.replace`, and the object stays frozen;
a subclass's object takes the generated __init__ it had.

Only plain cases are taken (every field in __init__, no __post_init__, no InitVar); any other
class is refused when it is decorated, so a change to one cannot go unnoticed.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, TypeVar

T = TypeVar("T")


class _Factory:
    """The default shown for a field made by its default_factory, as dataclasses shows it."""

    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _Factory()


def quick_init(cls: type[T]) -> type[T]:
    """Give a frozen, slotted dataclass the faster __init__ (apply above @dataclass)."""
    fields = _plain_fields(cls)
    names = tuple(f.name for f in fields)
    twin: type = type(f"_{cls.__name__}Open", (), {"__slots__": names})
    _check_compatible(cls, twin)
    original = cls.__init__
    namespace: dict[str, Any] = {
        "_set": object.__setattr__, "_Closed": cls, "_Open": twin, "_original": original,
        "_FACTORY": _FACTORY,
    }
    clash = {"self", *namespace} & set(names)
    if clash:
        raise TypeError(f"quick_init: {cls.__qualname__} has fields named {sorted(clash)}")
    plain: list[str] = []
    keyword: list[str] = []
    call: list[str] = []
    body: list[str] = []
    for f in fields:
        param = f.name
        if f.default is not dataclasses.MISSING:
            namespace[f"_d_{f.name}"] = f.default
            param = f"{f.name}=_d_{f.name}"
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_f_{f.name}"] = f.default_factory
            param = f"{f.name}=_FACTORY"
            body.append(f"    if {f.name} is _FACTORY:\n        {f.name} = _f_{f.name}()")
        (keyword if f.kw_only else plain).append(param)
        call.append(f"{f.name}={f.name}")
    signature = ", ".join(["self", *plain, *(["*", *keyword] if keyword else [])])
    stores = "".join(f"    self.{n} = {n}\n" for n in names)
    # Made by a factory, as dataclasses makes its methods: the names above are the factory's
    # arguments (closure cells), and the function's globals are the class's module, so its
    # string annotations resolve there (typing.get_type_hints) as the generated __init__'s do.
    inner = (
        f"def __init__({signature}):\n"
        + "".join(line + "\n" for line in body)
        + "    if type(self) is not _Closed:\n"
        f"        return _original(self, {', '.join(call)})\n"
        "    _set(self, '__class__', _Open)\n"
        + stores
        + "    self.__class__ = _Closed\n"
    )
    source = (f"def __make__({', '.join(namespace)}):\n"
              + "".join(f"    {line}\n" for line in inner.splitlines())
              + "    return __init__\n")
    made: dict[str, Any] = {}
    module = sys.modules[cls.__module__].__dict__
    exec(source, module, made)  # noqa: S102 - text built above from the class's own field names
    init = made["__make__"](**namespace)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__annotations__ = dict(getattr(original, "__annotations__", {}))
    init.__doc__ = original.__doc__
    setattr(cls, "__init__", init)  # noqa: B010 - a method put on the class after it was made
    return cls


def _plain_fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    """The class's fields, when it is a case `quick_init` takes; else TypeError."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"quick_init: {cls.__qualname__} is not a frozen, slotted dataclass")
    if cls.__bases__ != (object,):
        raise TypeError(f"quick_init: {cls.__qualname__} derives from another class")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"quick_init: {cls.__qualname__} has a __post_init__")
    fields = dataclasses.fields(cls)  # InitVar and ClassVar pseudo-fields are not in here
    all_fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
    if len(all_fields) != len(fields) or any(not f.init for f in fields):
        raise TypeError(f"quick_init: {cls.__qualname__} has fields outside its __init__")
    if tuple(cls.__dict__.get("__slots__", ())) != tuple(f.name for f in fields):
        raise TypeError(f"quick_init: {cls.__qualname__} has slots beyond its fields")
    return fields


def _check_compatible(cls: type, twin: type) -> None:
    """Both ways of the class swap must be allowed (same bases, same slots, same layout)."""
    probe: Any = object.__new__(twin)
    try:
        probe.__class__ = cls
        object.__setattr__(probe, "__class__", twin)
    except TypeError as exc:
        raise TypeError(f"quick_init: {cls.__qualname__} cannot lend its objects a twin: "
                        f"{exc}") from None
