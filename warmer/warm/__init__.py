"""Warming: from wanted images to verified bytes in the mirrors, in the order of the flow.

Public surface, by module:

- ``resolve``: ``Want``, ``wants_from_args``, ``wants_from_ranking``, ``resolve``,
  ``upstream_client``, ``mirror_client``: what is wanted, resolved through the top tier;
- ``plan``: ``plan``, ``merge``, ``Plan``, ``PlanItem``, ``WantedImage``, ``MirrorNode``,
  ``Budget``, ``Held``: the pure planner (no network, clock or database);
- ``topology``: ``Topology``, ``PlanError``: the mirror chains as the planner sees them;
- ``startorder``, ``slots``, ``pacing``, ``reserve``, ``policy``: the executor's parts
  (start keys, prioritised slots, the link's token bucket, the upstream rate-limit
  reserve, and the pure rules for what a request costs and when to retry);
- ``execute``: ``Executor``: carries a recorded run out; ``stats``: ``RunStats``, what it did;
- ``prepared``: ``Prepared``, ``prepare``, ``start_run``: a plan recorded as a run;
- ``run``: ``warm`` (the one entry point of a warm run, used by ``warmer run``, ``warmer
  refresh`` and the service), ``plan_region`` (``warmer plan``), ``WarmOutcome``.
"""

__all__ = [
    "execute",
    "pacing",
    "plan",
    "policy",
    "prepared",
    "reserve",
    "resolve",
    "run",
    "slots",
    "startorder",
    "stats",
    "topology",
]
