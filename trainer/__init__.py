"""The reference GLM trainer: config, model, Megatron-style tensor/data parallelism, sampler, checkpoints.

Modules are imported on use: `trainer.data` (the sampler's `rows_for_step`) is needed by the audit stage and
must stay cheap to import; the model and the loop pull in torch.
"""

import common  # noqa: F401 - first: it selects pyarrow's system pool, before pyarrow loads (common/memory.py)
