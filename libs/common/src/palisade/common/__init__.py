"""palisade.common: the shared library every Palisade service is built on."""
