"""A sandbox of real registries on loopback: upstream, a WAN-like front, central and regional mirrors."""
