"""Error messages in the command line's terms: the library names its Python keywords in the remedies
it suggests ("pass nan_policy='mask'"); on the command line they become the flags that set them
("pass --nan-policy mask")."""

from __future__ import annotations

import re
from functools import lru_cache

from .options import SEGMENT_OPTIONS, TRAIN_OPTIONS

__all__ = ["in_cli_terms"]

# keywords without a flag of the same name
_EXTRA_FLAGS = {"n_components": "-k", "sample_weight": "--weights"}

_VERBS = r"(?:lower|raise|increase|decrease|use|pass|set|give|a smaller|a larger)"


@lru_cache(maxsize=1)
def _flags() -> dict[str, str]:
    """Python keyword -> command-line flag (segment's options first, then train's)."""
    out: dict[str, str] = {}
    for opt in SEGMENT_OPTIONS:
        out.setdefault(opt.keyword, opt.flag)
    for opt in TRAIN_OPTIONS:
        if "." not in opt.key:
            out.setdefault(opt.key, opt.flag)
    out.update(_EXTRA_FLAGS)
    return out


def in_cli_terms(message: str) -> str:
    """``message`` with the keywords it names replaced by their flags: ``name='value'`` becomes
    ``--flag value`` (``check_memory=False``: ``--no-memory-check``), a keyword with an underscore
    becomes its flag anywhere outside a path, and a plain one (``lr``) after a verb of remedy."""
    text = re.sub(r"(?<![\w/.-])check_memory=False\b", "--no-memory-check", message)
    for keyword, flag in sorted(_flags().items(), key=lambda kv: -len(kv[0])):
        word = re.escape(keyword)
        text = re.sub(rf"(?<![\w/.-]){word}=(['\"]?)([^'\"\s,;)]+)\1", lambda m: f"{flag} {m.group(2)}", text)
        if "_" in keyword:  # not where it names a dimension of a shape, "(n_components, n_channels)"
            text = re.sub(rf"(?<![\w/.-]){word}(?![\w/-]|\.\w|,\s*n_)", flag, text)
        else:
            text = re.sub(rf"\b({_VERBS})\s+{word}\b(?![\w/-])", lambda m: f"{m.group(1)} {flag}", text)
    return text
