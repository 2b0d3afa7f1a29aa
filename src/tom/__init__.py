"""tom: Transition Occupancy Matching (Ma et al., L4DC 2023) on an MBPO backbone."""

__version__ = "0.1.0"
