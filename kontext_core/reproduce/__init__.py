"""Rebuild a registered adapter from its recorded lineage and say whether it is the same.

Answers: identical, different (naming the first recorded input that no longer matches) or cannot
reproduce (with the reason). `kontext reproduce` and the `kontext-reproduce` flow call `reproduce`.
"""

from kontext_core.reproduce.run import reproduce
from kontext_core.reproduce.verdict import CANNOT, DIFFERENT, IDENTICAL, Verdict

__all__ = ["CANNOT", "DIFFERENT", "IDENTICAL", "Verdict", "reproduce"]
