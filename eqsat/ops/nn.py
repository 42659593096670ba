"""Operator family 'nn' (being filled in): see eqsat/ops/__init__.py for the entry conventions."""

from __future__ import annotations
