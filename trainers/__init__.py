"""lolaray.trainers."""
