"""Fencing: making sure a failed host cannot run its instances before they start elsewhere."""
