"""pyneg's kernels registered as PyTorch operators (namespace ``torch.ops.pyneg``).

Each area module defines its ops with :func:`torch.library.custom_op`, a fake
(meta) implementation so shapes propagate under ``FakeTensorMode`` and
``torch.compile``, autograd formulas for the differentiable ones, and one
implementation per device. Importing :mod:`pyneg` imports this package, which
registers every op.
"""

from pyneg._ops import alias  # noqa: F401, I001  (pyneg::alias_*)
from pyneg._ops import hsoftmax  # noqa: F401  (pyneg::hs_*)
from pyneg._ops import memory  # noqa: F401  (pyneg::frequency_estimate, pyneg::bank_hit_mask)
from pyneg._ops import softmax  # noqa: F401  (pyneg::softmax_*: the softmax losses' core)
from pyneg._ops import sparse  # noqa: F401  (pyneg::sparse_lookup: sparse catalogues' id map)
from pyneg._ops import graph  # noqa: F401  (pyneg::graph_corrupt, pyneg::graph_filtered_ranks)
