"""Air-gap bundles: OCI image layouts with a checksummed bundle.json (export, import)."""
