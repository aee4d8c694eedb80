"""scikit-learn's estimator protocol without depending on scikit-learn.

:class:`ParamsMixin` gives an estimator whose ``__init__`` stores its keyword arguments
unchanged the methods :func:`sklearn.base.clone`, grid searches and
:mod:`sklearn.utils.estimator_checks` rely on: ``get_params`` / ``set_params`` (with ``deep``
and nested ``component__param`` keys), ``_get_param_names``, a ``__repr__`` of the
non-default settings, ``__sklearn_is_fitted__`` and ``__sklearn_tags__``. scikit-learn is
imported only inside ``__sklearn_tags__``, which only scikit-learn calls.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections import defaultdict
from typing import Any

import numpy as np
import torch

__all__ = ["ParamsMixin", "NotFittedError", "not_fitted"]


class NotFittedError(ValueError, AttributeError):
    """A method that needs a fitted estimator was called before ``fit``.

    Subclasses both ``ValueError`` and ``AttributeError``, like scikit-learn's ``NotFittedError``.
    """


@functools.cache
def _with_sklearn_base(sk_error: type) -> type:
    return type("NotFittedError", (NotFittedError, sk_error), {"__module__": __name__})


def not_fitted(message: str) -> NotFittedError:
    """The error to raise before ``fit``: a :class:`NotFittedError`, which is also scikit-learn's
    ``NotFittedError`` when scikit-learn is already imported (never imported here)."""
    sk = sys.modules.get("sklearn.exceptions")
    cls = _with_sklearn_base(sk.NotFittedError) if sk is not None else NotFittedError
    return cls(message)


def _same(a: Any, b: Any) -> bool:
    """Whether two parameter values are equal (arrays and tensors by value)."""
    if a is b:
        return True
    if isinstance(a, (np.ndarray, torch.Tensor)) or isinstance(b, (np.ndarray, torch.Tensor)):
        return False  # a given array never equals a default
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


class ParamsMixin:
    """``get_params`` / ``set_params`` / ``__repr__`` / tags over the keyword-only ``__init__``."""

    #: scikit-learn's ``estimator_type`` tag ("density_estimator", "clusterer", ... or None)
    _estimator_type_tag: str | None = None
    #: scikit-learn's input tags that differ from its defaults
    _input_tags: dict[str, bool] = {}

    @classmethod
    def _init_parameters(cls) -> list[inspect.Parameter]:
        init = cls.__init__
        if init is object.__init__:
            return []
        params = [p for p in inspect.signature(init).parameters.values() if p.name != "self"]
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise RuntimeError(f"{cls.__name__}.__init__ must list its parameters explicitly (no *args/**kwargs)")
        return params

    @classmethod
    def _get_param_names(cls) -> list[str]:
        """The ``__init__`` parameter names, sorted (scikit-learn's order)."""
        return sorted(p.name for p in cls._init_parameters())

    @classmethod
    def _param_names(cls) -> list[str]:
        """The ``__init__`` parameter names in signature order (for messages listing the options)."""
        return [p.name for p in cls._init_parameters()]

    @classmethod
    def _param_defaults(cls) -> dict[str, Any]:
        return {p.name: p.default for p in cls._init_parameters()}

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The settings ``{name: value}`` in ``__init__``'s order; with ``deep``, also ``name__sub`` of
        nested estimators."""
        out: dict[str, Any] = {}
        for key in self._param_names():
            value = getattr(self, key)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{key}__{k}", v) for k, v in value.get_params().items())
            out[key] = value
        return out

    def set_params(self, **params: Any):
        """Set settings by name (``component__param`` reaches a nested estimator); returns ``self``."""
        if not params:
            return self
        valid = self.get_params(deep=True)
        nested: dict[str, dict[str, Any]] = defaultdict(dict)
        for key, value in params.items():
            key, delim, sub_key = key.partition("__")
            if key not in valid:
                raise ValueError(
                    f"unknown parameter {key!r} for {type(self).__name__}; valid: {self._get_param_names()}"
                )
            if delim:
                nested[key][sub_key] = value
            else:
                setattr(self, key, value)
                valid[key] = value
        for key, sub in nested.items():
            if not hasattr(valid[key], "set_params"):
                raise ValueError(f"parameter {key!r} of {type(self).__name__} has no nested parameters")
            valid[key].set_params(**sub)
        return self

    def __repr__(self) -> str:
        defaults = self._param_defaults()
        changed = []
        for name in self._param_names():
            value = getattr(self, name, None)
            if _same(value, defaults.get(name)):
                continue
            if isinstance(value, (np.ndarray, torch.Tensor)):
                changed.append(f"{name}=<array {tuple(value.shape)}>")
            else:
                changed.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    # ------------------------------------------------------------------ scikit-learn hooks
    def _is_fitted(self) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    def __sklearn_is_fitted__(self) -> bool:
        return self._is_fitted()

    def __sklearn_tags__(self):
        """scikit-learn's :class:`~sklearn.utils.Tags` (imports scikit-learn; only it calls this)."""
        from sklearn.utils import InputTags, Tags, TargetTags

        return Tags(estimator_type=self._estimator_type_tag, target_tags=TargetTags(required=False),
                    input_tags=InputTags(**self._input_tags))
