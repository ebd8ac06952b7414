"""Business rules as plain functions over polars frames and DuckDB SQL (no Dagster here).

`skus` and `barcodes` hold the item-master rules, `orders` parses and validates Shopify
orders in batch, `goods_out` and `netsuite_orders` build the bodies sent to Clarus and
NetSuite, `order_flow` records each order's journey in the state database, and
`explain` answers "what would the pipeline do with this order now?".
"""
