"""ganwatch command line: the composition root that wires connectors into the detector core."""
