"""The memory bank and the frequency estimator, under their historical module name.

API.md names ``pyneg.memory`` as the home of these classes, so
``from pyneg.memory import MemoryBank`` keeps working; they are defined in
:mod:`pyneg.bank` (:class:`~pyneg.bank.MemoryBank`, :class:`~pyneg.bank.BankNegatives`)
and :mod:`pyneg.frequency` (:class:`~pyneg.frequency.FrequencyEstimator`), one
concept per module.
"""

from pyneg.bank import BankNegatives, MemoryBank
from pyneg.frequency import FrequencyEstimator

__all__ = ["FrequencyEstimator", "MemoryBank", "BankNegatives"]
