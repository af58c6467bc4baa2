"""Pure planners: decide what a Rollout needs next from its spec, status and an observed-state snapshot.

Nothing here does I/O (an import-linter contract in pyproject.toml enforces it); `rollout/` reads the cluster,
calls `canary.plan` or `bluegreen.plan` and applies the returned `Decision`. `common.py` and `runs.py`
(AnalysisRuns) hold what both planners share; `operations.py` decides what an operator operation patches.
"""
