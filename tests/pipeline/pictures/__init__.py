"""Tests of pipeline.pictures."""
