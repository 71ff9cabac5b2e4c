"""derm: skin-lesion classification and segmentation on HAM10000 (research demo, not a medical device)."""

__version__ = "0.1.0"
