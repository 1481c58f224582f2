"""Renamed keyword arguments: the old name keeps working, with a DeprecationWarning.

pyneg's public names are a contract (API.md); when an argument is renamed to
match the rest of the API (docs/architecture.md, "Names"), callers that pass
the old keyword keep working and are told the new name.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def renamed_keyword(old: str, new: str) -> Callable[[F], F]:
    """Accept ``old=`` as a deprecated spelling of the keyword argument ``new=``.

    Passing both is a TypeError naming them; the warning points at the caller.
    """

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{fn.__qualname__}() got both {new}= and {old}= (its deprecated name)")
                warnings.warn(
                    f"{fn.__qualname__}(): {old}= is deprecated, use {new}=", DeprecationWarning, stacklevel=2
                )
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return call  # type: ignore[return-value]

    return wrap
