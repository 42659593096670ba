"""Rewrite-rule families for the e-graph optimizer, one module per family (arriving with the engine)."""
