"""Multi-task instruction pre-training (MIP) data: registry, readers, caps, plan, MIP token shards.

`glm-corpus mip` (mip/commands.py) runs `mip.stage.run_mip`; docs/MIP.md describes the registry, the
P3/DeepStruct inputs, the cap rule and the `mip-plan.json` format.
"""

import common  # noqa: F401 - first: it selects pyarrow's system pool, before pyarrow loads (common/memory.py)
