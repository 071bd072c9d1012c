"""Multi-task instruction pre-training (MIP) data: registry, readers, caps, plan, MIP token shards.

`glm-corpus mip` (mip/commands.py) runs `mip.stage.run_mip`; docs/MIP.md describes the registry, the
P3/DeepStruct inputs, the cap rule and the `mip-plan.json` format.
"""
