"""What the test modules share, by concern (test modules import these, never each other or conftest;
conftest.py holds only fixtures and hooks)."""
