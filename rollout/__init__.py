"""The sluice service: Kubernetes client edge, watches and work queue, reconciler, traffic routers and the CLI.

Decisions are made by the pure planners in `strategies/`; this package reads the cluster, applies what they decide
and reports it (status, Events, logs).
"""
