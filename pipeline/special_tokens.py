"""The GLM-130B icetk id layout (DESIGN §2), as constants every stage can use without loading a model.

icetk puts 20,000 image tokens first, so a text id is the SentencePiece id of `ice_text.model` + 20,000.
GLM-130B appends its special tokens after the text vocabulary at fixed ids starting at 150,000, and pads
the embedding to 150,528 rows.
"""

from __future__ import annotations

IMAGE_TOKENS = 20_000
"""Offset added to every SentencePiece id (icetk's image tokens come first)."""

VOCAB_SIZE = 150_528
"""Rows of GLM-130B's embedding table."""

MASK = 150_000
GMASK = 150_001
SMASK = 150_002
EOD = 150_003
SOP = 150_004
EOP = 150_005
ENC = 150_006
DBLOCK = 150_007
TAB = 150_008
BLANK_FIRST = 150_009
"""`<blank_k>` (a run of k spaces, k = 2..80) is BLANK_FIRST + k - 2."""
MIN_BLANK = 2
MAX_BLANK = 80
EOS = 20_002
"""`</s>`: SentencePiece id 2 + IMAGE_TOKENS."""
PAD = 0

NEWLINE_PIECE = "<n>"


def blank_id(k: int) -> int:
    """Id of `<blank_k>`, a run of k spaces (2 <= k <= 80)."""
    if not MIN_BLANK <= k <= MAX_BLANK:
        raise ValueError(f"<blank_k> exists for k in {MIN_BLANK}..{MAX_BLANK}, not {k}")
    return BLANK_FIRST + k - MIN_BLANK


SPECIAL_IDS: dict[str, int] = {
    "[MASK]": MASK,
    "[gMASK]": GMASK,
    "[sMASK]": SMASK,
    "<eod>": EOD,
    "[sop]": SOP,
    "[eop]": EOP,
    "ENC": ENC,
    "dBLOCK": DBLOCK,
    "<t>": TAB,
    **{f"<blank_{k}>": blank_id(k) for k in range(MIN_BLANK, MAX_BLANK + 1)},
    "</s>": EOS,
    "<pad>": PAD,
}
"""Name -> id for every special token of DESIGN §2."""

LAST_SPECIAL = blank_id(MAX_BLANK)
