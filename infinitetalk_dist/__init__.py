"""infinitetalk-dist: InfiniteTalk talking-video generation as a distributed render farm."""

__version__ = "0.1.0"
