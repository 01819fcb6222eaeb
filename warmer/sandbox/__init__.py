"""A sandbox of real registries on loopback: upstream, WAN front, central and regional mirrors."""
