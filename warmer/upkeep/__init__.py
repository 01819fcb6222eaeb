"""Keeping warm content true: tags re-resolved, drift recorded, content verified, pins
checked, metadata caches invalidated.

Public surface, by module:

- ``freshness``: pure judgements over observations (``assess``, ``needs_warm``,
  ``pin_advice``, ``expiring``);
- ``refresh``: ``refresh`` (``warmer refresh``): HEAD every tracked tag, warm what moved;
- ``verify``: ``verify`` (``warmer verify``): re-read and hash a sample of what is held;
- ``pins``: ``pins`` (``warmer pins``): stale ``@sha256:`` pins in files;
- ``invalidate``: ``run_hook``: a mirror's metadata-cache invalidation hook.
"""

__all__ = ["freshness", "invalidate", "pins", "refresh", "verify"]
