"""Tests of pipeline.config."""
