"""Test protocol (reference and corrected metrics), volume inference, prediction and reports."""
