"""Tests of pipeline/, one folder per subpackage."""
