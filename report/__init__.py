"""The run report: one self-contained HTML page with plots of every stage's outputs."""

import common  # noqa: F401 - first: it selects pyarrow's system pool, before pyarrow loads (common/memory.py)
