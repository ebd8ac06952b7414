"""clarus-pipelines: Clarus WMS <-> Shopify <-> NetSuite, watched."""

__version__ = "0.1.0"
