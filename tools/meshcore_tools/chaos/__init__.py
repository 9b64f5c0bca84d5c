"""Chaos experiments, controller side: fault classes, experiments, runner, measurement, report.

The node side (journal, owned operations, reaper) is :mod:`meshcore_chaos.node`
(files/chaos), installed on the nodes by the chaos_reaper role.
"""
