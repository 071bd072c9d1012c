"""Synthetic token shards for tests and benchmarks: documents of random text ids ending in <eod>, and MIP
examples (prompt + target with `prompt_len`, `dataset`, `template`), written with `TokenShardWriter`.

Document lengths are 1 + geometric(mean) so every size appears, from 2-token documents to ones longer
than a row; ids are drawn from the text range (no special tokens inside a document).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.special_tokens import EOD, IMAGE_TOKENS
from shards.token_shards import TokenShardWriter

TEXT_LOW = IMAGE_TOKENS + 100
TEXT_HIGH = 149_000


def write_text_shards(
    directory: str | Path, sources: dict[str, tuple[int, float]], seed: int = 0, docs_per_shard: int = 0
) -> dict[str, int]:
    """DIR/<source>/<source>-NNNNN shards: {name: (documents, mean length)}; returns tokens per source."""
    generator = np.random.default_rng(seed)
    tokens: dict[str, int] = {}
    for name, (documents, mean) in sources.items():
        lengths = generator.geometric(1.0 / max(mean - 1, 1.0), size=documents) + 1
        shard, writer, total = 0, None, 0
        for i, length in enumerate(lengths.tolist()):
            if writer is None or (docs_per_shard and i % docs_per_shard == 0 and len(writer)):
                if writer is not None:
                    writer.close()
                writer = TokenShardWriter(Path(directory) / name / f"{name}-{shard:05d}")
                shard += 1
            ids = generator.integers(TEXT_LOW, TEXT_HIGH, size=length, dtype=np.int32)
            ids[-1] = EOD
            writer.add(ids, doc_id=f"{name}:synthetic:{i}", source=name, input_file="synthetic", offset=i)
            total += length
        if writer is not None:
            writer.close()
        tokens[name] = total
    return tokens


MIP_EXTRA = (
    pa.field("prompt_len", pa.int32()),
    pa.field("dataset", pa.string()),
    pa.field("template", pa.string()),
)


def write_mip_shards(
    directory: str | Path,
    datasets: dict[str, int],
    seed: int = 0,
    mean_prompt: float = 120,
    mean_target: float = 20,
    long_examples: int = 0,
) -> int:
    """DIR/shards/<dataset>-00000 MIP shards ({dataset: examples}), the layout `glm-corpus mip` writes;
    `long_examples` extra examples per dataset exceed a 2048-token row. Returns the examples written."""
    generator = np.random.default_rng(seed)
    written = 0
    for name, count in datasets.items():
        with TokenShardWriter(Path(directory) / "shards" / f"{name}-00000", extra_schema=MIP_EXTRA) as writer:
            for i in range(count + long_examples):
                if i >= count:
                    prompt, target = int(generator.integers(1500, 3000)), int(generator.integers(10, 1500))
                else:
                    prompt = int(generator.geometric(1.0 / mean_prompt))
                    target = int(generator.geometric(1.0 / mean_target))
                ids = generator.integers(TEXT_LOW, TEXT_HIGH, size=prompt + target, dtype=np.int32)
                writer.add(
                    ids,
                    doc_id=f"{name}:synthetic:{i}",
                    source=name,
                    input_file="synthetic",
                    offset=i,
                    prompt_len=prompt,
                    dataset=name,
                    template=f"{name}-template-{i % 3}",
                )
                written += 1
    return written
