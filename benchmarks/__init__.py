"""tdppo benchmark harness: ``python -m benchmarks <name> [--quick|--smoke]`` (see ``__main__``)."""
