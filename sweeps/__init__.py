"""lolaray.sweeps."""
