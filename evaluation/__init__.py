"""lolaray.evaluation."""
