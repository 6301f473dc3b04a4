"""The render farm: plan windows, store them, stitch them (DESIGN.md section 7)."""
