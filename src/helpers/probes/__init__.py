"""Operator probe tools: the catalog of probes (catalog), recording and replaying a model's
own aten calls (trace), the isolated worker that survives crashes and hangs (isolate), one
probe's three runs (execute), the accuracy rules (verdict), and the tables and figures
(report). Stage 3 (helpers.stages.operator_probes) puts them together.
"""
