import common  # noqa: F401 - first: it selects pyarrow's system pool, before pyarrow loads (common/memory.py)
