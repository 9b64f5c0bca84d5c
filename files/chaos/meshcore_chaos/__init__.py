"""mesh-core chaos: the node side (``meshcore_chaos.node``), installed by the chaos_reaper role.

Standard library only: it runs on a node whose agent may be the thing under test.
"""
