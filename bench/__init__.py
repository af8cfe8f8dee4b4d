"""`make bench`: Baton's throughput and latency, each as a ratio of the bare substrate measured in the same run."""
