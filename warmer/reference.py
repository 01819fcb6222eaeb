"""Image references: ``warmer.reference.parse`` is a stable interface (see the README), so
this module re-exports :mod:`warmer.oci.reference`, where the grammar lives."""

from warmer.oci.reference import (
    DEFAULT_REGISTRY,
    InvalidReference,
    Reference,
    parse,
    try_parse,
)

__all__ = ["DEFAULT_REGISTRY", "InvalidReference", "Reference", "parse", "try_parse"]
