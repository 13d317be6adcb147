"""Results: the records a sweep writes and the store that holds them; sweeps and reports sit above."""
