"""pyneg's kernels registered as PyTorch operators (namespace ``torch.ops.pyneg``).

Each area module defines its ops with :func:`torch.library.custom_op`, a fake
(meta) implementation so shapes propagate under ``FakeTensorMode`` and
``torch.compile``, autograd formulas for the differentiable ones, and one
implementation per device. Importing :mod:`pyneg` imports this package, which
registers every op.
"""

from pyneg._ops import hsoftmax  # noqa: F401  (pyneg::hs_*)
