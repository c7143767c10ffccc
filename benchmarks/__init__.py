"""Speed, memory and screening benchmarks: run as ``python -m benchmarks.<name>`` (``make bench``)."""
