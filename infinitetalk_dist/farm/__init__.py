"""The render farm: plan a long job as windows, render them on replicas (local or Ray), store them, stitch them."""
