"""The bad-input corpus's machinery (runner.py); the cases are tests/test_bad_inputs.py."""
