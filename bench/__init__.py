"""Benchmarks of leakaudit: reference attacks and the scripts that print figures."""
