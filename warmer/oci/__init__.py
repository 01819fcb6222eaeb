"""Speaking the OCI distribution protocol: the lowest layer, it knows registries, not
mirrors, plans or the database.

Public surface, by module (import from the module; this package imports nothing, so a
reference parse does not pay for httpx):

- ``reference``: ``parse``, ``try_parse``, ``Reference``, ``InvalidReference``: image names
  normalised as Docker does;
- ``manifest``: ``Manifest``, ``ImageTree``, ``Platform``, ``Descriptor``, ``parse_manifest``,
  ``select_platforms``, ``sha256_digest``: manifests parsed, validated and hashed;
- ``auth``: ``Credentials``, ``credentials_from_ref``, ``credentials_from_docker_config``,
  ``TokenCache``: where secrets come from and the bearer-token flow;
- ``transport``: ``RegistryTransport``, ``DigestMismatch``, ``safe_url``, ``check_base_url``:
  the only code that touches the network (retries, redirects, streamed hashing);
- ``ratelimit``: ``RateLimit``, ``parse_ratelimit``: Docker Hub's rate-limit headers;
- ``registry``: ``RegistryClient`` and its errors (``RegistryError``, ``NotFound``,
  ``RateLimited``): the client every other layer uses.
"""

__all__ = ["auth", "manifest", "ratelimit", "reference", "registry", "transport"]
